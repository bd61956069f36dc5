"""The graph's typed state and its run-time context (dependencies passed through LangGraph's ``context_schema``).

State values are plain JSON-able data (dicts of :mod:`rolora.agents.types` models) so the SQLite checkpointer can
store every step; the context holds the live objects (backend, retrievers, settings) and is never checkpointed.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypedDict

from rolora.config import AgentConfig, Config

__all__ = ["ROLES", "AgentContext", "AgentState", "Next", "new_run"]

ROLES = ("query_writer", "analyst", "critic")
Next = Literal["retrieve", "analyse", "finalise"]


class AgentState(TypedDict, total=False):
    question: str
    domain: str | None
    allowed_domains: list[str] | None  # routing picks among these only (a tenant's domains); None = all
    doc_ids: list[str] | None  # search inside these documents only (the caller's scope); None = resolve or all
    route_confidence: float
    adapters: dict[str, str]  # role -> "name@version" | "base"
    queries: list[str]
    passages: list[dict[str, Any]]  # PassageRef dumps, fused rank order
    draft: dict[str, Any] | None  # the analyst's JSON: answer, citations, not_found
    citations: list[dict[str, Any]]  # Citation dumps of the current draft (verified or not)
    verdict: str
    critique: list[str]
    feedback: str | None  # what the next retrieve/analyse round is told
    next: Next
    iteration: int
    trace: Annotated[list[dict[str, Any]], operator.add]  # TraceStep dumps, appended by every node
    final: dict[str, Any] | None  # the Answer dump, set by finalise


def new_run(
    question: str, domain: str | None, allowed_domains: list[str] | None, doc_ids: list[str] | None = None
) -> dict[str, Any]:
    """The input of a new question: every per-run field set to its starting value, so that nothing of an earlier
    run on the same thread (its passages, trace, draft, citations, feedback, answer) reaches this one."""
    from langgraph.types import Overwrite

    return {
        "question": question,
        "domain": domain,
        "allowed_domains": allowed_domains,
        "doc_ids": doc_ids,
        "route_confidence": 1.0,
        "adapters": {},
        "queries": [],
        "passages": [],
        "draft": None,
        "citations": [],
        "verdict": "skipped",
        "critique": [],
        "feedback": None,
        "next": "retrieve",
        "iteration": 0,
        "trace": Overwrite([]),  # the reducer appends; a new run starts from an empty trace
        "final": None,
    }


@dataclass
class AgentContext:
    """Everything a node needs besides the state. Built once per :class:`~rolora.agents.agent.Agent`."""

    config: Config
    backend: Any  # rolora.adapters.serving.base.Backend
    retriever: Callable[[str], Any]  # domain -> Retriever
    role_adapters: Callable[[str], dict[str, str | None]]  # domain -> {role: ref | None}, None = base model
    retrieval_mode: str | None = None
    use_critic: bool = True
    constrain_quotes: bool = True
    settings: AgentConfig = field(default_factory=AgentConfig)
    on_token: Callable[[str, str], None] | None = None  # (role, text): streamed answer tokens
    # adapter ref (None = base model) -> the analyst output format it was trained on (rolora.roles.formats)
    analyst_format: Callable[[str], str] | None = None

    def format_of(self, adapter: str | None) -> str:
        """The output format to ask the analyst ``adapter`` (None: the base model) in."""
        if adapter is None or self.analyst_format is None:
            return self.settings.analyst_format
        return self.analyst_format(adapter)
