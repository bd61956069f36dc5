"""What a run of the agent graph returns: the answer, its verified citations, the passages and the trace.

These are the types the CLI, the API and the eval runner read; the graph state (``agents/state.py``) holds the
same pieces while the run is in flight.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from rolora.roles.verdicts import YesNo

__all__ = ["Answer", "Citation", "PassageRef", "TraceStep", "Verdict"]

Verdict = Literal["supported", "unsupported", "partial", "skipped"]


class PassageRef(BaseModel):
    """A retrieved passage, citable as ``doc_id[start:end]`` (character offsets into the source text)."""

    doc_id: str
    start: int
    end: int
    text: str
    score: float = 0.0
    chunk_id: str = ""
    heading_path: str = ""
    query: str = ""  # the search query that found it

    @property
    def citation(self) -> str:
        return f"{self.doc_id}[{self.start}:{self.end}]"

    @classmethod
    def from_passage(cls, p: Any, query: str = "") -> PassageRef:
        """From a :class:`rolora.retrieval.Passage` (or anything with its fields)."""
        return cls(
            doc_id=p.doc_id,
            start=p.start,
            end=p.end,
            text=p.text,
            score=float(getattr(p, "score", 0.0)),
            chunk_id=p.chunk_id,
            heading_path=p.heading_path,
            query=query,
        )


class Citation(BaseModel):
    """A quoted span of the source: ``doc_id[start:end]`` holds ``quote`` exactly when ``verified``."""

    doc_id: str
    start: int
    end: int
    quote: str
    passage: int = 0  # 1-based number of the passage the analyst cited (0: not from a passage)
    verified: bool = False
    reason: str = ""  # why a citation failed verification

    @property
    def citation(self) -> str:
        return f"{self.doc_id}[{self.start}:{self.end}]"


class TraceStep(BaseModel):
    """One step of a run: which node, which role's adapter (``name@version`` or ``base``) on which backend."""

    node: str
    role: str | None = None
    adapter: str | None = None  # "name@version", "base" when the role has no adapter, None for non-LLM steps
    backend: str | None = None
    latency_s: float = 0.0
    tokens_in: int = 0
    tokens_out: int = 0
    retries: int = 0
    iteration: int = 0
    detail: dict[str, Any] = Field(default_factory=dict)


class Answer(BaseModel):
    """The final result of ``Agent.ask``: only verified citations survive; ``not_found`` is an honest refusal."""

    question: str
    domain: str
    answer: str
    not_found: bool
    citations: list[Citation] = Field(default_factory=list)
    passages: list[PassageRef] = Field(default_factory=list)  # retrieved, fused rank order
    verdict: Verdict = "skipped"  # the critic's last verdict
    yes_no: YesNo | None = None  # a yes/no question's verdict (agent.yes_no); None for other questions
    critique: list[str] = Field(default_factory=list)  # the critic's reasons and the failed citation checks
    iterations: int = 1
    route_confidence: float = 1.0
    adapters: dict[str, str] = Field(default_factory=dict)  # role -> "name@version" or "base"
    thread_id: str = ""
    trace: list[TraceStep] = Field(default_factory=list)

    @property
    def latency_s(self) -> float:
        return sum(s.latency_s for s in self.trace)
