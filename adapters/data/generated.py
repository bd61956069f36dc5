"""Questions generated from a contract's own text, with their answers checked against it.

The annotated questions of a domain are few (78 answerable ones for the example corpus); a small analyst needs
more. Every contract states its facts in a handful of recurring shapes — a defined term and its meaning, the law
that governs it, a period of days or months, a dollar amount, a percentage, the date it takes effect — and each
shape yields a question whose answer is a short exact span of one sentence. That sentence is the gold evidence, so
these rows go through the same builders (RAFT contexts, quotes, critic perturbations) as annotated ones, and the
split by contract keeps every generated row of a test contract in the test split.

Nothing is invented: an answer is always ``sentence[a:b]`` of the document; a shape that matches twice in one
sentence (two periods, two amounts) is skipped rather than guessed.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

from rolora.roles import split_sentences

from .base import QARow

__all__ = ["document_name", "generated_questions"]

_DEFINITION = re.compile(
    r"^[\"“]([A-Z][^\"”]{1,60})[\"”]\s+(?:shall\s+)?(?:means?|refers? to)\s+(.{10,240}?)[.;]?$", re.S
)
_LAW = re.compile(
    r"governed by[^.;]{0,80}?\b(the (?:internal |substantive )?laws? of (?:the )?(?:State |Commonwealth |Province )?"
    r"(?:of )?[A-Z][A-Za-z]+(?: [A-Z][A-Za-z]+){0,3})"
)
_PERIOD = re.compile(
    r"\b(?:(?:[a-z]+(?:-[a-z]+)?) \(\d{1,4}\)|\d{1,4}) (?:full |consecutive )?(?:calendar |business )?"
    r"(?:days?|months?|years?)\b"
)
_AMOUNT = re.compile(r"\$\d[\d,]*(?:\.\d+)?(?: (?:million|billion))?")
_PERCENT = re.compile(r"\b(?:[a-z]+(?:-[a-z]+)? percent \(\d+(?:\.\d+)?%\)|\d+(?:\.\d+)?%)")
_EFFECTIVE = re.compile(
    r"(?:as of|dated|effective)\s+(?:as of\s+)?([A-Z][a-z]+ \d{1,2}, \d{4})\s*"
    r"\(the [\"“](?:Effective|Closing) Date[\"”]\)"
)
_HEADING_NUMBER = re.compile(r"^(?:(?:Section|SECTION|Article|ARTICLE|§)\s*)?[\dIVXLC]+(?:\.\d+)*\.?\s*[–—-]?\s*")
_SMALL = {"And", "Of", "The", "For", "To", "In", "On", "Or", "A", "An"}
_SUFFIX = {"LLC": "LLC", "L.P.": "L.P.", "LP": "LP", "INC.": "Inc.", "INC": "Inc.", "LTD.": "Ltd.", "CO.": "Co."}


def _tidy_name(name: str) -> str:
    name = " ".join(name.split()).strip(" ,")
    if name.upper() != name:
        return name
    return " ".join(_SUFFIX.get(w, w.capitalize()) for w in name.split())


def _party_names(parties: str) -> list[str]:
    """Names of the parties in a preamble's ``X, a Delaware corporation ("Buyer"), and Y, an ...`` phrase."""
    names = []
    for seg in re.split(r"\([\"“][^\"”]+[\"”]\)", parties)[:2]:
        seg = re.sub(r"^[\s,;]*(?:by\s+)?(?:and\s+)?(?:between\s+)?", "", seg.strip())
        m = re.match(r"(.+?),\s+an?\s+[A-Z]", seg)
        if m and 2 < len(m.group(1)) <= 80:
            names.append(_tidy_name(m.group(1)))
    return names


def document_name(profile: Any) -> str:
    """``the Supply Agreement between Harbor Point Foods LLC and Crestline Packaging Co.`` (as much as is known)."""
    title = re.split(r"\s+(?:This|THIS)\s", " ".join(str(profile.title).split()))[0]
    if title.isupper():
        title = " ".join(w.lower() if w in _SMALL else w.capitalize() for w in title.title().split())
    name = f"the {title}" if title else "the agreement"
    parties = _party_names(profile.parties or "")
    return f"{name} between {parties[0]} and {parties[1]}" if len(parties) == 2 else name


def _heading(path: str) -> str:
    last = path.split(" > ")[-1].strip() if path else ""
    last = _HEADING_NUMBER.sub("", last).strip(" .:–—-")
    if "definition" in last.lower():  # a definitions article states many periods and amounts: ambiguous
        return ""
    return last if 2 < len(last) <= 60 else ""


def _one(pattern: re.Pattern[str], text: str) -> re.Match[str] | None:
    found = list(pattern.finditer(text))
    return found[0] if len(found) == 1 else None


def _sentence_questions(doc: str, text: str, heading: str) -> Iterator[tuple[str, str, str]]:
    """(category, question, answer) for one sentence; the answer is a substring of ``text``."""
    m = _DEFINITION.match(text)
    if m:
        yield "Definition", f'Under {doc}, what does "{m.group(1)}" mean?', m.group(2).strip()
    law = _one(_LAW, text)
    if law:
        yield "Governing Law", f"Which law governs {doc}?", law.group(1)
    if not heading:
        return
    where = f'the "{heading}" provision'
    period = _one(_PERIOD, text)
    if period:
        yield "Period", f"Under {doc}, what period does {where} set?", period.group(0)
    amount = _one(_AMOUNT, text)
    if amount:
        yield "Amount", f"Under {doc}, what dollar amount does {where} state?", amount.group(0)
    pct = _one(_PERCENT, text)
    if pct:
        yield "Percentage", f"Under {doc}, what percentage does {where} state?", pct.group(0)


def generated_questions(retriever: Any, doc_ids: list[str], rng: random.Random, per_document: int = 40) -> list[QARow]:
    """Up to ``per_document`` generated questions per document (a seeded sample when there are more), each with its
    sentence as the evidence; a question asked of two sentences of one document (ambiguous) is dropped."""
    profiles = retriever.store.profiles()
    rows: list[QARow] = []
    for doc_id in doc_ids:
        profile = profiles.get(doc_id)
        if profile is None:
            continue
        doc = document_name(profile)
        text = retriever.document_text(doc_id)
        found: dict[str, tuple[str, str, int, int]] = {}
        ambiguous: set[str] = set()
        eff = _EFFECTIVE.search(text[:3000])
        if eff:
            found[f"What is the effective date of {doc}?"] = ("Effective Date", eff.group(1), eff.start(), eff.end())
        for chunk in retriever.document_chunks(doc_id):
            heading = _heading(chunk.heading_path)
            for s in split_sentences(chunk.text):
                start = chunk.start + s.start
                if text[start : start + len(s.text)] != s.text:
                    continue
                for category, question, answer in _sentence_questions(doc, s.text, heading):
                    prev = found.get(question)
                    if prev is None:
                        found[question] = (category, answer, start, start + len(s.text))
                    elif prev[2] != start:  # two sentences answer it (one sentence may sit in two chunks)
                        ambiguous.add(question)
        items = sorted((q, v) for q, v in found.items() if q not in ambiguous)
        rng.shuffle(items)
        for n, (question, (category, answer, start, end)) in enumerate(items[:per_document]):
            rows.append(
                QARow(f"gen-{doc_id}-{n:03d}", doc_id, category, question, (answer,), ((doc_id, start, end),), True)
            )
    return rows
