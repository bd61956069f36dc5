"""retrieve: the query writer turns the question (and any critique feedback) into queries; hybrid search in the
routed domain only — inside the documents the caller named (``doc_ids``), else inside the contract(s) the question
names when the retriever resolves it confidently (``Retriever.resolve``), else the whole domain; results merged by
reciprocal rank fusion and de-duplicated by chunk. A question about the contract itself (its date, its parties) gets
the contract's opening chunk as one more ranking. The trace shows the scope and the resolution."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from langgraph.runtime import Runtime

from rolora import telemetry
from rolora.retrieval import rrf_fuse_items
from rolora.retrieval.resolve import clause_words
from rolora.roles import QUERY_SCHEMA, query_writer_messages
from rolora.roles.answer_types import about_the_contract
from rolora.roles.verdicts import asked_sentence

from ..state import AgentContext, AgentState
from ..types import PassageRef, TraceStep
from .llm import call_role

__all__ = ["fuse", "retrieve", "search_rankings"]


OPENING = "(the contract's opening)"  # the query a passage added as its contract's opening shows


def fuse(rankings: list[list[PassageRef]], k: int, rrf_k: int = 60) -> list[PassageRef]:
    """Reciprocal rank fusion over the rankings of several queries; one entry per chunk, best first. A contract's
    opening added for a question about the contract itself (a ranking of query ``OPENING``) is always among the
    ``k``: it takes the place of the last."""

    def key(p: PassageRef) -> str:
        return p.chunk_id or p.citation

    fused = rrf_fuse_items(rankings, key, rrf_k)
    pinned = {key(p) for ranking in rankings for p in ranking if p.query == OPENING}
    top = fused[:k]
    missing = [ps for ps in fused[k:] if key(ps[0]) in pinned][:k]
    if missing:
        top = sorted(top[: k - len(missing)] + missing, key=lambda ps: -ps[1])
    return [p.model_copy(update={"score": round(score, 6)}) for p, score in top]


def _add_queries(queries: list[str], new: list[str]) -> None:
    """Append each of ``new`` (stripped) that ``queries`` does not hold yet, case aside."""
    for q in new:
        q = q.strip()
        if q and q.lower() not in {x.lower() for x in queries}:
            queries.append(q)


def search_rankings(
    retriever: Any, question: str, queries: list[str], explicit: list[str], k: int, mode: str | None
) -> tuple[list[list[PassageRef]], list[tuple[str, float]]]:
    """One ranking of ``k`` passages per query (``queries`` grows by the clause query when the search is scoped) and
    the contract resolution: inside ``explicit`` documents when given, else inside the contract(s) ``question``
    names when ``retriever.resolve`` is confident, else the whole domain. What the node searches, and what
    ``bench/verdicts.py`` reproduces without a model."""
    resolution = [] if explicit else retriever.resolve(question)
    scope = explicit or [d for d, _ in resolution] or None
    if scope:  # inside the named contract(s), also search what the question asks without the names
        clause = clause_words(question)
        _add_queries(queries, [clause] if len(clause.split()) >= 3 else [])
    out = []
    for q in queries:
        hits = retriever.search(q, k=k, mode=mode, doc_ids=scope)
        out.append([PassageRef.from_passage(h, query=q) for h in hits])
    if scope and about_the_contract(question, clause_words(asked_sentence(question), tidy=True)):
        # its date, its parties: the contract's opening states them, which a search for "Who are the parties?" may
        # rank below clauses that mention "the Parties"; the opening chunk is one more ranking of its own
        out.append([PassageRef.from_passage(p, query=OPENING) for d in scope for p in retriever.document_chunks(d, 1)])
    return out, resolution


async def retrieve(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    started = time.perf_counter()
    domain = state["domain"]
    assert domain is not None
    question = state["question"]
    iteration = state.get("iteration", 0)
    adapter = state["adapters"].get("query_writer", "base")
    steps: list[dict[str, Any]] = []
    queries = [question]
    step: TraceStep | None = None
    if ctx.settings.use_query_writer:
        parsed, step = await call_role(
            ctx,
            "query_writer",
            None if adapter == "base" else adapter,
            query_writer_messages(question, state.get("feedback")),
            QUERY_SCHEMA,
            80,
            node="retrieve",
            iteration=iteration,
            writer=None,
        )
        _add_queries(queries, [q for q in (parsed or {}).get("queries", []) if isinstance(q, str)])
    queries = queries[: ctx.settings.max_queries + 1]  # the question itself plus the writer's queries
    retriever = ctx.retriever(domain)
    t0 = time.perf_counter()
    explicit = list(state.get("doc_ids") or [])
    attrs = {"rolora.domain": domain, "rolora.queries": len(queries), "rolora.mode": ctx.retrieval_mode or "config"}
    with telemetry.span("rolora.search", attrs):
        rankings, resolution = await asyncio.to_thread(
            search_rankings, retriever, question, queries, explicit, 2 * ctx.settings.k, ctx.retrieval_mode
        )
    retrieval_s = time.perf_counter() - t0
    passages = fuse(rankings, ctx.settings.k, ctx.config.retrieval.rrf_k)
    if step is not None:
        steps.append(step.model_dump())
    steps.append(
        TraceStep(
            node="retrieve",
            latency_s=time.perf_counter() - started - (step.latency_s if step is not None else 0.0),
            iteration=iteration,
            detail={
                "queries": queries,
                "mode": ctx.retrieval_mode or ctx.config.retrieval.mode,
                # explicit: the caller's doc_ids; resolved: the contract(s) the question names; domain: everything
                "scope": "explicit" if explicit else ("resolved" if resolution else "domain"),
                "doc_ids": explicit or [d for d, _ in resolution],
                "resolution": [{"doc_id": d, "confidence": c} for d, c in resolution],
                "passages": [p.citation for p in passages],
                "retrieval_s": round(retrieval_s, 4),
            },
        ).model_dump()
    )
    runtime.stream_writer({"type": "passages", "passages": [p.citation for p in passages]})
    return {"queries": queries, "passages": [p.model_dump() for p in passages], "trace": steps}
