"""critique: deterministic citation checks first, then the critic's verdict; reject loops back (bounded)."""

from __future__ import annotations

import time
from typing import Any

from langgraph.runtime import Runtime

from rolora.roles import CRITIC_SCHEMA, critic_messages

from ..citations import verified_problem
from ..state import AgentContext, AgentState
from ..types import Citation, PassageRef, TraceStep
from .llm import call_role

__all__ = ["MIN_SUPPORT", "critique"]

MIN_SUPPORT = 0.5  # share of the answer's content words that must occur in its verified quotes


async def critique(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    started = time.perf_counter()
    iteration = state.get("iteration", 0)
    draft = state.get("draft") or {}
    citations = [Citation.model_validate(c) for c in state.get("citations", [])]
    failed = [c for c in citations if not c.verified]
    verified = [c for c in citations if c.verified]
    passages = [PassageRef.model_validate(p) for p in state.get("passages", [])]
    can_loop = iteration + 1 < ctx.settings.max_iterations
    reasons = [f"citation {c.passage}: {c.reason} ({c.quote[:60]!r})" for c in failed]
    steps: list[dict[str, Any]] = []
    verdict = "skipped"
    nxt = "finalise"
    feedback: str | None = None
    if draft.get("not_found"):
        reasons.append("the analyst found no answer in the passages")
    elif not verified:
        reasons.append("the answer cites no verifiable quote")
        verdict = "unsupported"
        feedback = "Quote the exact words of a numbered clause. " + "; ".join(reasons)[:400]
        nxt = "analyse" if can_loop else "finalise"
    elif problem := verified_problem(draft, verified, passages, MIN_SUPPORT):  # a yes/no verdict: None
        reasons.append(problem)
        verdict = "unsupported"
        feedback = "Answer with the words and figures of the quoted clause. " + problem
        nxt = "analyse" if can_loop else "finalise"
    elif ctx.use_critic:
        adapter = state["adapters"].get("critic", "base")
        shown = {
            "answer": draft.get("answer", ""),
            "citations": [{"passage": c.passage, "quote": c.quote} for c in verified],
        }
        parsed, step = await call_role(
            ctx,
            "critic",
            None if adapter == "base" else adapter,
            critic_messages(state["question"], passages, shown, defended=ctx.settings.injection_defence),
            CRITIC_SCHEMA,
            80,
            node="critique",
            iteration=iteration,
        )
        steps.append(step.model_dump())
        verdict = str((parsed or {}).get("verdict", "skipped"))
        if verdict not in ("supported", "unsupported", "partial"):
            verdict = "skipped"
        critic_reasons = [str(r) for r in (parsed or {}).get("reasons", []) if str(r).strip()]
        reasons.extend(critic_reasons)
        if verdict == "unsupported" and can_loop:
            feedback = "; ".join(critic_reasons)[:400] or "the answer is not supported by the clauses"
            nxt = "retrieve"
    elif failed and can_loop:  # some citations verify, some do not: ask again without the bad ones
        feedback = "Only quote exact words of the clauses. " + "; ".join(reasons)[:400]
        nxt = "analyse"
    steps.append(
        TraceStep(
            node="critique",
            latency_s=time.perf_counter() - started - sum(s["latency_s"] for s in steps),
            iteration=iteration,
            detail={
                "verdict": verdict,
                "failed_citations": len(failed),
                "verified_citations": len(verified),
                "next": nxt,
                "reasons": reasons[:6],
            },
        ).model_dump()
    )
    update: dict[str, Any] = {"verdict": verdict, "critique": reasons, "next": nxt, "trace": steps}
    if nxt != "finalise":
        update.update(iteration=iteration + 1, feedback=feedback)
    return update
