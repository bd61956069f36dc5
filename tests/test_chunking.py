"""Contract-aware chunking: exact offsets, heading paths, stable ids, window fallback."""

from __future__ import annotations

import itertools
from pathlib import Path

from rolora.retrieval.chunking import ChunkingOptions, chunk_document, find_headings

from conftest import EXAMPLES

CONTRACT = """MASTER SERVICES AGREEMENT

This Agreement is made between Alpha Corp ("Provider") and Beta LLC ("Customer").

ARTICLE IV – INDEMNIFICATION

Section 4.1 General. Provider shall indemnify Customer against third-party claims.

Section 4.2 Procedure. The indemnified party shall give prompt notice.
(a) Notice must be in writing within ten (10) days.
(b) The indemnifying party controls the defence.

9. Governing Law
9.2 Venue. The courts of New York have exclusive jurisdiction.
"""


def test_headings_are_found_with_levels() -> None:
    heads = find_headings(CONTRACT)
    labels = [h.label for h in heads]
    assert labels[0] == "MASTER SERVICES AGREEMENT"
    assert any(label.startswith("ARTICLE IV") for label in labels)
    assert "(a)" in labels and "(b)" in labels
    by_label = {h.label.split()[0] + (h.label.split()[1] if h.label.startswith("Section") else ""): h for h in heads}
    assert by_label["Section4.2"].level > by_label["ARTICLE"].level
    assert by_label["(a)"].level > by_label["Section4.2"].level


def test_heading_paths_and_offsets_small_chunks() -> None:
    chunks = chunk_document("msa", CONTRACT, ChunkingOptions(max_chars=120, min_chars=0, overlap_words=5))
    for c in chunks:
        assert CONTRACT[c.start : c.end] == c.text
    paths = [c.heading_path for c in chunks]
    assert "ARTICLE IV – INDEMNIFICATION > Section 4.2 Procedure > (a)" in paths
    assert paths[-1].endswith("9. Governing Law")  # 9. and 9.2 fit in one chunk: the path of the first
    narrow = chunk_document("msa", CONTRACT, ChunkingOptions(max_chars=70, min_chars=0, overlap_words=5))
    assert narrow[-1].heading_path.endswith("9. Governing Law > 9.2 Venue")
    assert paths[0] == "MASTER SERVICES AGREEMENT"


def test_merged_clauses_do_not_cross_an_article() -> None:
    chunks = chunk_document("msa", CONTRACT)
    assert [c.heading_path for c in chunks][:2] == ["MASTER SERVICES AGREEMENT", "ARTICLE IV – INDEMNIFICATION"]
    assert "(b) The indemnifying party" in chunks[1].text


def test_long_clause_falls_back_to_overlapping_windows() -> None:
    words = " ".join(f"word{i}" for i in range(600))
    text = f"1. Long Clause\n{words}\n"
    chunks = chunk_document("d", text, ChunkingOptions(max_chars=300, min_chars=0, overlap_words=10))
    assert len(chunks) > 5
    for a, b in itertools.pairwise(chunks):
        assert text[a.start : a.end] == a.text and len(a.text) <= 300
        assert b.start < a.end, "consecutive windows overlap"
    assert chunks[-1].text.endswith("word599")


def test_every_sample_chunk_round_trips_and_ids_are_stable() -> None:
    files = sorted(EXAMPLES.glob("*.txt"))
    assert len(files) >= 12
    for f in files:
        text = f.read_text(encoding="utf-8")
        first = chunk_document(f.stem, text)
        second = chunk_document(f.stem, text)
        assert [c.chunk_id for c in first] == [c.chunk_id for c in second]
        assert len({c.chunk_id for c in first}) == len(first)
        for c in first:
            assert text[c.start : c.end] == c.text and c.text.strip() == c.text and len(c.text) <= 1000
        covered = sum(len(c.text.split()) for c in first)
        assert covered >= len(text.split()), f"{f.name}: chunks lose words"
        assert sum(1 for c in first if c.heading_path) >= len(first) * 0.8, f"{f.name}: headings not found"


def test_cuad_offsets_round_trip(cuad_dir: Path) -> None:
    for f in sorted((cuad_dir / "contracts").glob("*.txt"))[:60]:
        text = f.read_text(encoding="utf-8")
        for c in chunk_document(f.stem, text):
            assert text[c.start : c.end] == c.text
