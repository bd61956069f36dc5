"""finalise: the answer with only verified citations, or an honest refusal."""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from rolora.roles import NOT_FOUND
from rolora.roles.verdicts import NOT_MENTIONED

from ..state import AgentContext, AgentState
from ..types import Answer, Citation, PassageRef, TraceStep

__all__ = ["finalise"]


async def finalise(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    started = time.perf_counter()
    draft = state.get("draft") or {}
    domain = state.get("domain") or ""
    verified = [c for c in (Citation.model_validate(x) for x in state.get("citations", [])) if c.verified]
    if draft:
        answer, not_found = str(draft.get("answer", "")), bool(draft.get("not_found"))
    else:  # routing stopped the run: ask which domain
        names = ", ".join(ctx.config.domains)
        answer, not_found = f"Which domain is this question about? Configured: {names}.", True
    why = ""
    if draft and not not_found and not verified:
        why = "no citation of the draft could be verified against the source"
        answer, not_found = NOT_FOUND, True
    elif draft and not not_found and state.get("verdict") == "unsupported":
        why = "the last draft was judged unsupported by its own evidence"
        answer, not_found = NOT_FOUND, True
    if not_found:
        verified = []
    yes_no = draft.get("yes_no") if draft else None
    if yes_no is not None and not_found:  # a yes/no question nothing decides is answered so
        answer, yes_no = NOT_MENTIONED, NOT_MENTIONED
    step = TraceStep(
        node="finalise",
        latency_s=time.perf_counter() - started,
        iteration=state.get("iteration", 0),
        detail={
            "citations": [c.citation for c in verified],
            "not_found": not_found,
            **({"yes_no": yes_no} if yes_no is not None else {}),
            **({"refusal": why} if why else {}),
        },
    )
    trace = [*state.get("trace", []), step.model_dump()]
    final = Answer(
        question=state["question"],
        domain=domain,
        answer=answer,
        not_found=not_found,
        citations=verified,
        passages=[PassageRef.model_validate(p) for p in state.get("passages", [])],
        verdict=state.get("verdict", "skipped"),
        yes_no=yes_no,
        critique=state.get("critique", []) + ([why] if why else []),
        iterations=state.get("iteration", 0) + 1,
        route_confidence=state.get("route_confidence", 1.0),
        adapters=state.get("adapters", {}),
        trace=[TraceStep.model_validate(s) for s in trace],
    )
    return {"final": final.model_dump(), "trace": [step.model_dump()]}
