"""Whole-contract analysis: one finding per clause category, each with an exact span and a heuristic risk note.

For every category (CUAD's names where CUAD has one: ``Governing Law``, ``Cap On Liability``, ...) the analysis
picks candidate chunks of the contract (hybrid search restricted to that contract with the category's query, fused
with the chunks whose heading names the category), asks the analyst role (the domain's registered adapter, or the
base model when none is bound) with its trained prompt :func:`~rolora.adapters.data.prompts.analyst_messages`, and
maps the quote it picks to an exact ``doc_id[start:end]`` span. Quotes are constrained to sentences of the numbered
passages and then verified against the source text; a quote that cannot be located is dropped, never invented. All
categories go to the backend in one ``agenerate`` call, so the in-process backend micro-batches them.

Risk notes come from deterministic keyword rules per category (uncapped liability, auto-renewal with a long notice
period, assignment without consent, a missing governing-law clause, ...): they are heuristics, not legal advice.

>>> from rolora.agents.analyze import analyze_contract
>>> result = analyze_contract("nda_mutual", "contracts", config=cfg, backend=backend)   # doctest: +SKIP
>>> result.finding("Governing Law").quote                                               # doctest: +SKIP
'This Agreement shall be governed by and construed in accordance with the laws of the State of New York'
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

from rolora.errors import RoloraRuntimeError, UserError

from .citations import citation_from_quote, verify_citation
from .types import Citation, PassageRef

if TYPE_CHECKING:
    from rolora.adapters.serving.base import Backend, GenerationResult
    from rolora.config import Config
    from rolora.retrieval import LoadedDocument, Retriever

__all__ = [
    "CATEGORIES",
    "HEURISTIC_NOTE",
    "ClauseCategory",
    "ClauseFinding",
    "ContractAnalysis",
    "aanalyze_contract",
    "analyze_contract",
    "select_categories",
    "text_document",
]

log = logging.getLogger("rolora.agents")
Risk = Literal["low", "medium", "high", "unknown"]
HEURISTIC_NOTE = (
    "Risk notes are deterministic keyword heuristics on the cited clause (or on its absence from the passages "
    "searched); they flag what to review and are not legal advice."
)


@dataclass(frozen=True)
class ClauseCategory:
    """One clause category: the question the analyst answers, the search query and the heading keywords."""

    name: str  # CUAD's name where CUAD has the category (its qa.jsonl spelling), else our own
    question: str
    query: str
    headings: tuple[str, ...]  # heading words (regex fragments) that mark a chunk as a candidate
    cue: str  # regex a sentence stating this clause nearly always matches (the keyword fallback)
    cuad: bool = True
    lead: bool = False  # the contract's opening chunk is always a candidate (parties, dates)

    def heading_pattern(self) -> re.Pattern[str]:
        return re.compile(r"\b(?:" + "|".join(self.headings) + r")", re.IGNORECASE)


CATEGORIES: tuple[ClauseCategory, ...] = (
    ClauseCategory(
        "Parties",
        "Who are the parties to this agreement?",
        "agreement entered into by and between parties corporation company",
        ("parties", "preamble", "recitals"),
        r"\bby and between\b|\bbetween\b[^.;]{0,200}\b(?:Inc|LLC|Ltd|Limited|Corporation|Corp|Company|GmbH|plc|LLP)\b",
        lead=True,
    ),
    ClauseCategory(
        "Agreement Date",
        "On what date was this agreement made?",
        "agreement dated as of made and entered into on",
        ("date",),
        r"\b(?:dated|entered into|made)\b[^.]{0,60}\b(?:19|20)\d\d\b",
        lead=True,
    ),
    ClauseCategory(
        "Effective Date",
        "What is the effective date of this agreement?",
        "effective date agreement is effective as of commencement",
        ("effective date", "commencement"),
        r"effective as of|\bas of\s+\w+\s+\d{1,2},\s+(?:19|20)\d\d|(?:19|20)\d\d\W{0,4}\(the\W+effective date",
        lead=True,
    ),
    ClauseCategory(
        "Expiration Date",
        "When does the initial term of this agreement expire, or how long does it last?",
        "term of agreement initial term expire years remain in force",
        ("term", "duration"),
        r"\bterm of\b[^.]{0,60}\b(?:years?|months?)\b|(?:remain|continue) in (?:full )?(?:force|effect)|\bexpire",
    ),
    ClauseCategory(
        "Renewal Term",
        "Does this agreement renew, automatically or by option, and for how long is each renewal term?",
        "renewal automatically renew successive renewal terms extend",
        ("renewal", "term", "extension"),
        r"\brenew",
    ),
    ClauseCategory(
        "Notice Period To Terminate Renewal",
        "How much notice must a party give to stop this agreement from renewing?",
        "notice of non-renewal days prior to end of term elect not to renew",
        ("renewal", "term"),
        r"not to renew|non-renewal|(?:notice|elect)[^.]{0,60}not (?:to )?renew",
    ),
    ClauseCategory(
        "Termination For Convenience",
        "Can a party terminate this agreement without cause, and with how much notice?",
        "terminate for convenience without cause upon written notice",
        ("terminat",),
        r"terminat\w*[^.]{0,100}(?:for convenience|without cause|for any reason)",
    ),
    ClauseCategory(
        "Termination For Cause",
        "Can a party terminate this agreement for breach, and is there a cure period?",
        "terminate material breach cure period fails to cure insolvency",
        ("terminat", "default"),
        r"terminat\w*[^.]{0,160}\bbreach",
        cuad=False,
    ),
    ClauseCategory(
        "Governing Law",
        "Which jurisdiction's law governs this agreement?",
        "governed by and construed in accordance with the laws of the State of",
        ("governing law", "applicable law", "choice of law", "jurisdiction", "miscellaneous", "general"),
        r"governed by[^.]{0,100}\blaws? of",
    ),
    ClauseCategory(
        "Anti-Assignment",
        "Can a party assign this agreement without the other party's consent?",
        "assign or transfer this agreement without prior written consent",
        ("assignment", "assign", "transfer"),
        r"\bassign(?:s|ed|ment)?\b[^.]{0,160}\b(?:consent|approval)",
    ),
    ClauseCategory(
        "Change Of Control",
        "What happens if a party undergoes a change of control, merger or acquisition?",
        "change of control merger acquisition consent terminate",
        ("change of control", "assignment"),
        r"change (?:of|in) control",
    ),
    ClauseCategory(
        "Confidentiality",
        "What confidentiality obligations do the parties have, and for how long?",
        "confidential information shall not disclose obligations survive years",
        ("confidential", "non-disclosure"),
        r"confidential information[^.]{0,160}\b(?:not|disclos|protect)",
        cuad=False,
    ),
    ClauseCategory(
        "Indemnification",
        "Which party must indemnify the other, and for what claims?",
        "indemnify defend and hold harmless against third-party claims",
        ("indemn",),
        r"\bindemnif",
        cuad=False,
    ),
    ClauseCategory(
        "Cap On Liability",
        "Is a party's liability capped, and at what amount?",
        "aggregate liability shall not exceed fees paid limitation of liability",
        ("limitation of liability", "liabilit"),
        r"liabilit[^.]{0,200}(?:shall not exceed|not to exceed|will not exceed|limited to)",
    ),
    ClauseCategory(
        "Uncapped Liability",
        "Which liabilities are excluded from the limitation of liability, so that they are uncapped?",
        "limitation shall not apply gross negligence willful misconduct indemnification breach of confidentiality",
        ("limitation of liability", "liabilit", "exclusion"),
        r"(?:limitation|exclusion|cap)s?\b[^.]{0,160}(?:shall not apply|will not apply|do not apply)",
    ),
    ClauseCategory(
        "Payment Terms",
        "When and how must fees or invoices be paid, and what happens if payment is late?",
        "invoice payment due within days fees late interest",
        ("payment", "fees", "compensation", "price", "invoic"),
        r"(?:invoice|payment|fees?|amounts?)\b[^.]{0,100}\b(?:within|due|payable)\b",
        cuad=False,
    ),
    ClauseCategory(
        "Non-Compete",
        "Is a party restricted from competing with the other party, where and for how long?",
        "shall not compete engage in competing business non-competition restricted period",
        ("non-compet", "competition", "restrictive covenant", "exclusiv"),
        r"non-compet|not[^.]{0,40}\b(?:compete|engage in)[^.]{0,60}\b(?:compet|business)",
    ),
    ClauseCategory(
        "No-Solicit Of Employees",
        "Is a party restricted from soliciting or hiring the other party's employees?",
        "shall not solicit hire employees personnel non-solicitation",
        ("solicit", "restrictive covenant"),
        r"\bsolicit[^.]{0,120}\b(?:employ|personnel|staff)",
    ),
    ClauseCategory(
        "Ip Ownership Assignment",
        "Who owns intellectual property or work product created under this agreement?",
        "intellectual property work product owned by assigns all right title and interest",
        ("intellectual property", "ownership", "work product", "proprietary"),
        r"(?:intellectual property|work product|deliverables|inventions?)[^.]{0,160}\b(?:own|property of|assign)",
    ),
    ClauseCategory(
        "Warranty Duration",
        "What warranties are given, and for how long do they last?",
        "warrants warranty period days from delivery acceptance as is disclaimer",
        ("warrant",),
        r"\bwarrant[^.]{0,200}\b(?:days?|months?|years?|period)\b",
    ),
    ClauseCategory(
        "Audit Rights",
        "Does a party have the right to audit the other party's books, records or facilities?",
        "audit inspect books and records upon notice",
        ("audit", "records", "inspection"),
        r"\baudit|\binspect",
    ),
    ClauseCategory(
        "Insurance",
        "What insurance must a party maintain?",
        "maintain insurance coverage general liability policy limits",
        ("insurance",),
        r"\binsurance\b",
    ),
)
_BY_NAME = {c.name.lower(): c for c in CATEGORIES}
_RISK_ORDER = {"high": 0, "medium": 1, "unknown": 2, "low": 3}


def select_categories(names: Sequence[str] | None = None) -> list[ClauseCategory]:
    """The named categories (case-insensitive), all of them for None; one error lists every unknown name."""
    if not names:
        return list(CATEGORIES)
    out: list[ClauseCategory] = []
    unknown: list[str] = []
    for name in names:
        cat = _BY_NAME.get(name.strip().lower())
        if cat is None:
            unknown.append(name)
        elif cat not in out:
            out.append(cat)
    if unknown:
        known = ", ".join(c.name for c in CATEGORIES)
        raise UserError(f"unknown clause categories: {', '.join(unknown)}; choose from: {known}")
    return out


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
    """The result of :func:`analyze_contract`: findings in category order, what served them, and timings."""

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
            f"# Contract analysis: {self.doc_id}",
            "",
            f"Domain `{self.domain}` · source {self.source} · {found}/{len(self.findings)} categories found · "
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
            lines += [f"- **{f.risk}** {f.category}: {f.risk_note}" for f in flagged]
        lines += ["", "## Clauses"]
        for f in self.findings:
            if not f.found:
                continue
            head = f" ({f.heading_path})" if f.heading_path else ""
            lines += [
                "",
                f"### {f.category}",
                "",
                f"> {_one_line(f.quote, 600)}",
                "",
                f"`{f.doc_id}[{f.quote_start}:{f.quote_end}]` in clause `{f.citation}`{head} — "
                f"risk **{f.risk}**: {f.risk_note}",
            ]
        return "\n".join(lines) + "\n"


def _one_line(text: str, limit: int) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the contract being analysed -----------------------------------------------------------------------------------
@dataclass
class _Document:
    doc_id: str
    text: str
    source: str
    chunks: list[PassageRef]
    rank: Callable[[str, int], list[int]]  # (query, n) -> chunk positions, best first
    embed: Callable[[list[str]], Any]  # texts -> L2-normalised vectors (numpy)


def _indexed_document(doc_id: str, retriever: Retriever) -> _Document:
    chunks = [PassageRef.from_passage(p) for p in retriever.document_chunks(doc_id)]
    if not chunks:
        raise UserError(
            f"document '{doc_id}' is not in domain '{retriever.domain}'; give a contract file instead or ingest it "
            f"with `rolora ingest PATH --domain {retriever.domain}`"
        )
    text = retriever.document_text(doc_id)
    position = {c.chunk_id: i for i, c in enumerate(chunks)}

    def rank(query: str, n: int) -> list[int]:
        hits = retriever.search(query, k=n, filters={"doc_id": doc_id}, mode="hybrid")
        return [position[h.chunk_id] for h in hits if h.chunk_id in position]

    return _Document(doc_id, text, "index", chunks, rank, retriever.embedder.embed)


def _loaded_document(doc: LoadedDocument, source: str, config: Config, retriever: Retriever | None) -> _Document:
    """Chunk a document that is not in any index and rank its chunks in memory (dense + BM25, fused by RRF)."""
    import numpy as np

    from rolora.retrieval import ChunkingOptions, chunk_document, make_embedder, rrf_fuse
    from rolora.retrieval.index import LexicalIndex

    rc = config.retrieval
    chunks = [
        PassageRef(
            doc_id=c.doc_id, start=c.start, end=c.end, text=c.text, chunk_id=c.chunk_id, heading_path=c.heading_path
        )
        for c in chunk_document(
            doc.doc_id, doc.text, ChunkingOptions(rc.chunk_max_chars, rc.chunk_min_chars, rc.chunk_overlap_words)
        )
    ]
    if not chunks:
        raise UserError(f"{source}: no text to analyse")
    embedder = retriever.embedder if retriever is not None else make_embedder(config.models.embedder)
    texts = [c.text for c in chunks]
    vectors = embedder.embed(texts, batch_size=rc.batch_size)
    lexical = LexicalIndex.build(np.arange(len(chunks), dtype=np.int64), texts)

    def rank(query: str, n: int) -> list[int]:
        q = embedder.embed([query])[0]
        dense = [int(i) for i in np.argsort(-(vectors @ q), kind="stable")[:n]]
        lex = [int(i) for i, _ in lexical.search(query, n)]
        return [i for i, _ in rrf_fuse([dense, lex], rc.rrf_k)][:n]

    return _Document(doc.doc_id, doc.text, source, chunks, rank, embedder.embed)


def _open_document(
    source: str | Path | LoadedDocument, domain: str, config: Config, retriever: Retriever | None
) -> _Document:
    from rolora.retrieval import LoadedDocument, Retriever
    from rolora.retrieval.loaders import load_path

    if isinstance(source, LoadedDocument):
        return _loaded_document(source, "text", config, retriever)
    if isinstance(source, Path):
        if not source.is_file():
            raise UserError(f"{source}: no such contract file")
        res = load_path(source, source.parent, int(config.retrieval.max_file_mb * 1024 * 1024))
        if not res.documents:
            reason = res.skipped[0].reason if res.skipped else "no document"
            raise UserError(f"{source}: cannot analyse it ({reason})")
        if len(res.documents) > 1:
            raise UserError(f"{source}: holds {len(res.documents)} documents; analyse one contract at a time")
        return _loaded_document(res.documents[0], str(source), config, retriever)
    retriever = retriever or Retriever.open(domain, config)
    return _indexed_document(str(source), retriever)


def text_document(text: str, doc_id: str | None = None) -> LoadedDocument:
    """A contract given as text (e.g. in an API request); offsets of the analysis refer to ``text``."""
    from rolora.retrieval import LoadedDocument

    if not text.strip():
        raise UserError("the contract text is empty")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return LoadedDocument(doc_id or f"text-{digest[:12]}", text, "text", digest, {})


def _candidates(doc: _Document, cat: ClauseCategory, k: int, rrf_k: int) -> list[PassageRef]:
    """Up to ``k`` chunks for ``cat``: the search ranking fused with heading matches (and the opening chunk)."""
    from rolora.retrieval import rrf_fuse

    n = min(len(doc.chunks), max(3 * k, 10))
    pattern = cat.heading_pattern()
    by_heading = [i for i, c in enumerate(doc.chunks) if c.heading_path and pattern.search(c.heading_path)][:n]
    fused = [i for i, _ in rrf_fuse([doc.rank(cat.query, n), by_heading], rrf_k)]
    picked = fused[:k]
    if cat.lead and 0 not in picked:
        picked = [0, *picked[: k - 1]]
    return [doc.chunks[i] for i in picked]


# -- the analyst call ----------------------------------------------------------------------------------------------
_ABBREVIATIONS = re.compile(
    r"(?:\b(?:Inc|Ltd|Corp|Co|No|Nos|Sec|Art|Mr|Ms|Mrs|Dr|St|Jr|vs|etc|e\.g|i\.e|U\.S|[A-Z])\.)$", re.IGNORECASE
)
_SENTENCE_END = re.compile(r"(?<=[.;])\s+(?=[\"“(A-Z0-9])")
_NUMBERING = re.compile(
    r"^(?:(?:Section|SECTION|Article|ARTICLE)\s+)?(?:\d{1,3}(?:\.\d{1,3})*\.?|\([a-zA-Z0-9]{1,4}\))\s+"
)


def _sentences(passages: Sequence[PassageRef], max_chars: int = 300, min_chars: int = 20) -> list[str]:
    """The sentences of ``passages`` without their clause numbers (``13.1``, ``(a)``), cut at a word boundary
    after ``max_chars``: the quotes the analyst may pick. Each is an exact substring of a passage."""
    out: list[str] = []
    seen: set[str] = set()
    for p in passages:
        for line in p.text.splitlines():
            start = 0
            pieces = []
            for m in _SENTENCE_END.finditer(line):
                if _ABBREVIATIONS.search(line[start : m.start()]):
                    continue
                pieces.append(line[start : m.start()])
                start = m.end()
            pieces.append(line[start:])
            for piece in pieces:
                piece = _NUMBERING.sub("", piece.strip()).strip()
                if len(piece) > max_chars:
                    piece = piece[:max_chars].rsplit(" ", 1)[0].rstrip(",;: ")
                if len(piece) >= min_chars and piece not in seen:
                    seen.add(piece)
                    out.append(piece)
    return out


def _ranked_sentences(
    doc: _Document, cats: Sequence[ClauseCategory], chosen: Sequence[Sequence[PassageRef]]
) -> list[list[str]]:
    """Per category, the sentences of its passages, most similar to the category first (one embedding call for
    all). Every one is an exact substring of a passage."""
    import numpy as np

    per_cat = [_sentences(passages) for passages in chosen]
    unique = sorted({s for sentences in per_cat for s in sentences})
    if not unique:
        return [[] for _ in cats]
    vectors = doc.embed(unique + [f"{c.question} {c.query}" for c in cats])
    row = {s: i for i, s in enumerate(unique)}
    out: list[list[str]] = []
    for j, sentences in enumerate(per_cat):
        if not sentences:
            out.append([])
            continue
        scores = vectors[[row[s] for s in sentences]] @ vectors[len(unique) + j]
        best = np.argsort(-scores, kind="stable")
        out.append([sentences[int(i)] for i in best])
    return out


def _analysis_schema(passages: Sequence[PassageRef], quotes: Sequence[str]) -> dict[str, Any]:
    """The analyst's schema narrowed for one category: at most one quote, chosen among ``quotes``."""
    from rolora.adapters.data.prompts import ANALYST_SCHEMA

    schema = copy.deepcopy(ANALYST_SCHEMA)
    props = schema["properties"]
    props["answer"]["maxLength"] = 160
    cites = props["citations"]
    cites["maxItems"] = 1
    item = cites["items"]["properties"]
    item["passage"]["maximum"] = max(1, len(passages))
    if quotes:
        item["quote"] = {"enum": list(quotes)}
    return schema


def _parse(result: GenerationResult) -> dict[str, Any] | None:
    from .nodes.llm import parse_json

    return result.json if isinstance(result.json, dict) else parse_json(result.text)


def _verified(passages: Sequence[PassageRef], number: int, quote: str, text: str) -> Citation:
    """The quote as a span checked against the source; a verified citation's quote is the exact source text."""
    c = verify_citation(citation_from_quote(passages, number, quote), passages, lambda _: text)
    return c.model_copy(update={"quote": text[c.start : c.end]}) if c.verified else c


def _analyst_citations(parsed: dict[str, Any], passages: Sequence[PassageRef], text: str) -> tuple[list[Citation], int]:
    """(verified citations, number dropped) of the analyst's reply."""
    verified: list[Citation] = []
    dropped = 0
    for raw in parsed.get("citations") or []:
        if not isinstance(raw, dict):
            continue
        try:
            number = int(raw.get("passage") or 0)
        except (TypeError, ValueError):
            number = 0
        c = _verified(passages, number, str(raw.get("quote") or ""), text)
        if c.verified:
            verified.append(c)
        else:
            dropped += 1
    return verified, dropped


def _finding(
    cat: ClauseCategory,
    doc: _Document,
    passages: list[PassageRef],
    result: GenerationResult | None,
    sentences: Sequence[str] = (),
) -> ClauseFinding:
    """The analyst's reply as a finding; when it found nothing usable, the best sentence matching the category's
    keyword cue (``sentences`` ranked best first; empty = no fallback)."""
    from rolora.adapters.data.prompts import NOT_FOUND

    base = {"category": cat.name, "cuad": cat.cuad, "doc_id": doc.doc_id, "passages": [p.citation for p in passages]}
    answer, why = "", "no passages to search"
    verified: list[Citation] = []
    dropped = 0
    parsed = _parse(result) if result is not None else None
    if result is not None and parsed is None:
        why = "the analyst's reply was " + ("cut off at max_tokens" if result.finish_reason == "length" else "not JSON")
    elif parsed is not None:
        answer = str(parsed.get("answer") or "").strip()
        refused = parsed.get("not_found") is True or answer.rstrip(".").lower() == NOT_FOUND.rstrip(".").lower()
        if refused:
            why = "the analyst found no such clause"
        else:
            verified, dropped = _analyst_citations(parsed, passages, doc.text)
            why = "the analyst's quote could not be located in the contract; dropped" if dropped else "no quote"
    method: Literal["analyst", "keyword"] = "analyst"
    if not verified:
        cue = re.compile(cat.cue, re.IGNORECASE)
        hit = next((s for s in sentences if cue.search(s)), None)
        c = _verified(passages, 0, hit, doc.text) if hit else None
        if c is None or not c.verified:
            unusable = result is not None and parsed is None
            finding = ClauseFinding(**base, found=False, answer="" if unusable else answer, note=why)
            if unusable:
                return finding.model_copy(update={"risk": "unknown", "risk_note": "the analyst's reply was unusable"})
            return _with_risk(cat, finding)
        verified, method, answer = [c], "keyword", ""
        why = f"keyword rule, not confirmed by the analyst ({why})"
        dropped = 0
    first = verified[0]
    clause = next(p for p in passages if p.start <= first.start and first.end <= p.end)
    finding = ClauseFinding(
        **base,
        found=True,
        method=method,
        answer=answer,
        start=clause.start,
        end=clause.end,
        heading_path=clause.heading_path,
        quote=first.quote,
        quote_start=first.start,
        quote_end=first.end,
        citations=verified,
        note=why
        if method == "keyword"
        else (f"dropped {dropped} quote(s) that could not be located" if dropped else ""),
    )
    return _with_risk(cat, finding, clause.text)


def _analyst_adapter(config: Config, domain: str) -> str | None:
    """The analyst adapter bound to ``domain`` (None: the base model). A binding whose adapter is not trained or
    promoted yet falls back to the base model with a warning, as the agent does; the result records which."""
    from rolora.adapters.registry import Registry

    try:
        return Registry.from_config(config).role_adapter(config, domain, "analyst")
    except UserError as e:
        log.warning("%s; analysing with the base model", e)
        return None


async def aanalyze_contract(
    source: str | Path | LoadedDocument,
    domain: str,
    *,
    config: Config,
    backend: Backend,
    retriever: Retriever | None = None,
    categories: Sequence[str] | None = None,
    k: int = 3,
    quote_choices: int = 6,
    keyword_fallback: bool = True,
    max_tokens: int = 160,
    on_progress: Callable[[str], None] | None = None,
) -> ContractAnalysis:
    """Analyse one contract; the async core of :func:`analyze_contract` (same arguments)."""
    from rolora.adapters.data.prompts import analyst_messages
    from rolora.adapters.serving.base import GenerationRequest

    t0 = time.perf_counter()
    config.domain(domain)  # a one-line ConfigError for an unknown domain
    cats = select_categories(categories)
    if k < 1:
        raise UserError(f"k (passages per category) must be >= 1, got {k}")
    if retriever is not None and retriever.domain != domain:
        raise UserError(f"the retriever is for domain '{retriever.domain}', not '{domain}'")
    progress = on_progress or (lambda _msg: None)
    progress("reading the contract")
    doc = await asyncio.to_thread(_open_document, source, domain, config, retriever)
    progress(f"finding candidate clauses for {len(cats)} categories")
    rrf_k = config.retrieval.rrf_k
    chosen = await asyncio.to_thread(lambda: [_candidates(doc, c, k, rrf_k) for c in cats])
    ranked = await asyncio.to_thread(_ranked_sentences, doc, cats, chosen)
    quotes = [r[:quote_choices] if quote_choices > 0 else r for r in ranked]
    adapter = await asyncio.to_thread(_analyst_adapter, config, domain)
    requests = [
        GenerationRequest(
            analyst_messages(cat.question, passages),
            adapter=adapter,
            max_tokens=max_tokens,
            json_schema=_analysis_schema(passages, q),
        )
        for cat, passages, q in zip(cats, chosen, quotes, strict=True)
        if passages
    ]
    progress(f"asking the analyst ({adapter or 'base model'}) about {len(requests)} categories")
    try:
        results = await backend.agenerate(requests) if requests else []
    except RoloraRuntimeError:
        raise
    except Exception as e:
        raise RoloraRuntimeError(f"analyze: the analyst call ({adapter or 'base model'}) failed: {e}") from e
    it = iter(results)
    findings = [
        _finding(cat, doc, passages, next(it) if passages else None, sentences if keyword_fallback else ())
        for cat, passages, sentences in zip(cats, chosen, ranked, strict=True)
    ]
    return ContractAnalysis(
        doc_id=doc.doc_id,
        domain=domain,
        source=doc.source,
        text_chars=len(doc.text),
        findings=findings,
        adapters={"analyst": adapter or "base"},
        backend=getattr(backend, "name", type(backend).__name__),
        latency_s=round(time.perf_counter() - t0, 3),
        tokens_in=sum(r.prompt_tokens for r in results),
        tokens_out=sum(r.completion_tokens for r in results),
    )


def analyze_contract(
    source: str | Path | LoadedDocument,
    domain: str,
    *,
    config: Config,
    backend: Backend,
    retriever: Retriever | None = None,
    categories: Sequence[str] | None = None,
    k: int = 3,
    quote_choices: int = 6,
    keyword_fallback: bool = True,
    max_tokens: int = 160,
    on_progress: Callable[[str], None] | None = None,
) -> ContractAnalysis:
    """Extract each clause category of one contract with its exact span and a heuristic risk note.

    ``source``: a ``str`` is a ``doc_id`` in ``domain``'s index; a ``Path`` is a contract file (loaded and chunked
    in memory with the project's loader and chunker, no index needed); a ``LoadedDocument`` is a text given inline
    (see :func:`text_document`). Offsets always refer to that document's text.
    ``categories``: names from :data:`CATEGORIES` (default: all). ``k``: passages shown per category.
    ``quote_choices``: the analyst quotes one of the passages' sentences most similar to the category (0 = any).
    ``keyword_fallback``: when the analyst finds nothing usable, the most similar sentence matching the category's
    keyword cue (``ClauseCategory.cue``) is reported instead, marked ``method="keyword"``.
    Raises ``UserError`` for an unknown document, file or category; ``RoloraRuntimeError`` when the backend fails.
    """
    coro = aanalyze_contract(
        source,
        domain,
        config=config,
        backend=backend,
        retriever=retriever,
        categories=categories,
        k=k,
        quote_choices=quote_choices,
        keyword_fallback=keyword_fallback,
        max_tokens=max_tokens,
        on_progress=on_progress,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from inside an event loop
        return pool.submit(asyncio.run, coro).result()


# -- risk heuristics -----------------------------------------------------------------------------------------------
_NUM = r"(\d{1,4})\s*\)?\s*"
_DURATION = re.compile(_NUM + r"(?:calendar\s+|business\s+)?(day|month|year)s?\b", re.IGNORECASE)
_JURISDICTION = re.compile(
    r"laws?\s+of\s+(?:the\s+)?((?:State|Commonwealth|Province|Republic|Kingdom)\s+of\s+)?"
    r"([A-Z][A-Za-z.]*(?:\s+[A-Z][A-Za-z.]*)*)"
)


def _durations(text: str) -> list[int]:
    factor = {"day": 1, "month": 30, "year": 365}
    return [int(n) * factor[unit.lower()] for n, unit in _DURATION.findall(text)]


_UNIT = r"(?:calendar\s+|business\s+)?(day|month|year)s?\b"
_NOTICE = (
    re.compile(r"notice[^.;]{0,100}?" + _NUM + _UNIT, re.IGNORECASE),  # notice ... at least ninety (90) days
    re.compile(
        _NUM + _UNIT + r"['’]?\s+(?:prior\s+|advance\s+)?(?:written\s+)?notice", re.IGNORECASE
    ),  # 30 days' notice
)
_FACTOR = {"day": 1, "month": 30, "year": 365}


def _days(text: str, near: str | None = None) -> list[int]:
    """Durations in days (``thirty (30) days`` -> 30, ``12 months`` -> 360, ``2 years`` -> 730) from the quote,
    else from the clause (``text`` is ``quote + QUOTE_END + clause``); with ``near``, only from sentences that
    match that regex."""
    quote, _, clause = text.partition(QUOTE_END)
    for part in (quote, clause):
        sentences = [s for s in re.split(r"(?<=[.;])\s+", part) if near is None or re.search(near, s, re.IGNORECASE)]
        found = [d for s in sentences for d in _durations(s)]
        if found:
            return found
    return []


def _notice_days(text: str) -> list[int]:
    """Notice periods in days (``thirty (30) days' prior written notice``), from the quote, else the clause."""
    quote, _, clause = text.partition(QUOTE_END)
    for part in (quote, clause):
        found = [int(m.group(1)) * _FACTOR[m.group(2).lower()] for p in _NOTICE for m in p.finditer(part)]
        if found:
            return found
    return []


def _has(text: str, *patterns: str) -> bool:
    return any(re.search(p, text, re.IGNORECASE) for p in patterns)


QUOTE_END = "\n\u2029\n"  # a rule's text is the quote, this separator, then the whole clause
RiskRule = Callable[[bool, str], tuple[Risk, str]]  # (found, quote + QUOTE_END + clause) -> (risk, note)


def _rule_parties(found: bool, t: str) -> tuple[Risk, str]:
    return ("low", "parties identified") if found else ("medium", "parties not identified in the passages searched")


def _rule_date(found: bool, t: str) -> tuple[Risk, str]:
    if found:
        return "low", "date stated"
    return "medium", "no date found: when obligations start may be unclear"


def _rule_expiration(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "no term or expiry found"
    if _has(t, r"perpetu", r"indefinite", r"until terminated"):
        return "medium", "no fixed end: runs until terminated"
    return "low", "fixed initial term"


def _rule_renewal(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "low", "no renewal clause found: the agreement ends at expiry"
    if _has(t, r"(?:not|no)\s+(?:be\s+)?(?:automatic\w*\s+)?renew\w*(?:\s+automatically)?", r"no automatic renewal"):
        return "low", "does not renew automatically"
    if _has(t, r"automatic\w*\s+(?:be\s+)?(?:renew|extend)", r"renew\w*\s+automatically", r"successive"):
        notice = max(_notice_days(t), default=0)
        if notice >= 90:
            return "high", f"auto-renews and stopping it needs about {notice} days' notice"
        return "medium", "auto-renews unless a party gives notice"
    return "low", "renewal needs an affirmative choice"


def _rule_renewal_notice(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "low", "no notice period to stop renewal found"
    days = max(_notice_days(t), default=0)
    if days >= 90:
        return "high", f"long notice period to stop renewal ({days} days): easy to miss"
    if days >= 60:
        return "medium", f"notice period to stop renewal of {days} days"
    if days:
        return "low", f"notice period to stop renewal of {days} days"
    return "medium", "notice period to stop renewal not stated in days"


def _rule_convenience(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "no termination for convenience found: bound until expiry or breach"
    days = min(_notice_days(t), default=0)
    when = f" on {days} days' notice" if days else ""
    return "medium", f"a party may terminate without cause{when}: check which party and the wind-down"


def _rule_cause(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "high", "no termination for breach found"
    if _has(t, r"cure"):
        return "low", "termination for breach with a cure period"
    return "medium", "termination for breach without a stated cure period"


def _rule_governing_law(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "high", "no governing-law clause found: which law applies is open to dispute"
    m = _JURISDICTION.search(t)
    where = (m.group(1) or "") + m.group(2) if m else "a named jurisdiction"
    return "low", f"governed by the laws of {where.strip()}"


def _rule_assignment(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "no assignment clause found: assignability falls back to the default rules"
    for sentence in re.split(r"[.;]", t):
        permits = _has(sentence, r"freely assign", r"may assign[^.;]{0,120}without[^.;]{0,40}consent")
        if permits and not _has(sentence, r"\b(?:neither|nor|not|no)\b[^.;]{0,60}\bmay (?:freely )?assign"):
            return "high", "a party may assign without the other's consent"
    if _has(t, r"consent", r"approval"):
        return "low", "assignment needs the other party's consent"
    return "medium", "assignment clause without a consent requirement"


def _rule_change_of_control(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "low", "no change-of-control clause found"
    return "medium", "a change of control triggers consent, notice or termination rights"


def _rule_confidentiality(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "high", "no confidentiality obligation found"
    if _has(t, r"perpetu", r"indefinite"):
        return "medium", "confidentiality obligations last indefinitely"
    years = max(_days(t), default=0) // 365
    return "low", f"confidentiality obligations for about {years} years" if years else "confidentiality obligations"


def _rule_indemnification(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "no indemnity found: third-party claims are not allocated"
    if _has(t, r"unlimited", r"uncapped", r"without limit"):
        return "high", "indemnity appears unlimited"
    return "medium", "indemnity obligations: check their scope and whether the liability cap applies"


def _rule_cap(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "high", "no liability cap found: exposure may be unlimited"
    if _has(t, r"shall not exceed", r"not to exceed", r"limited to", r"in no event[^.]{0,200}exceed", r"maximum"):
        return "low", "liability is capped"
    return "medium", "limitation-of-liability language without a clear cap"


def _rule_uncapped(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "low", "no uncapped carve-outs found"
    kinds = [
        label
        for label, pattern in (
            ("gross negligence", r"gross(?:ly)? neglig"),
            ("wilful misconduct", r"will?ful"),
            ("indemnities", r"indemn"),
            ("confidentiality", r"confidential"),
            ("data protection", r"data|privacy"),
            ("IP infringement", r"infring"),
            ("fraud", r"fraud"),
        )
        if _has(t, pattern)
    ]
    what = f" ({', '.join(kinds)})" if kinds else ""
    return "high", f"some liabilities are excluded from the cap and uncapped{what}"


def _rule_payment(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "no payment terms found"
    days = [d for d in _days(t, near=r"pa(?:y|id)|invoice|due") if d <= 180]
    late = _has(t, r"interest", r"late (?:fee|charge|payment)")
    if days and max(days) >= 60:
        return "medium", f"long payment terms ({max(days)} days)"
    extra = "; late payments carry interest or fees" if late else ""
    return "low", (f"payment within {max(days)} days" if days else "payment terms stated") + extra


def _rule_non_compete(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "low", "no non-compete found"
    days = max(_days(t), default=0)
    if days >= 365:
        return "high", f"non-compete restriction of about {days // 365} year(s)"
    return "medium", "non-compete restriction: check its scope, territory and duration"


def _rule_no_solicit(found: bool, t: str) -> tuple[Risk, str]:
    return ("medium", "restriction on soliciting or hiring employees") if found else ("low", "no employee non-solicit")


def _rule_ip(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "ownership of work product is not addressed"
    if _has(
        t, r"assign\w*[^.;]{0,80}right,? title", r"work made for hire", r"shall (?:be|become) the (?:sole )?property"
    ):
        return "medium", "IP created under the agreement transfers: check background-IP carve-outs and licences back"
    return "low", "IP ownership addressed"


def _rule_warranty(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "no warranty period found"
    if _has(t, r"\bas[ -]is\b") and not _days(t):
        return "high", "warranties disclaimed (as is)"
    days = max(_days(t), default=0)
    if days and days < 90:
        return "medium", f"short warranty period ({days} days)"
    return "low", f"warranty period of {days} days" if days else "warranty given"


def _rule_audit(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "low", "no audit right found"
    if _has(t, r"at any time", r"without (?:prior )?notice"):
        return "medium", "broad audit right (at any time or without notice)"
    return "low", "audit right on notice"


def _rule_insurance(found: bool, t: str) -> tuple[Risk, str]:
    return ("low", "insurance required") if found else ("medium", "no insurance requirement found")


RISK_RULES: dict[str, RiskRule] = {
    "Parties": _rule_parties,
    "Agreement Date": _rule_date,
    "Effective Date": _rule_date,
    "Expiration Date": _rule_expiration,
    "Renewal Term": _rule_renewal,
    "Notice Period To Terminate Renewal": _rule_renewal_notice,
    "Termination For Convenience": _rule_convenience,
    "Termination For Cause": _rule_cause,
    "Governing Law": _rule_governing_law,
    "Anti-Assignment": _rule_assignment,
    "Change Of Control": _rule_change_of_control,
    "Confidentiality": _rule_confidentiality,
    "Indemnification": _rule_indemnification,
    "Cap On Liability": _rule_cap,
    "Uncapped Liability": _rule_uncapped,
    "Payment Terms": _rule_payment,
    "Non-Compete": _rule_non_compete,
    "No-Solicit Of Employees": _rule_no_solicit,
    "Ip Ownership Assignment": _rule_ip,
    "Warranty Duration": _rule_warranty,
    "Audit Rights": _rule_audit,
    "Insurance": _rule_insurance,
}


def _with_risk(cat: ClauseCategory, finding: ClauseFinding, clause_text: str = "") -> ClauseFinding:
    """Apply the category's rule to the clause text (and the quote, which lies inside it)."""
    rule = RISK_RULES[cat.name]
    risk, note = rule(finding.found, f"{finding.quote}{QUOTE_END}{clause_text}" if finding.found else "")
    if not finding.found and finding.note:
        note = f"{note} (heuristic: not found in the {len(finding.passages)} passages searched)"
    return finding.model_copy(update={"risk": risk, "risk_note": note})
