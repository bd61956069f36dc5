"""route: pick the domain (explicit, or classified against each domain's corpus) and each role's adapter."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from langgraph.runtime import Runtime

from rolora.errors import IndexError_
from rolora.roles import NOT_FOUND

from ..state import ROLES, AgentContext, AgentState
from ..types import TraceStep

__all__ = ["classify_domain", "domain_relevance", "route"]

# Typical cosine of MiniLM's best on-topic chunk matches; a best match far below it lowers the confidence.
_ON_TOPIC_COSINE = 0.35
_TEMPERATURE = 0.05


def domain_relevance(ctx: AgentContext, domain: str, question: str) -> float:
    """Mean cosine of the question with the domain's 3 nearest chunks (dense search in its own index)."""
    hits = ctx.retriever(domain).search(question, k=3, mode="dense")
    return sum(h.score for h in hits) / len(hits) if hits else 0.0


def classify_domain(
    ctx: AgentContext, question: str, allowed: list[str] | None = None
) -> tuple[str, float, dict[str, float]]:
    """``(domain, confidence, relevance per domain)``.

    Relevance of a domain = mean cosine of the question with its 3 nearest chunks (dense search in that domain's
    own index). Confidence = the softmax share of the best domain (temperature 0.05) times
    ``min(1, relevance / 0.35)``, so one configured domain still gets a low confidence for an off-topic question.
    """
    relevance: dict[str, float] = {}
    for name in allowed or list(ctx.config.domains):
        try:
            relevance[name] = domain_relevance(ctx, name, question)
        except IndexError_:  # configured but not ingested yet: it cannot be the answer's domain
            continue
    if not relevance:
        raise IndexError_("no configured domain has an index yet; run `rolora ingest PATH --domain NAME` first")
    best = max(relevance, key=lambda d: relevance[d])
    top = relevance[best]
    share = 1.0 / sum(math.exp((r - top) / _TEMPERATURE) for r in relevance.values())
    return best, share * min(1.0, max(0.0, top) / _ON_TOPIC_COSINE), relevance


async def route(state: AgentState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    started = time.perf_counter()
    settings = ctx.settings
    detail: dict[str, Any] = {}
    domain = state.get("domain")
    confidence = 1.0
    nxt = "retrieve"
    relevance: dict[str, float] = {}
    if domain:
        ctx.config.domain(domain)  # a one-line error naming the configured domains
        detail["how"] = "explicit"
    else:
        t0 = time.perf_counter()
        allowed = state.get("allowed_domains") or None
        domain, confidence, relevance = await asyncio.to_thread(classify_domain, ctx, state["question"], allowed)
        detail.update(how="classified", relevance={k: round(v, 4) for k, v in relevance.items()})
        detail["retrieval_s"] = round(time.perf_counter() - t0, 4)
        if confidence < settings.route_min_confidence:
            if settings.on_low_confidence == "ask":
                detail["low_confidence"] = "asking which domain"
                nxt = "finalise"
            else:
                fallback = settings.default_domain or next(iter(ctx.config.domains))
                if allowed and fallback not in allowed:
                    fallback = allowed[0]
                detail["low_confidence"] = f"below {settings.route_min_confidence}: default domain {fallback}"
                domain = fallback
    assert domain is not None
    update: dict[str, Any] = {}
    if nxt == "retrieve" and settings.min_relevance > 0:
        rel = relevance.get(domain)  # classified: measured already
        if rel is None:
            t0 = time.perf_counter()
            rel = await asyncio.to_thread(domain_relevance, ctx, domain, state["question"])
            detail.update(relevance=round(rel, 4), retrieval_s=round(time.perf_counter() - t0, 4))
        if rel < settings.min_relevance:  # nothing in this corpus is close to the question: no model call
            why = f"the question is off topic for {domain} (relevance {rel:.2f} < agent.min_relevance)"
            detail["off_topic"] = why
            nxt = "finalise"
            update = {"draft": {"answer": NOT_FOUND, "citations": [], "not_found": True}, "critique": [why]}
    adapters: dict[str, str] = {}
    notes: dict[str, str] = {}
    for role, ref in ctx.role_adapters(domain).items():
        adapters[role] = ref or "base"
        if ref is None:
            notes[role] = "no adapter bound or promoted for this role: base model"
    for role in ROLES:
        adapters.setdefault(role, "base")
    detail.update(domain=domain, confidence=round(confidence, 4), adapters=adapters)
    if notes:
        detail["base_model_roles"] = notes
    step = TraceStep(node="route", latency_s=time.perf_counter() - started, detail=detail)
    return {
        "domain": domain,
        "route_confidence": confidence,
        "adapters": adapters,
        "iteration": 0,
        "feedback": None,
        "next": nxt,
        "trace": [step.model_dump()],
        **update,
    }
