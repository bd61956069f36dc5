"""analyse: the analyst answers from the passages as JSON (cited sentences, answer, not_found) in the output format its
adapter was trained on (:mod:`rolora.roles.formats`: a copied quote or a sentence number); each citation is mapped to
an exact ``doc_id[start:end]`` span and checked against the source at once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from langgraph.runtime import Runtime

from rolora.retrieval.resolve import clause_words
from rolora.roles import (
    NOT_FOUND,
    AnalystCall,
    analyst_call,
    is_refusal,
    nearest_sentence,
    reply_citations,
    sentence_similarities,
)
from rolora.roles.answer_types import (
    AnswerType,
    about_the_contract,
    answer_type,
    answer_values,
    asks_every_party,
    short_answer,
)
from rolora.roles.safety import looks_injected
from rolora.roles.verdicts import NOT_MENTIONED, asked_sentence, evidence_query, is_yes_no, says_nothing, verdict_of

from ..citations import citation_from_quote, citation_from_reply, verify_citation
from ..state import AgentContext, AgentState
from ..types import PassageRef, TraceStep
from .llm import call_role

__all__ = ["analyse", "analyst_request", "analyst_schema", "evidence_scores"]


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


def _cite(passages: list[PassageRef], sentence: Any, retriever: Any) -> Any:
    """The verified citation of one of the passages' sentences, or None."""
    cited = verify_citation(
        citation_from_quote(passages, sentence.passage, sentence.text), passages, retriever.document_text
    )
    return cited if cited.verified else None


def _nearest(question: str, call: AnalystCall, passages: list[PassageRef], retriever: Any) -> Any:
    """The verified citation of the passages' sentence nearest ``question`` (:func:`nearest_sentence`), or None."""
    best = nearest_sentence(question, call.quotes, retriever.query_embedder.embed)
    return None if best is None else _cite(passages, best, retriever)


def evidence_scores(question: str, call: AnalystCall, retriever: Any) -> tuple[list[tuple[Any, float]], dict[str, Any]]:
    """The passages' sentences with their cosine (the retrieval embedder) to what ``question`` asks
    (:func:`rolora.roles.verdicts.evidence_query`), and the best of them as the trace shows it."""
    clause = clause_words(asked_sentence(question), tidy=True)
    query = evidence_query(question, clause, about_the_contract(question, clause))
    scored = sentence_similarities(query, call.quotes, retriever.query_embedder.embed)
    best = max((s for _, s in scored), default=None)
    return scored, {"query": query, "similarity": None if best is None else round(best, 4)}


def _yes_no(
    question: str, scored: list[tuple[Any, float]], passages: list[PassageRef], retriever: Any, min_sim: float
) -> tuple[str, Any]:
    """A yes/no question's verdict (:mod:`rolora.roles.verdicts`) and its deciding citation (None for "Not
    mentioned"): the passages' sentence nearest what the question asks decides it, when it is near enough."""
    if not scored:
        return NOT_MENTIONED, None
    nearest, best = max(scored, key=lambda qs: qs[1])
    near = _cite(passages, nearest, retriever)
    if near is None:
        return NOT_MENTIONED, None
    verdict = verdict_of(question, best, near.quote, min_sim)
    return verdict, (near if verdict != NOT_MENTIONED else None)


def _without_model(
    question: str,
    yes_no: bool,
    refused: bool,
    scored: list[tuple[Any, float]],
    evidence: dict[str, Any],
    passages: list[PassageRef],
    retriever: Any,
    min_sim: float,
) -> tuple[dict[str, Any], list[Any], dict[str, Any]]:
    """The draft, its checked citations and the trace detail of a question decided without a model call: refused
    (no sentence of the passages is near what it asks; a yes/no question is "Not mentioned"), or a yes/no question,
    which the nearest sentence decides."""
    detail: dict[str, Any] = {"evidence_gate": evidence}
    if refused:
        evidence["refused"] = "no sentence of the passages is near what the question asks"
    if not yes_no:
        return {"answer": NOT_FOUND, "citations": [], "not_found": True}, [], detail
    verdict, deciding = (NOT_MENTIONED, None) if refused else _yes_no(question, scored, passages, retriever, min_sim)
    detail["yes_no"] = {"verdict": verdict}
    draft: dict[str, Any] = {"answer": verdict, "citations": [], "not_found": deciding is None, "yes_no": verdict}
    if deciding is None:
        return draft, [], detail
    draft["citations"] = [{"passage": deciding.passage, "quote": deciding.quote}]
    detail["citations"] = [_detail(deciding)]
    return draft, [deciding], detail


def _typed_read(
    question: str,
    kind: AnswerType,
    scored: list[tuple[Any, float]],
    evidence: dict[str, Any],
    passages: list[PassageRef],
    retriever: Any,
) -> tuple[dict[str, Any], list[Any], dict[str, Any]] | None:
    """A typed question answered without a model call (``agent.typed_reader``): among the passages' sentences that
    state a value of the kind it asks for (:mod:`rolora.roles.answer_types`), the one nearest what it asks (the
    evidence gate's cosine) is cited and its value is the answer; a question asking for every party is answered by the
    run of consecutive sentences around it that name parties, all cited. None when no sentence states such a value."""
    stating = [(s, sim) for s, sim in scored if answer_values(question, kind, s.text)]
    if not stating:
        return None
    sentence, similarity = max(stating, key=lambda ss: ss[1])
    run = [sentence]
    if asks_every_party(question):  # a preamble names its parties over consecutive sentences: all of them answer
        order = [s for s, _ in scored]
        naming = {id(s) for s, _ in stating}

        def names_parties(i: int) -> bool:
            return order[i].passage == sentence.passage and id(order[i]) in naming

        lo = hi = order.index(sentence)
        while lo > 0 and names_parties(lo - 1):
            lo -= 1
        while hi + 1 < len(order) and names_parties(hi + 1):
            hi += 1
        run = order[lo : hi + 1]
    cites = [c for c in (_cite(passages, s, retriever) for s in run) if c is not None]
    if not cites:
        return None
    quotes = " ".join(c.quote for c in cites)
    short = short_answer(question, quotes)
    answer = short[0] if short is not None else quotes.strip()
    draft = {
        "answer": answer,
        "citations": [{"passage": c.passage, "quote": c.quote} for c in cites],
        "not_found": False,
    }
    detail = {"typed_reader": {"kind": kind, "similarity": round(similarity, 4), "candidates": len(stating)}}
    return draft, cites, {**detail, "citations": [_detail(c) for c in cites], "evidence_gate": evidence}


async def analyse(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    started = time.perf_counter()
    iteration = state.get("iteration", 0)
    passages = [PassageRef.model_validate(p) for p in state.get("passages", [])]
    adapter = state["adapters"].get("analyst", "base")
    defended = ctx.settings.injection_defence
    yes_no = ctx.settings.yes_no and is_yes_no(state["question"])
    if not passages:
        draft: dict[str, Any] = {"answer": NOT_FOUND, "citations": [], "not_found": True}
        return {"draft": {**draft, **({"yes_no": NOT_MENTIONED} if yes_no else {})}, "citations": [], "trace": []}
    ref = None if adapter == "base" else adapter
    fmt = ctx.format_of(ref)
    # an adapter may decline with no evidence, as its training data's refusals do (agent.adapter_refusals)
    may_refuse = ref is not None and ctx.settings.adapter_refusals
    call = analyst_request(
        state["question"], passages, state.get("feedback"), fmt, ctx.constrain_quotes, defended, may_refuse
    )
    retriever = ctx.retriever(state["domain"] or "")
    min_sim = ctx.settings.min_evidence_similarity
    scored: list[tuple[Any, float]] = []
    evidence: dict[str, Any] = {}
    kind = answer_type(state["question"]) if ctx.settings.typed_reader and not yes_no else None
    if min_sim > 0 or yes_no or kind is not None:
        scored, evidence = await asyncio.to_thread(evidence_scores, state["question"], call, retriever)
        evidence["min_similarity"] = min_sim
    refused = min_sim > 0 and (evidence["similarity"] is None or evidence["similarity"] < min_sim)
    decided = None  # (draft, checked citations, trace detail) of a question decided without a model call
    if refused or yes_no:
        decided = await asyncio.to_thread(
            _without_model, state["question"], yes_no, refused, scored, evidence, passages, retriever, min_sim
        )
    elif kind is not None and not state.get("feedback"):  # None when its passages state no value of its kind
        decided = await asyncio.to_thread(_typed_read, state["question"], kind, scored, evidence, passages, retriever)
    if decided is not None:
        draft, checked, detail = decided
        gate = TraceStep(node="analyse", latency_s=time.perf_counter() - started, iteration=iteration, detail=detail)
        return {"draft": draft, "citations": [c.model_dump() for c in checked], "trace": [gate.model_dump()]}
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
    if not not_found and not yes_no and says_nothing(answer):
        # "the", "no" to a question asking what or how: no answer at all, so it counts as declined (and the passages'
        # sentence nearest the question answers, agent.declined_answer "nearest")
        step.detail["says_nothing"] = answer
        not_found = True
    step.detail["format"] = fmt
    if fmt == "sentence":
        step.detail["evidence"] = list(draft.get("evidence") or [])
    # the citations as (passage, quote) whatever the format: a sentence number names its exact sentence
    own = reply_citations(draft, call, attribute=False)
    cited = reply_citations({**draft, "not_found": not_found}, call)
    if cited != own:
        step.detail["cited_by"] = "answer"  # the sentence stating the answer, not the one the model pointed at
    draft = {"answer": answer, "citations": cited, "not_found": not_found}
    if evidence:
        step.detail["evidence_gate"] = evidence
    cites = []
    for c in draft["citations"]:
        if not isinstance(c, dict) or (defended and looks_injected(str(c.get("quote", "")))):
            continue  # an injected sentence is never evidence
        cites.append(citation_from_reply(passages, c))
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
    if ctx.settings.short_answers and not draft["not_found"]:
        # a question asking for a date, period, amount, percentage, law or party is answered with that value as the
        # text states it, not with the sentence (or longer answer) stating it (rolora.roles.answer_types)
        short = short_answer(state["question"], str(draft["answer"]), [c.quote for c in verified])
        if short is not None:
            step.detail["short_answer"] = {"from": short[1], "was": draft["answer"]}
            draft = {**draft, "answer": short[0]}
    step.latency_s = time.perf_counter() - started
    return {"draft": draft, "citations": [c.model_dump() for c in checked], "trace": [step.model_dump()]}
