"""The shipped sample corpus and its questions are what the README promises."""

from __future__ import annotations

import json
import re

from conftest import EXAMPLES

KINDS = ["nda", "msa", "saas", "software_license", "employment", "lease", "supply", "data_processing", "consulting",
         "distribution", "loan", "settlement"]  # fmt: skip


def test_twelve_contracts_of_the_promised_kinds_and_sizes() -> None:
    files = sorted(EXAMPLES.glob("*.txt"))
    names = " ".join(f.stem for f in files)
    assert len(files) >= 12 and all(k in names for k in KINDS)
    for f in files:
        text = f.read_text(encoding="utf-8")
        assert 1500 <= len(text.split()) <= 6000, f.name
        assert re.search(r"governed by|governing law", text, re.I), f.name
        assert re.search(r"^\s*(ARTICLE|Section|\d+\.)", text, re.M), f"{f.name}: no numbered clauses"


def test_questions_schema_and_extractive_evidence() -> None:
    rows = [json.loads(line) for line in (EXAMPLES / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 80 and sum(not r["answerable"] for r in rows) >= 10
    assert len({r["id"] for r in rows}) == len(rows)
    for r in rows:
        assert set(r) == {"id", "domain", "doc_id", "category", "question", "answers", "evidence", "answerable"}
        if not r["answerable"]:
            assert r["evidence"] == [] and r["answers"] == []
            continue
        text = (EXAMPLES / f"{r['doc_id']}.txt").read_text(encoding="utf-8")
        spans = [text[e["start"] : e["end"]] for e in r["evidence"]]
        assert spans and all(e["doc_id"] == r["doc_id"] for e in r["evidence"])
        for answer in r["answers"]:
            assert any(answer in s for s in spans), f"{r['id']}: answer not inside its evidence"
