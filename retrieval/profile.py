"""Document profiles: what names a contract (title, parties, defined short names, file name, dates, first page).

Extracted once at ingest from the document's own text (rule-based, no model) and stored in the domain's SQLite store
in the same transaction as the document. Two uses:

- **contract resolution** (``Retriever.resolve``): a BM25 index over the profiles, searched before the clauses, finds
  the contract a question names ("Consider the Supply Agreement between Acme Inc. and …", "in nda_mutual, …");
- **contextual chunks**: :func:`context_prefix` (title, parties, heading path) is prepended to what is embedded and
  BM25-indexed for every chunk; the chunk's stored text and offsets are never changed.

>>> p = extract_profile("acme_supply", 'SUPPLY AGREEMENT\\n\\nThis Supply Agreement is made on May 1, 2020 between '
...     'Acme Inc. ("Acme") and Widget Co. ("Supplier").')
>>> p.title, p.short_names, p.dates
('SUPPLY AGREEMENT', ('Acme', 'Supplier'), ('May 1, 2020',))
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DocProfile", "context_prefix", "doc_id_words", "extract_profile"]

FIRST_PAGE_CHARS = 2000  # the part of the document that names it: cover, title, preamble with the parties
_HEAD_CHARS = 4000  # where the title, parties and short names are looked for

_TITLE_WORDS = (
    r"AGREEMENT|CONTRACT|LICEN[CS]E|LEASE|AMENDMENT|ADDENDUM|MEMORANDUM|TERMS|DEED|CHARTER|ARRANGEMENT|COVENANTS?|"
    r"UNDERTAKING|PLAN|STATEMENT OF WORK|PURCHASE ORDER|NOTE|GUARANTY|GUARANTEE"
)
# An ALL-CAPS line (or run of caps words) that ends with a contract word: "MASTER SUPPLY AGREEMENT"
_CAPS_TITLE = re.compile(rf"\b((?:[A-Z0-9][A-Z0-9&,.'’\-/]*\s+){{0,8}}(?:{_TITLE_WORDS}))\b")
# A Title Case phrase: "This Manufacturing and Supply Agreement", "the Video-On-Demand Content License Agreement"
_CASE_TITLE = re.compile(
    r"\b((?:[A-Z][\w&'’\-/.]*\s+(?:(?:and|of|for|to|the|&)\s+)?){0,7}"
    r"(?:Agreement|Contract|Licen[cs]e|Lease|Amendment|Addendum|Memorandum|Statement of Work))\b"
)
_SHORT_NAME = re.compile(r"[\"“”]([A-Z][\w .&'’\-]{1,40}?)[\"“”]")
_BETWEEN = re.compile(
    r"\b(?:by and between|between|by and among|among|entered into by)\b\s*(.{10,500}?)"
    r"(?:\.\s|$|WITNESS|RECITALS|Recitals|WHEREAS)",
    re.S,
)
_MONTHS = r"January|February|March|April|May|June|July|August|September|October|November|December"
_DATE = re.compile(
    rf"\b(?:(?:{_MONTHS})\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:day\s+of\s+)?(?:{_MONTHS}),?\s+\d{{4}}|\d{{1,2}}/\d{{1,2}}/\d{{2,4}})\b"
)
_NOT_SHORT_NAMES = {"Agreement", "Effective Date", "Party", "Parties", "Confidential Information", "Term"}
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")


@dataclass(frozen=True)
class DocProfile:
    """What names one document; every field comes from its text or its id (nothing is invented)."""

    doc_id: str
    title: str
    parties: str  # the preamble's "between … and …" phrase, as written (may be empty)
    short_names: tuple[str, ...]  # defined terms in quotes near the start: ("Acme", "Supplier")
    dates: tuple[str, ...]
    first_page: str

    def search_text(self) -> str:
        """What the document-level (resolution) index holds for this document."""
        return "\n".join(
            [doc_id_words(self.doc_id), self.title, self.parties, " ".join(self.short_names), self.first_page]
        )


def doc_id_words(doc_id: str) -> str:
    """``ACMECORP_04_24_2003-EX-10.13-JOINT_VENTURE_AGREEMENT`` -> its words, split at ``_ - .`` and camel case."""
    parts = re.split(r"[\s_\-./]+", doc_id)
    return " ".join(w for p in parts for w in _CAMEL.split(p) if w)


def _clean(s: str) -> str:
    return " ".join(s.split())


def _title(head: str) -> str:
    for pattern in (_CAPS_TITLE, _CASE_TITLE):
        for m in pattern.finditer(head):
            t = _clean(m.group(1))
            t = re.sub(r"^(?:This|THIS|The|THE|this|the)\s+", "", t)
            if len(t.split()) >= 2 or pattern is _CAPS_TITLE:
                return t[:120]
    return ""


def extract_profile(doc_id: str, text: str) -> DocProfile:
    """The profile of one document (rule-based; an empty field when a rule finds nothing)."""
    head = text[:_HEAD_CHARS]
    m = _BETWEEN.search(head)
    parties = _clean(m.group(1))[:400] if m else ""
    shorts: list[str] = []
    for s in _SHORT_NAME.findall(head):
        s = _clean(s)
        if s not in _NOT_SHORT_NAMES and s not in shorts and len(shorts) < 12:
            shorts.append(s)
    dates = tuple(dict.fromkeys(_clean(d) for d in _DATE.findall(head)))[:4]
    return DocProfile(doc_id, _title(head), parties, tuple(shorts), dates, _clean(text[:FIRST_PAGE_CHARS]))


def context_prefix(profile: DocProfile | None, heading_path: str, max_chars: int = 200) -> str:
    """What is prepended to a chunk for embedding and BM25: ``title | parties | heading path`` on one line.

    Only the indexed text gets it; the chunk's stored text and offsets are unchanged.
    """
    parts: list[str] = []
    if profile is not None:
        if profile.title:
            parts.append(profile.title)
        names = profile.parties or ", ".join(profile.short_names)
        if names:
            parts.append(names[:max_chars])
    if heading_path:
        parts.append(heading_path)
    return " | ".join(parts)
