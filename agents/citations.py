"""Quotes -> exact spans, and the deterministic citation checks the critique node runs before any model.

The analyst cites ``{"passage": n, "quote": "..."}``; :func:`locate_quote` finds the quote inside passage *n*
(exactly, else with whitespace and case normalised, mapped back to source offsets) and returns the absolute
``doc_id[start:end]`` span. :func:`verify_citation` then checks the span against the source text itself: a citation
is verified only when it lies inside a retrieved passage and ``source[start:end]`` matches the quote.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from .types import Citation, PassageRef

__all__ = ["answer_support", "citation_from_quote", "locate_quote", "quote_candidates", "verify_citation"]

_WS = re.compile(r"\s+")
_TRIM = " \t\n\"'“”‘’.,;:…"
_SENTENCE = re.compile(r"[^.;\n]+[.;]?")


def _normalise(text: str) -> tuple[str, list[int]]:
    """Lower-cased text with runs of whitespace collapsed to one space, and each kept char's source offset."""
    out: list[str] = []
    offsets: list[int] = []
    prev_space = False
    for i, ch in enumerate(text):
        if ch.isspace():
            if prev_space:
                continue
            prev_space = True
            out.append(" ")
        else:
            prev_space = False
            out.append(ch.lower())
        offsets.append(i)
    return "".join(out), offsets


def locate_quote(text: str, quote: str) -> tuple[int, int] | None:
    """``(start, end)`` of ``quote`` inside ``text`` (offsets into ``text``), or None when it is not there.

    Exact match first; then whitespace/case-insensitive; then with surrounding quotes, ellipses and punctuation
    trimmed. Never a fuzzy guess: a quote that is not in the text is not located.
    """
    quote = quote.strip()
    if not quote:
        return None
    i = text.find(quote)
    if i >= 0:
        return i, i + len(quote)
    norm_text, offsets = _normalise(text)
    for q in (quote, quote.strip(_TRIM)):
        nq = _WS.sub(" ", q.lower()).strip()
        if len(nq) < 3:
            continue
        j = norm_text.find(nq)
        if j >= 0:
            return offsets[j], offsets[j + len(nq) - 1] + 1
    return None


def citation_from_quote(passages: Sequence[PassageRef], passage_no: int, quote: str) -> Citation:
    """The analyst's ``(passage n, quote)`` as an absolute span; the cited passage first, then any other one.

    The result is not yet verified (see :func:`verify_citation`); an unlocatable quote gets start = end = -1.
    """
    order = list(range(len(passages)))
    if 1 <= passage_no <= len(passages):
        order.remove(passage_no - 1)
        order.insert(0, passage_no - 1)
    for i in order:
        p = passages[i]
        hit = locate_quote(p.text, quote)
        if hit is not None:
            return Citation(doc_id=p.doc_id, start=p.start + hit[0], end=p.start + hit[1], quote=quote, passage=i + 1)
    doc = passages[passage_no - 1].doc_id if 1 <= passage_no <= len(passages) else ""
    return Citation(doc_id=doc, start=-1, end=-1, quote=quote, passage=passage_no, reason="quote not in any passage")


def verify_citation(c: Citation, passages: Sequence[PassageRef], source: Callable[[str], str]) -> Citation:
    """Check ``c`` against the retrieved passages and the source text; returns a copy with verified/reason set."""
    if c.start < 0 or c.end <= c.start:
        return c.model_copy(update={"verified": False, "reason": c.reason or "no span"})
    inside = any(p.doc_id == c.doc_id and p.start <= c.start and c.end <= p.end for p in passages)
    if not inside:
        return c.model_copy(update={"verified": False, "reason": f"{c.citation} is outside the retrieved passages"})
    try:
        text = source(c.doc_id)[c.start : c.end]
    except Exception as e:  # a document missing from the index cannot be verified
        return c.model_copy(update={"verified": False, "reason": f"source of {c.doc_id} unavailable: {e}"})
    if locate_quote(text, c.quote) is None or len(_WS.sub(" ", text).strip()) > len(_WS.sub(" ", c.quote)) + 8:
        return c.model_copy(update={"verified": False, "reason": f"quote does not match {c.citation}"})
    return c.model_copy(update={"verified": True, "reason": ""})


def quote_candidates(passages: Sequence[PassageRef], max_chars: int = 400, limit: int = 200) -> list[str]:
    """Sentences (and clause lines) of the passages: the values a constrained analyst may quote."""
    out: list[str] = []
    seen: set[str] = set()
    for p in passages:
        for m in _SENTENCE.finditer(p.text):
            s = m.group(0).strip()
            if len(s) < 12 or s in seen:
                continue
            seen.add(s)
            out.append(s[:max_chars].strip())
            if len(out) >= limit:
                return out
    return out


_WORD = re.compile(r"[a-z0-9$£€%]+")
_STOP = frozenset(
    "a an the of to in on for by and or is are was were be been with as at from that this which it its under any "
    "each such shall will may must not no than then there their they he she his her who whom what when where how "
    "does do did has have had party parties agreement".split()
)


def answer_support(answer: str, quotes: Sequence[str]) -> float:
    """Share of the answer's content words that occur in the cited quotes (1.0 for an answer of stopwords only).

    A deterministic grounding check: an extractive answer copies its words from the evidence, so an answer whose
    words are not in its own quotes is not supported by them, whatever a model says.
    """
    words = [w for w in _WORD.findall(answer.lower()) if w not in _STOP]
    if not words:
        return 1.0
    pool = set(_WORD.findall(" ".join(quotes).lower()))
    return sum(w in pool for w in words) / len(words)
