"""What a quote is: whole sentences of a passage, found by one abbreviation-aware splitter.

The analyst cites ``{"passage": n, "quote": "..."}``. Every side of the role contract uses the same definition of a
quote, so an adapter is trained on quotes the graph lets it write:

- :func:`split_sentences` cuts a text into sentences with exact character spans (``text[start:end] == sentence``),
  without breaking at ``Section 9.01``, ``Inc.``, ``U.S.``, ``No. 5`` or ``e.g.``, and splitting numbered lists
  (``1. … 2. …``, ``(a) …; (b) …``) into their items, clause numbers left out.
- :func:`quote_spans` / :func:`quote_candidates` turn the passages shown to the analyst into the quotes it may write
  (at least :data:`MIN_QUOTE_CHARS`; a sentence longer than :data:`MAX_QUOTE_CHARS` in pieces cut at word ends).
  The graph constrains its quotes to these values; the analyst's training quotes are the ones that overlap the gold
  evidence.
- :func:`locate_quote` maps a quote back to offsets (exactly, else whitespace- and case-normalised; never fuzzy).

>>> [s.text for s in split_sentences("Acme, Inc. agrees (see Section 9.01). 1. Fees. 2. Term; (a) one year.")]
['Acme, Inc. agrees (see Section 9.01).', 'Fees.', 'Term;', 'one year.']
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from .safety import looks_injected

__all__ = [
    "MAX_QUOTE_CHARS",
    "MIN_QUOTE_CHARS",
    "Quote",
    "Sentence",
    "is_heading",
    "locate_quote",
    "quote_candidates",
    "quote_spans",
    "split_sentences",
]

MAX_QUOTE_CHARS = 300  # a longer sentence is quoted in pieces of at most this many characters, cut at word ends
MIN_QUOTE_CHARS = 20  # shorter pieces (headings, "Fees.") are not quotes


@dataclass(frozen=True)
class Sentence:
    """A sentence of a source text: ``source[start:end] == text``; no surrounding whitespace, no clause number."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Quote:
    """A value the analyst may quote: ``passages[passage - 1].text[start:end] == text`` (``passage`` is 1-based)."""

    passage: int
    start: int
    end: int
    text: str


class HasText(Protocol):
    @property
    def text(self) -> str: ...


# Words whose trailing period does not end a sentence (compared lower-cased, without the period). Dotted initials
# (U.S, e.g, i.e, L.P) and single letters are recognised by shape, see _is_abbreviation.
_ABBREVIATIONS = frozenset(
    "inc ltd corp co no nos sec secs art arts para paras mr ms mrs dr st jr sr vs v cf approx dept fig ch cl pp "
    "llc plc bros".split()
)
_DOTTED = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]$|^[A-Za-z]$")
# a clause number at the start of a piece: "1.", "9.01", "IV.", "(a)", "a)", "(iv)", and "Section 9.01" before a
# heading word (not "Section 9.01 of this Agreement ...", where it is a reference)
_SECTION = r"(?:Section|SECTION|Article|ARTICLE|§)\s*\d{1,3}(?:\.\d{1,3})*\.?"
_NUMBER = r"\d{1,3}(?:\.\d{1,3})+\.?|\d{1,3}\.(?!\d)|[IVXLC]{1,6}\."
_PAREN = r"\((?:[a-zA-Z]|[ivxlc]{1,6}|[IVXLC]{1,6}|\d{1,3})\)|(?:[a-z]|\d{1,3})\)"
_ENUMERATOR = rf"(?:{_SECTION}(?=\s+[A-Z\"“(])|{_NUMBER}|{_PAREN})"
_LEADING = re.compile(rf"(?:(?:and|or)\s+)?{_ENUMERATOR}(?=\s)\s*")
_ONLY_ENUMERATOR = re.compile(rf"(?:{_SECTION}|{_NUMBER}|{_PAREN})")
_LIST_ITEM = re.compile(rf"(?:(?:and|or)\s+)?(?:{_SECTION}|{_NUMBER}|{_PAREN})\s")
_BREAK = re.compile(r"[.!?;:][\"'”’)\]]*(?=\s)|\n")
_WORD_BEFORE = re.compile(r"[\w.]*$")
_NON_SPACE = re.compile(r"\S")


def _is_abbreviation(word: str) -> bool:
    return word.lower() in _ABBREVIATIONS or bool(_DOTTED.match(word))


def _is_break(text: str, seg_start: int, m: re.Match[str]) -> bool:
    """Whether the sentence running from ``seg_start`` ends at the punctuation or newline ``m``."""
    after = _NON_SPACE.search(text, m.end())
    if after is None:
        return True
    nxt = after.start()
    newline_in_gap = "\n" in text[m.end() : nxt]
    before = text[seg_start : m.start()].rstrip(" \t")
    if m.group(0) == "\n":
        if newline_in_gap or not before:  # a blank line, or nothing before it
            return True
        # a hard-wrapped line (a lower-case word or comma, then a lower-case word on the next line) continues
        wrapped = (before[-1].islower() or before[-1] == ",") and text[nxt].islower()
        return not wrapped or _LIST_ITEM.match(text, nxt) is not None
    if newline_in_gap:
        return True
    piece = text[seg_start : m.end()].strip()
    if _LIST_ITEM.match(text, nxt):  # "...: (a) ...", "...; and (b) ...", "... fees. 2. Term"
        return not _ONLY_ENUMERATOR.fullmatch(piece)
    mark = m.group(0)[0]
    if mark == ":":
        return False
    first = text[nxt]
    if not (first.isupper() or first.isdigit() or first in "\"“'‘(["):
        return False  # "e.g. the", "Inc. and", "; provided that"
    if mark == ".":
        if _ONLY_ENUMERATOR.fullmatch(piece):
            return False  # the "1." of "1. Definitions"
        word = _WORD_BEFORE.search(before)
        if word and _is_abbreviation(word.group(0)):
            return False  # "Inc. (the", "U.S. Government", "No. 5"
    return True


def split_sentences(text: str) -> list[Sentence]:
    """The sentences of ``text`` in order, each an exact span (``text[s.start:s.end] == s.text``).

    A sentence ends at ``. ! ?`` or ``;`` followed by a capital, digit, quote or bracket (not after an abbreviation
    such as ``Inc.``, ``No.``, ``U.S.`` or ``e.g.``, nor after a bare clause number), at a newline (a hard-wrapped
    line, lower-case on both sides, continues), and before a list item (``1.``, ``(b)``, ``and (c)``) that follows
    punctuation. Leading clause numbers (``9.01``, ``Section 9.01``, ``(a)``) are left out of the sentence.
    """
    out: list[Sentence] = []
    seg = 0
    for m in _BREAK.finditer(text):
        if m.end() <= seg or not _is_break(text, seg, m):
            continue
        _emit(text, seg, m.end(), out)
        seg = m.end()
    _emit(text, seg, len(text), out)
    return out


def _emit(text: str, start: int, end: int, out: list[Sentence]) -> None:
    while start < end and text[start].isspace():
        start += 1
    while True:  # "(a) (i) ...", "and (b) ..."
        m = _LEADING.match(text, start, end)
        if m is None or m.end() >= end:
            break
        start = m.end()
    while end > start and text[end - 1].isspace():
        end -= 1
    if end > start:
        out.append(Sentence(start, end, text[start:end]))


_LAST_SPACE = re.compile(r"\s+\S*$")


def _pieces(sentence: str, max_chars: int) -> list[tuple[int, str]]:
    """``sentence`` as ``(offset, piece)``: whole when it fits in ``max_chars``, else consecutive pieces of at most
    ``max_chars`` cut at word ends (a trailing ``,;:`` dropped), each an exact substring at its offset."""
    out: list[tuple[int, str]] = []
    pos = 0
    while len(sentence) - pos > max_chars:
        head = sentence[pos : pos + max_chars + 1]
        m = _LAST_SPACE.search(head)
        cut = m.start() if m and m.start() > 0 else max_chars
        piece = head[:cut].rstrip().rstrip(",;:").rstrip()
        if piece:
            out.append((pos, piece))
        pos += cut
        while pos < len(sentence) and sentence[pos].isspace():
            pos += 1
    if pos < len(sentence):
        out.append((pos, sentence[pos:]))
    return out


def quote_spans(
    passages: Sequence[HasText],
    max_chars: int = MAX_QUOTE_CHARS,
    min_chars: int = MIN_QUOTE_CHARS,
    limit: int = 200,
    *,
    exclude_injected: bool = True,
) -> list[Quote]:
    """The quotes the analyst may write for ``passages``: their sentences (a longer one than ``max_chars`` in
    consecutive pieces cut at word ends), at least ``min_chars`` long, each text once (first passage wins), at most
    ``limit``, in passage order."""
    out: list[Quote] = []
    seen: set[str] = set()
    for n, p in enumerate(passages, start=1):
        for s in split_sentences(p.text):
            if exclude_injected and looks_injected(s.text):
                continue  # a sentence that addresses the model is never evidence (rolora.roles.safety)
            for offset, q in _pieces(s.text, max_chars):
                if len(q) < min_chars or q in seen:
                    continue
                seen.add(q)
                start = s.start + offset
                out.append(Quote(n, start, start + len(q), q))
                if len(out) >= limit:
                    return out
    return out


_HEADING_NUMBER = re.compile(
    r"^(?:(?:article|section|clause|schedule|exhibit|annex|appendix|part)\s+)?"
    r"(?:[0-9]+(?:\.[0-9]+)*\.?|[IVXLC]+\.?|[A-Z]\.|\([a-z0-9]+\))?\s*[-–—:.]?\s*",
    re.IGNORECASE,
)
_WORD = re.compile(r"[A-Za-z][A-Za-z'’-]*")


_VERBS = frozenset("IS ARE WAS WERE BE SHALL WILL MAY MUST HAS HAVE DOES".split())


def is_heading(text: str) -> bool:
    """A heading, not a statement: after its numbering ("ARTICLE III –", "7.2"), at most 8 words with no digit and
    none of ``$ % , ; : /``, every word of four letters or more capitalised (Title Case or ALL CAPS; an ALL CAPS line
    with a verb such as SHALL or IS is a statement), e.g. "ARTICLE III – TERM AND TERMINATION", "Termination for
    Convenience." The analyst reads headings in the passages (they say where a clause is) but never cites one: a
    heading is not evidence, and as an extractive answer it says nothing."""
    body = _HEADING_NUMBER.sub("", text.strip(), count=1).rstrip(" .:")
    if not body or any(ch.isdigit() or ch in "$%,;:/" for ch in body):
        return False
    words = _WORD.findall(body)
    long = [w for w in words if len(w) >= 4]
    if not (0 < len(words) <= 8 and long and all(w[0].isupper() for w in long)):
        return False
    return not any(w in _VERBS for w in words)


def quote_candidates(
    passages: Sequence[HasText],
    max_chars: int = MAX_QUOTE_CHARS,
    min_chars: int = MIN_QUOTE_CHARS,
    limit: int = 200,
    *,
    exclude_injected: bool = True,
) -> list[str]:
    """The texts of :func:`quote_spans`: the values a constrained analyst may quote."""
    return [q.text for q in quote_spans(passages, max_chars, min_chars, limit, exclude_injected=exclude_injected)]


_WS = re.compile(r"\s+")
_TRIM = " \t\n\"'“”‘’.,;:…"


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
