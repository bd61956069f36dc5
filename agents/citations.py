"""Quotes -> exact spans, and the deterministic citation checks the critique node runs before any model.

What a quote is (a sentence of a passage, :func:`rolora.roles.quote_candidates`) belongs to the role contract in
:mod:`rolora.roles`. The analyst cites ``{"passage": n, "quote": "..."}``; :func:`rolora.roles.locate_quote` finds
the quote inside passage *n* (exactly, else with whitespace and case normalised, mapped back to source offsets) and
:func:`citation_from_quote` returns the absolute ``doc_id[start:end]`` span. :func:`verify_citation` then checks the
span against the source text itself: a citation is verified only when it lies inside a retrieved passage and
``source[start:end]`` matches the quote.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from rolora.roles import locate_quote

from .types import Citation, PassageRef

__all__ = ["answer_support", "citation_from_quote", "verify_citation"]

_WS = re.compile(r"\s+")


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
