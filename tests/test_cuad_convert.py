"""``rolora data convert-cuad``: a CUAD-v1-shaped JSON built here from real rows of the CUAD data (contract texts,
categories, evidence spans) is converted back to the project's layout; the round trip keeps every span."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rolora.errors import UserError
from rolora.evals.cuad import convert_cuad, doc_id_of
from rolora.evals.datasets import load_dataset

CONTRACTS = 3  # the smallest contracts with at least one answerable question


def _descriptions(cuad_dir: Path) -> dict[str, str]:
    with (cuad_dir / "category_descriptions.csv").open(encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))[1:]
    return {r[0].removeprefix("Category: ").strip(): r[1].removeprefix("Description: ").strip() for r in rows}


@pytest.fixture(scope="module")
def real(cuad_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CUAD v1 JSON (SQuAD 2.0 shape, CUAD's question wording and ids) of a few real contracts and their rows;
    one title carries the spaces and parentheses of CUAD's titles; one answer_start is off by two characters."""
    rows = [json.loads(line) for line in (cuad_dir / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    by_doc: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_doc.setdefault(r["doc_id"], []).append(r)
    texts = {d: (cuad_dir / "contracts" / f"{d}.txt").read_bytes().decode("utf-8") for d in by_doc}
    docs = sorted((d for d in by_doc if any(r["answerable"] for r in by_doc[d])), key=lambda d: (len(texts[d]), d))
    docs = docs[:CONTRACTS]
    described = _descriptions(cuad_dir)
    data, shifted = [], None
    for n, doc in enumerate(docs):
        title = doc.replace("_", " ", 2) if n == 0 else doc  # "A_B_C" -> "A B C": the converter maps it back
        assert doc_id_of(title) == doc
        qas = []
        for r in by_doc[doc]:
            answers = [{"text": texts[doc][e["start"] : e["end"]], "answer_start": e["start"]} for e in r["evidence"]]
            if shifted is None and answers and texts[doc].count(answers[0]["text"]) == 1 and answers[0]["text"]:
                answers[0]["answer_start"] += 2  # a misplaced answer_start: realigned to the text
                shifted = r["id"]
            qas.append(
                {
                    "id": f"{title}__{r['category']}",
                    "question": f'Highlight the parts (if any) of this contract related to "{r["category"]}" that '
                    f"should be reviewed by a lawyer. Details: {described.get(r['category'], '')}",
                    "answers": answers,
                    "is_impossible": not r["answerable"],
                }
            )
        data.append({"title": title, "paragraphs": [{"context": texts[doc], "qas": qas}]})
    assert shifted is not None
    path = tmp_path_factory.mktemp("cuad-json") / "CUAD_v1.json"
    path.write_text(json.dumps({"version": "aok_v1.0", "data": data}), encoding="utf-8")
    return {"json": path, "docs": docs, "rows": [r for d in docs for r in by_doc[d]], "texts": texts}


def test_round_trip_keeps_texts_and_evidence_spans(real: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "cuad"
    report = convert_cuad(real["json"], out)
    rows = [json.loads(line) for line in (out / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    originals = real["rows"]
    assert (report.contracts, report.questions) == (CONTRACTS, len(originals)) and report.realigned == 1
    assert report.answerable == sum(r["answerable"] for r in originals)
    assert sorted(p.stem for p in (out / "contracts").iterdir()) == sorted(real["docs"])
    for doc in real["docs"]:
        assert (out / "contracts" / f"{doc}.txt").read_bytes().decode("utf-8") == real["texts"][doc]
    for got, want in zip(rows, originals, strict=True):
        assert list(got) == list(want), "the fields (and their order) of the project's qa.jsonl"
        assert (got["domain"], got["doc_id"], got["category"]) == (want["domain"], want["doc_id"], want["category"])
        assert got["answerable"] == want["answerable"] and got["evidence"] == want["evidence"]
        text = real["texts"][got["doc_id"]]
        assert [text[e["start"] : e["end"]] for e in got["evidence"]] == got["answers"]  # spans point at answers
        assert len(got["id"]) == 12 and int(got["id"], 16) >= 0
    assert len({r["id"] for r in rows}) == len(rows)
    assert len(load_dataset(out / "qa.jsonl")) == len(rows)  # the eval suites' loader takes it as it is
    with (out / "category_descriptions.csv").open(encoding="utf-8") as f:
        names = {row[0].removeprefix("Category: ") for row in list(csv.reader(f))[1:]}
    assert names == {r["category"] for r in originals}
    assert not list(out.rglob(".*.tmp")), "atomic writes leave no temp files"


def test_cli_converts_and_refuses_to_overwrite(real: dict[str, Any], tmp_path: Path) -> None:
    from rolora.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["data", "convert-cuad", str(real["json"]), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert f"{CONTRACTS} contracts, {len(real['rows'])} questions" in res.output
    again = runner.invoke(app, ["data", "convert-cuad", str(real["json"]), str(tmp_path / "out")])
    assert isinstance(again.exception, UserError) and "pass --force" in str(again.exception)
    forced = runner.invoke(app, ["data", "convert-cuad", str(real["json"]), str(tmp_path / "out"), "--force"])
    assert forced.exit_code == 0, forced.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{not json", "not valid JSON (line 1"),
        ({"version": "x"}, "missing 'data' (is this the CUAD v1 JSON?)"),
        ({"data": []}, "'data' is empty"),
        ({"data": [{"title": "A"}]}, "data[0]: missing 'paragraphs'"),
        ({"data": [{"title": "A", "paragraphs": [{"context": "abc", "qas": [{"id": "A__Parties"}]}]}]},
         "data[0].paragraphs[0].qas[0]: missing 'question'"),
        ({"data": [{"title": "A", "paragraphs": [{"context": "The parties.", "qas": [
            {"id": "A__Parties", "question": "q", "answers": [{"text": "Nobody", "answer_start": 0}]}]}]}]},
         "answers[0]: answer 'Nobody' is not in the contract's text"),
        ({"data": [{"title": "A", "paragraphs": [{"context": "x", "qas": [
            {"id": "A-Parties", "question": "q", "answers": []}]}]}]}, "does not end with __<category>"),
        ({"data": [{"title": "A B", "paragraphs": [{"context": "x", "qas": []}]},
                   {"title": "A(B", "paragraphs": [{"context": "y", "qas": []}]}]}, "gives the file name of 'A B'"),
    ],
)  # fmt: skip
def test_bad_input_is_one_clear_error(content: Any, message: str, tmp_path: Path) -> None:
    src = tmp_path / "CUAD_v1.json"
    if content is not None:
        src.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(UserError) as err:
        convert_cuad(src, tmp_path / "out")
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out" / "qa.jsonl").exists()
