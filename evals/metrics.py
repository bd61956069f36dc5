"""Deterministic retrieval metrics at character-span level (as LegalBench-RAG measures them).

A span is ``(doc_id, start, end)`` with ``end`` exclusive.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence

__all__ = ["Span", "merge_spans", "span_precision", "span_recall"]

Span = tuple[str, int, int]


def merge_spans(spans: Iterable[Span]) -> dict[str, list[tuple[int, int]]]:
    """Union of spans per document, as sorted, disjoint intervals."""
    by_doc: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for doc, s, e in spans:
        if e > s:
            by_doc[doc].append((s, e))
    merged: dict[str, list[tuple[int, int]]] = {}
    for doc, ivs in by_doc.items():
        ivs.sort()
        out = [ivs[0]]
        for s, e in ivs[1:]:
            if s <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], e))
            else:
                out.append((s, e))
        merged[doc] = out
    return merged


def _overlap(a: dict[str, list[tuple[int, int]]], b: dict[str, list[tuple[int, int]]]) -> int:
    total = 0
    for doc, ivs in a.items():
        other = b.get(doc)
        if not other:
            continue
        i = j = 0
        while i < len(ivs) and j < len(other):
            lo, hi = max(ivs[i][0], other[j][0]), min(ivs[i][1], other[j][1])
            if hi > lo:
                total += hi - lo
            if ivs[i][1] < other[j][1]:
                i += 1
            else:
                j += 1
    return total


def _length(m: dict[str, list[tuple[int, int]]]) -> int:
    return sum(e - s for ivs in m.values() for s, e in ivs)


def span_recall(gold: Sequence[Span], retrieved: Sequence[Span]) -> float | None:
    """Share of gold evidence characters covered by the retrieved spans; ``None`` when there is no gold."""
    g = merge_spans(gold)
    total = _length(g)
    if total == 0:
        return None
    return _overlap(g, merge_spans(retrieved)) / total


def span_precision(gold: Sequence[Span], retrieved: Sequence[Span]) -> float | None:
    """Share of retrieved characters that are gold evidence; ``None`` when nothing was retrieved."""
    r = merge_spans(retrieved)
    total = _length(r)
    if total == 0:
        return None
    return _overlap(merge_spans(gold), r) / total
