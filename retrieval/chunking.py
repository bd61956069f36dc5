"""Contract-aware chunking that keeps exact character offsets.

A document is first cut at headings and numbered clauses (``ARTICLE IV``, ``Section 5``, ``9.``, ``9.2``,
``(a)``, Markdown ``#``, short ALL-CAPS lines); consecutive short clauses are merged up to ``max_chars``;
a clause longer than ``max_chars`` falls back to word windows with ``overlap_words`` of overlap.
Every chunk satisfies ``text[chunk.start:chunk.end] == chunk.text`` and carries its heading path
(``9. Indemnification > 9.2 Procedure``). The same text always gives the same chunk ids.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from .types import Chunk

__all__ = ["ChunkingOptions", "chunk_document", "find_headings"]


@dataclass(frozen=True)
class ChunkingOptions:
    max_chars: int = 1000
    min_chars: int = 200
    overlap_words: int = 30


_ROMAN_OR_NUM = r"(?:[IVXLCDM]+|\d{1,3})"
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(rf"^(?:ARTICLE|Article)\s+{_ROMAN_OR_NUM}\b"), "article"),
    (re.compile(r"^(#{1,6})\s+\S"), "markdown"),
    (re.compile(r"^(?:SECTION|Section)\s+(\d{1,3}(?:\.\d{1,3})*)\b"), "section"),
    (re.compile(r"^(\d{1,3}(?:\.\d{1,3})+)\.?\s+\S"), "numbered"),  # 9.2 / 9.2.1
    (re.compile(r"^(\d{1,3})\.\s+\S"), "numbered"),  # 9. Title
    (re.compile(r"^\(([a-z]{1,4}|[A-Z]{1,2}|\d{1,2})\)\s+\S"), "paren"),  # (a) (iv) (A) (1)
]
_CAPS = re.compile(r"^[A-Z][A-Z0-9 ,;:&'’/\-–—().]{3,78}$")


@dataclass(frozen=True)
class Heading:
    offset: int  # where the heading line's text starts
    level: int
    label: str


def _label(line: str, limit: int = 60) -> str:
    line = " ".join(line.split())
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0]
    return cut + "…"


def _first_sentence(line: str, after: int) -> str:
    """``9.2 Venue. The courts…`` -> ``9.2 Venue``: the number and its title, without the clause text."""
    cut = line.find(". ", after + 1)
    return line[:cut] if cut > 0 else line


def _classify(line: str) -> tuple[int, str] | None:
    for pattern, kind in _PATTERNS:
        m = pattern.match(line)
        if not m:
            continue
        if kind == "article":
            return 1, _label(line)
        if kind == "markdown":
            return len(m.group(1)), _label(line.lstrip("#").strip())
        if kind in ("section", "numbered"):
            return 2 + m.group(1).count("."), _label(_first_sentence(line, m.end(1)))
        if kind == "paren":
            return 6, f"({m.group(1)})"
    if _CAPS.match(line) and sum(c.isalpha() for c in line) >= 6 and not line.endswith((",", ";")):
        return 2, _label(line.title() if len(line) > 40 else line)
    return None


def find_headings(text: str) -> list[Heading]:
    """Every line that opens a heading or numbered clause, with its nesting level."""
    out: list[Heading] = []
    pos = 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped:
            found = _classify(stripped)
            if found is not None:
                out.append(Heading(pos + (len(line) - len(line.lstrip())), found[0], found[1]))
        pos += len(line)
    return out


@dataclass
class _Section:
    start: int
    end: int
    level: int  # level of the heading that opens it (99 for the preamble)
    path: str


def _sections(text: str) -> list[_Section]:
    heads = find_headings(text)
    sections: list[_Section] = []
    if not heads or heads[0].offset > 0:
        sections.append(_Section(0, heads[0].offset if heads else len(text), 99, ""))
    stack: list[Heading] = []
    for i, h in enumerate(heads):
        while stack and stack[-1].level >= h.level:
            stack.pop()
        stack.append(h)
        end = heads[i + 1].offset if i + 1 < len(heads) else len(text)
        sections.append(_Section(h.offset, end, h.level, " > ".join(s.label for s in stack)))
    return sections


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _windows(text: str, start: int, end: int, opts: ChunkingOptions) -> list[tuple[int, int]]:
    words = [(m.start() + start, m.end() + start) for m in re.finditer(r"\S+", text[start:end])]
    spans: list[tuple[int, int]] = []
    i = 0
    while i < len(words):
        j = i
        while j + 1 < len(words) and words[j + 1][1] - words[i][0] <= opts.max_chars:
            j += 1
        spans.append((words[i][0], words[j][1]))
        if j + 1 >= len(words):
            break
        i = max(i + 1, j + 1 - opts.overlap_words)
    return spans


def _make_id(doc_id: str, start: int, end: int, body: str) -> str:
    h = hashlib.sha256(f"{doc_id}\x00{start}\x00{end}\x00".encode() + body.encode("utf-8"))
    return h.hexdigest()[:32]


def chunk_document(doc_id: str, text: str, opts: ChunkingOptions | None = None) -> list[Chunk]:
    """Cut ``text`` into chunks with exact offsets and heading paths; deterministic."""
    opts = opts or ChunkingOptions()
    spans: list[tuple[int, int, str]] = []
    buf: tuple[int, int, str] | None = None  # merged run of short clauses

    def flush() -> None:
        nonlocal buf
        if buf is not None:
            spans.append(buf)
            buf = None

    for sec in _sections(text):
        s, e = _trim(text, sec.start, sec.end)
        if s >= e:
            continue
        if e - s > opts.max_chars:
            flush()
            spans.extend((ws, we, sec.path) for ws, we in _windows(text, s, e, opts))
            continue
        if buf is not None:
            merged = e - buf[0]
            top_level_break = sec.level <= 1 or (sec.level <= 2 and (buf[1] - buf[0]) >= opts.min_chars)
            if merged <= opts.max_chars and not top_level_break:
                buf = (buf[0], e, buf[2])
                continue
            flush()
        buf = (s, e, sec.path)
    flush()
    chunks = []
    for s, e, path in spans:
        body = text[s:e]
        chunks.append(Chunk(_make_id(doc_id, s, e, body), doc_id, s, e, body, path))
    return chunks
