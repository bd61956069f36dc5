"""analyse: the analyst answers from the passages as JSON (cited sentences, answer, not_found) in the output format its
adapter was trained on (:mod:`rolora.roles.formats`: a copied quote or a sentence number); each citation is mapped to
an exact ``doc_id[start:end]`` span and checked against the source at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from langgraph.runtime import Runtime

from rolora.retrieval.resolve import clause_words
from rolora.roles import NOT_FOUND, AnalystCall, analyst_call, is_refusal, nearest_sentence, reply_citations
from rolora.roles.safety import looks_injected

from ..citations import citation_from_quote, verify_citation
from ..state import AgentContext, AgentState
from ..types import PassageRef
from .llm import call_role

__all__ = ["analyse", "analyst_request", "analyst_schema"]


def analyst_request(
    question: str,
    passages: list[PassageRef],
    feedback: str | None,
    fmt: str,
    constrain_quotes: bool,
    defended: bool = True,
    may_refuse: bool = False,
) -> AnalystCall:
    """The analyst's messages and JSON schema in output format ``fmt`` (:mod:`rolora.roles.formats`). With
    ``constrain_quotes`` a citation must be one of the passages' sentences (the units the analyst adapter is trained
    on: a quote among their texts, or a sentence number among those shown), so even a small base model can only cite
    text that is really there (verification still runs). ``defended``: a sentence that addresses the model
    (:func:`rolora.roles.safety.looks_injected`) is never among them, so no answer rests on an injected span.
    ``may_refuse``: the reply may name no evidence (a refusal); otherwise it must cite at least one sentence."""
    return analyst_call(
        fmt,
        question,
        passages,
        feedback,
        defended=defended,
        constrain=constrain_quotes,
        min_citations=0 if may_refuse else 1,  # a refusal's citation is dropped by finalise
        answer_chars=300,
    )


def analyst_schema(passages: list[PassageRef], constrain_quotes: bool, defended: bool = True) -> dict[str, Any]:
    """The quote format's JSON schema for ``passages`` (see :func:`analyst_request`)."""
    return analyst_request("", passages, None, "quote", constrain_quotes, defended).schema


def _detail(c: Any) -> dict[str, Any]:
    """A checked citation as the trace shows it."""
    return {k: getattr(c, k) for k in ("doc_id", "start", "end", "quote", "verified", "reason")}


def _nearest(question: str, call: AnalystCall, passages: list[PassageRef], retriever: Any) -> Any:
    """The verified citation of the passages' sentence nearest ``question`` (:func:`nearest_sentence`), or None."""
    best = nearest_sentence(question, call.quotes, retriever.embedder.embed)
    if best is None:
        return None
    near = verify_citation(citation_from_quote(passages, best.passage, best.text), passages, retriever.document_text)
    return near if near.verified else None


async def analyse(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    started = time.perf_counter()
    iteration = state.get("iteration", 0)
    passages = [PassageRef.model_validate(p) for p in state.get("passages", [])]
    adapter = state["adapters"].get("analyst", "base")
    defended = ctx.settings.injection_defence
    if not passages:
        draft: dict[str, Any] = {"answer": NOT_FOUND, "citations": [], "not_found": True}
        return {"draft": draft, "citations": [], "trace": []}
    ref = None if adapter == "base" else adapter
    fmt = ctx.format_of(ref)
    # an adapter may decline with no evidence, as its training data's refusals do (agent.adapter_refusals)
    may_refuse = ref is not None and ctx.settings.adapter_refusals
    call = analyst_request(
        state["question"], passages, state.get("feedback"), fmt, ctx.constrain_quotes, defended, may_refuse
    )
    parsed, step = await call_role(
        ctx,
        "analyst",
        ref,
        call.messages,
        call.schema,
        200,
        node="analyse",
        iteration=iteration,
        writer=runtime.stream_writer,
    )
    draft = parsed or {"answer": "", "citations": [], "not_found": False}
    answer = str(draft.get("answer", "")).strip()
    not_found = bool(draft.get("not_found")) or is_refusal(answer)
    step.detail["format"] = fmt
    if fmt == "sentence":
        step.detail["evidence"] = list(draft.get("evidence") or [])
    # the citations as (passage, quote) whatever the format: a sentence number names its exact sentence
    own = reply_citations(draft, call, attribute=False)
    cited = reply_citations({**draft, "not_found": not_found}, call)
    if cited != own:
        step.detail["cited_by"] = "answer"  # the sentence stating the answer, not the one the model pointed at
    draft = {"answer": answer, "citations": cited, "not_found": not_found}
    retriever = ctx.retriever(state["domain"] or "")
    cites = []
    for c in draft["citations"]:
        if not isinstance(c, dict) or (defended and looks_injected(str(c.get("quote", "")))):
            continue  # an injected sentence is never evidence
        try:
            n = int(c.get("passage", 0))
        except (TypeError, ValueError):
            n = 0
        cites.append(citation_from_quote(passages, n, str(c.get("quote", ""))))
    t0 = time.perf_counter()
    checked = await asyncio.to_thread(lambda: [verify_citation(c, passages, retriever.document_text) for c in cites])
    step.detail["verify_s"] = round(time.perf_counter() - t0, 4)
    step.detail["citations"] = [_detail(c) for c in checked]
    verified = [c for c in checked if c.verified]
    step.detail["may_refuse"] = may_refuse
    if draft["not_found"] and verified and not may_refuse and ctx.settings.declined_answer == "nearest":
        # it declined and cited only because it had to: that sentence is no choice of evidence (a refusal's forced
        # pick is sentence 1); the passages' sentence nearest the question answers instead. Inside a named contract
        # its names say nothing about the clause: compared is the question without them, the query retrieve added
        # when it searched inside the contract
        clause = clause_words(state["question"])
        scoped = clause.lower() in {q.lower() for q in state.get("queries", [])}
        near = await asyncio.to_thread(_nearest, clause if scoped else state["question"], call, passages, retriever)
        if near is not None:
            step.detail["declined_evidence"] = step.detail.pop("citations")
            step.detail["citations"] = [_detail(near)]
            step.detail["answer_from"] = "nearest"
            checked, verified = [near], [near]
            draft = {**draft, "answer": near.quote, "not_found": False}
    if draft["not_found"] and verified and not may_refuse:
        # it quoted a clause of the passages and then declined: the evidence wins, the clause itself becomes the
        # (extractive) answer, and the critique node judges it like any other draft
        draft = {**draft, "answer": verified[0].quote, "not_found": False}
        step.detail["answer_from"] = "quote"
    step.latency_s = time.perf_counter() - started
    return {"draft": draft, "citations": [c.model_dump() for c in checked], "trace": [step.model_dump()]}
