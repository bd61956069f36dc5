"""What ``rolora analyze`` returns: one :class:`ClauseFinding` per category in a :class:`ContractAnalysis`, which
also renders itself as a Markdown report."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from rolora.errors import UserError
from rolora.roles.safety import markdown_text

from ..types import Citation
from .risk import HEURISTIC_NOTE, Risk

__all__ = ["ClauseFinding", "ContractAnalysis"]

_RISK_ORDER = {"high": 0, "medium": 1, "unknown": 2, "low": 3}


class ClauseFinding(BaseModel):
    """One category of one contract. When ``found``: ``source[start:end]`` is the clause (the chunk holding the
    quote) and ``source[quote_start:quote_end] == quote`` lies inside it."""

    category: str
    cuad: bool = True
    found: bool
    method: Literal["analyst", "keyword", "none"] = "none"  # who located the clause (keyword: the fallback rule)
    answer: str = ""
    doc_id: str
    start: int = -1
    end: int = -1
    heading_path: str = ""
    quote: str = ""
    quote_start: int = -1
    quote_end: int = -1
    citations: list[Citation] = Field(default_factory=list)  # every verified quote (exact source text)
    risk: Risk = "unknown"
    risk_note: str = ""
    note: str = ""  # why nothing was found, or which quotes were dropped
    passages: list[str] = Field(default_factory=list)  # doc_id[start:end] of the candidate passages shown

    @property
    def citation(self) -> str:
        return f"{self.doc_id}[{self.start}:{self.end}]" if self.found else ""


class ContractAnalysis(BaseModel):
    """The result of :func:`~rolora.agents.analyze.analyze_contract`: findings in category order, what served them,
    and timings."""

    doc_id: str
    domain: str
    source: str  # "index", a file path, or "text" (offsets refer to that text)
    text_chars: int
    findings: list[ClauseFinding]
    adapters: dict[str, str]  # role -> "name@version" or "base"
    backend: str
    latency_s: float
    tokens_in: int = 0
    tokens_out: int = 0
    risk_basis: str = HEURISTIC_NOTE

    def finding(self, category: str) -> ClauseFinding:
        for f in self.findings:
            if f.category.lower() == category.lower():
                return f
        raise UserError(f"category '{category}' was not analysed (analysed: {', '.join(self.categories)})")

    @property
    def categories(self) -> list[str]:
        return [f.category for f in self.findings]

    def flagged(self) -> list[ClauseFinding]:
        """Findings with a high or medium risk, most severe first (stable within a level)."""
        return sorted((f for f in self.findings if f.risk in ("high", "medium")), key=lambda f: _RISK_ORDER[f.risk])

    def to_markdown(self) -> str:
        """A report: summary table, flagged risks, then each found clause with its quote and span."""
        found = sum(f.found for f in self.findings)
        adapters = ", ".join(f"{role} `{ref}`" for role, ref in self.adapters.items())
        lines = [
            f"# Contract analysis: {_one_line(self.doc_id, 200)}",
            "",
            f"Domain `{self.domain}` · source {_one_line(self.source, 200)} · {found}/{len(self.findings)} found · "
            f"{adapters} on {self.backend} · {self.latency_s:.1f} s",
            "",
            f"_{self.risk_basis}_",
            "",
            "| Category | Found | Answer | Span | Risk |",
            "|---|---|---|---|---|",
        ]
        for f in self.findings:
            answer = _one_line(f.answer or (f"“{f.quote}”" if f.found else f.note or "not found"), 120)
            span = f"`{f.citation}`" if f.found else "—"
            found_by = f"yes ({f.method})" if f.found else "no"
            lines.append(f"| {f.category} | {found_by} | {answer} | {span} | {f.risk} |")
        flagged = self.flagged()
        if flagged:
            lines += ["", "## Risks to review", ""]
            lines += [f"- **{f.risk}** {f.category}: {_one_line(f.risk_note, 400)}" for f in flagged]
        lines += ["", "## Clauses"]
        for f in self.findings:
            if not f.found:
                continue
            head = f" ({_one_line(f.heading_path, 200)})" if f.heading_path else ""
            lines += [
                "",
                f"### {f.category}",
                "",
                f"> {_one_line(f.quote, 600)}",
                "",
                f"`{f.doc_id}[{f.quote_start}:{f.quote_end}]` in clause `{f.citation}`{head} — "
                f"risk **{f.risk}**: {_one_line(f.risk_note, 400)}",
            ]
        return "\n".join(lines) + "\n"


def _one_line(text: str, limit: int) -> str:
    """Contract or model text as one line of Markdown that renders as text (no image, link or raw HTML)."""
    text = " ".join(text.split())
    return markdown_text(text if len(text) <= limit else text[: limit - 1] + "…")
