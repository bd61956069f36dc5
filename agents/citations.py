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
from typing import Any

from rolora.roles import locate_quote

from .types import Citation, PassageRef

__all__ = [
    "answer_problem",
    "answer_support",
    "citation_from_quote",
    "citation_from_reply",
    "cited_texts",
    "draft_problem",
    "unsupported_numbers",
    "verified_problem",
    "verify_citation",
]

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


def citation_from_reply(passages: Sequence[PassageRef], cited: dict[str, Any]) -> Citation:
    """A reply's ``{"passage": n, "quote": ...}`` as :func:`citation_from_quote` (an unreadable number is 0: the
    quote is then looked for in every passage)."""
    try:
        n = int(cited.get("passage", 0))
    except (TypeError, ValueError):
        n = 0
    return citation_from_quote(passages, n, str(cited.get("quote", "")))


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


_NUMBER_TOKEN = re.compile(r"\d[\d,]*(?:\.\d+)?|[a-z]+(?:-[a-z]+)?")
_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
_UNITS += "seventeen eighteen nineteen"
_NUMBER_WORDS = {w: i for i, w in enumerate(_UNITS.split())} | {
    w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), start=2)
}


def _numbers(text: str) -> set[str]:
    """The numbers ``text`` states, as digit strings: ``$1,500.00`` -> ``1500.00``, ``thirty`` -> ``30``,
    ``forty-five`` -> ``45`` (so "thirty (30) days" and "30 days" state the same number)."""
    out = set()
    for tok in _NUMBER_TOKEN.findall(text.lower()):
        if tok[0].isdigit():
            out.add(tok.replace(",", "").rstrip("."))
        elif all(part in _NUMBER_WORDS for part in tok.split("-")):
            out.add(str(sum(_NUMBER_WORDS[part] for part in tok.split("-"))))
    return out


def unsupported_numbers(answer: str, evidence: Sequence[str]) -> list[str]:
    """The numbers of ``answer`` (digits or number words) that none of the ``evidence`` texts states: an amount,
    date, period or count the cited evidence does not give."""
    stated = _numbers(" ".join(evidence))
    return sorted(n for n in _numbers(answer) if n not in stated)


def answer_problem(answer: str, quotes: Sequence[str], min_support: float, cited: Sequence[str] = ()) -> str | None:
    """Why ``answer`` is not supported by its verified ``quotes`` (the deterministic part of the critique), or None:
    fewer than ``min_support`` of its content words are in them, or it states a number that neither they nor the
    ``cited`` passages holding them state (a quote may be one piece of a long sentence whose other piece the answer
    also draws on)."""
    support = answer_support(answer, quotes)
    if support < min_support:
        return f"only {support:.0%} of the answer's words are in its quotes (needs {min_support:.0%})"
    missing = unsupported_numbers(answer, [*quotes, *cited])
    if missing:
        return f"the answer states {', '.join(missing[:3])}, which its cited passages do not"
    return None


def draft_problem(
    draft: dict[str, Any], passages: Sequence[PassageRef], source: Callable[[str], str], min_support: float
) -> str | None:
    """The critique node's deterministic checks on a draft as the analyst writes it (``answer``, ``citations`` of
    ``{"passage": n, "quote": ...}``, optional ``yes_no``): why they reject it, or None. Each citation is mapped to
    its span and verified against ``source`` as the analyse node does (:func:`citation_from_reply`,
    :func:`verify_citation`); a draft with no verified citation is rejected, and one whose answer its verified quotes
    do not support (:func:`verified_problem`)."""
    cited = [
        verify_citation(citation_from_reply(passages, c), passages, source)
        for c in draft.get("citations", [])
        if isinstance(c, dict)
    ]
    verified = [c for c in cited if c.verified]
    if not verified:
        return "the answer cites no verifiable quote"
    return verified_problem(draft, verified, passages, min_support)


def verified_problem(
    draft: dict[str, Any], verified: Sequence[Citation], passages: Sequence[PassageRef], min_support: float
) -> str | None:
    """The answer checks of a draft whose ``verified`` citations are known (what the critique node runs after the
    analyse node verified them): None for a yes/no verdict, which its clause decides rather than states; else
    :func:`answer_problem` on the verified quotes and the passages they lie in."""
    if draft.get("yes_no"):
        return None
    return answer_problem(
        str(draft.get("answer", "")), [c.quote for c in verified], min_support, cited_texts(verified, passages)
    )


def cited_texts(citations: Sequence[Citation], passages: Sequence[PassageRef]) -> list[str]:
    """The text of each passage a citation lies in (each once, in passage order)."""
    numbers = sorted({c.passage for c in citations if 1 <= c.passage <= len(passages)})
    return [passages[n - 1].text for n in numbers]
