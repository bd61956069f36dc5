"""``rolora analyze``: the category table, the sentence choices, the risk rules, and real runs (SmolLM2 in-process
and MiniLM retrieval on the sample contracts; a file that is in no index; the CLI)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, TEST_HOME, make_config, missing_real_part, require_cuad


def _qa_evidence(doc_id: str, category: str) -> tuple[int, int]:
    for line in (EXAMPLES / "qa.jsonl").read_text(encoding="utf-8").splitlines():
        q = json.loads(line)
        if q["doc_id"] == doc_id and q["category"] == category:
            ev = q["evidence"][0]
            return ev["start"], ev["end"]
    raise AssertionError(f"no {category} question for {doc_id}")


def test_category_table_follows_cuad_and_has_a_rule_each() -> None:
    from rolora.agents.analyze import CATEGORIES, RISK_RULES

    names = [c.name for c in CATEGORIES]
    assert len(set(names)) == len(names) and set(RISK_RULES) == set(names)
    for wanted in ("Parties", "Effective Date", "Expiration Date", "Renewal Term", "Governing Law", "Anti-Assignment",
                   "Confidentiality", "Indemnification", "Cap On Liability", "Payment Terms", "Non-Compete",
                   "No-Solicit Of Employees", "Ip Ownership Assignment", "Warranty Duration", "Audit Rights",
                   "Termination For Convenience"):  # fmt: skip
        assert wanted in names
    path = require_cuad() / "category_descriptions.csv"  # without CUAD: skipped here (locally), failed under CI
    if not path.is_file():
        missing_real_part(f"{path} not found", "copy category_descriptions.csv of the CUAD v1 release beside qa.jsonl")
    with path.open(encoding="utf-8-sig") as f:
        cuad = {row[0].removeprefix("Category: ").strip().lower() for row in csv.reader(f)}
    for c in CATEGORIES:
        assert (c.name.lower() in cuad) == c.cuad, c.name  # CUAD's name wherever CUAD has the category


def test_unknown_categories_are_all_named() -> None:
    from rolora.agents.analyze import select_categories
    from rolora.errors import UserError

    assert [c.name for c in select_categories(["governing law", "Parties"])] == ["Governing Law", "Parties"]
    with pytest.raises(UserError, match="Nope, Nada"):
        select_categories(["Nope", "Governing Law", "Nada"])


def test_quote_choices_are_exact_substrings(examples_retriever: Any) -> None:
    from rolora.agents.types import PassageRef
    from rolora.roles import quote_candidates

    chunks = [PassageRef(**{k: getattr(p, k) for k in ("doc_id", "start", "end", "text", "heading_path")})
              for p in examples_retriever.document_chunks("nda_mutual")]  # fmt: skip
    sentences = quote_candidates(chunks)
    assert len(sentences) > 40
    assert all(any(s in c.text for c in chunks) for s in sentences)
    assert all(not s[0].isdigit() for s in sentences)  # clause numbers (13.1) are not part of a quote
    law = next(s for s in sentences if "governed by" in s)
    assert law.startswith("This Agreement shall be governed") and "New York" in law


@pytest.mark.parametrize(
    ("category", "text", "risk"),
    [
        ("Renewal Term", "This Agreement shall automatically renew for successive one (1) year terms unless either "
         "party gives notice of non-renewal at least ninety (90) days before the end of the term.", "high"),
        ("Renewal Term", "This Agreement shall not renew automatically.", "low"),
        ("Cap On Liability", "Each party's aggregate liability shall not exceed the fees paid in the prior 12 months.",
         "low"),
        ("Anti-Assignment", "Supplier may assign this Agreement without the consent of Customer.", "high"),
        ("Anti-Assignment", "Neither party may assign this Agreement without the prior written consent of the other.",
         "low"),
        ("Uncapped Liability", "The limitations above shall not apply to gross negligence or wilful misconduct.",
         "high"),
        ("Notice Period To Terminate Renewal", "notice of non-renewal at least thirty (30) days before", "low"),
    ],
)  # fmt: skip
def test_risk_rules(category: str, text: str, risk: str) -> None:
    from rolora.agents.analyze import RISK_RULES

    assert RISK_RULES[category](True, text)[0] == risk


def test_missing_clauses_are_flagged() -> None:
    from rolora.agents.analyze import RISK_RULES

    assert RISK_RULES["Governing Law"](False, "")[0] == "high"
    assert RISK_RULES["Cap On Liability"](False, "")[0] == "high"
    assert RISK_RULES["Non-Compete"](False, "")[0] == "low"
    assert "New York" in RISK_RULES["Governing Law"](True, "governed by the laws of the State of New York, without")[1]


def _check_spans(result: Any, source: str) -> None:
    """Every reported span is exact: the clause holds the quote and the quote is the source text at its offsets."""
    for f in result.findings:
        if not f.found:
            assert f.start == f.end == f.quote_start == f.quote_end == -1 and not f.citations
            continue
        assert 0 <= f.start <= f.quote_start < f.quote_end <= f.end <= len(source)
        assert source[f.quote_start : f.quote_end] == f.quote
        assert f.quote in source[f.start : f.end]
        for c in f.citations:
            assert c.verified and source[c.start : c.end] == c.quote


@pytest.mark.slow
def test_analyze_a_sample_contract(examples_retriever: Any, inprocess_backend: Any, tmp_path: Path) -> None:
    from rolora.agents.analyze import ContractAnalysis, analyze_contract

    cfg = make_config(TEST_HOME, contracts={"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"]})
    categories = ["Governing Law", "Parties", "Cap On Liability", "Termination For Convenience"]
    result = analyze_contract(
        "nda_mutual", "contracts", config=cfg, backend=inprocess_backend, retriever=examples_retriever,
        categories=categories,
    )  # fmt: skip
    assert result.categories == categories and result.adapters == {"analyst": "base"}
    assert result.source == "index" and result.backend == "inprocess"
    source = examples_retriever.document_text("nda_mutual")
    _check_spans(result, source)
    law = result.finding("Governing Law")
    assert law.found and "New York" in law.quote, law
    ev_start, ev_end = _qa_evidence("nda_mutual", "Governing Law")
    assert law.quote_start < ev_end and ev_start < law.quote_end  # overlaps the annotated evidence
    assert law.risk == "low" and "New York" in law.risk_note
    for f in result.findings:
        assert f.risk in ("low", "medium", "high", "unknown") and f.risk_note
        assert f.passages and all(p.startswith("nda_mutual[") for p in f.passages)  # only this contract
    md = result.to_markdown()
    assert md.startswith("# Contract analysis: nda\\_mutual") and "| Governing Law | yes" in md  # text escaped
    assert "not legal advice" in md and f"`nda_mutual[{law.quote_start}:{law.quote_end}]`" in md
    again = ContractAnalysis.model_validate_json(result.model_dump_json())
    assert again == result


@pytest.mark.slow
def test_cli_analyzes_a_file_that_is_in_no_index(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rolora.cli import app

    contract = tmp_path / "supply.txt"
    shutil.copyfile(EXAMPLES / "supply_agreement.txt", contract)
    cfg = tmp_path / "rolora.yaml"
    cfg.write_text(f"home: {TEST_HOME}\ndomains:\n  fresh:\n    corpus: []\n", encoding="utf-8")  # never ingested
    out_json, out_md = tmp_path / "a.json", tmp_path / "a.md"
    args = ["analyze", str(contract), "--domain", "fresh", "--categories", "Governing Law,Insurance",
            "--json", str(out_json), "--markdown", str(out_md), "-c", str(cfg)]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "Governing Law" in r.output and "not legal advice" in r.output
    data = json.loads(out_json.read_text(encoding="utf-8"))
    assert data["source"] == str(contract) and data["doc_id"] == "supply"
    source = contract.read_text(encoding="utf-8")
    from rolora.agents.analyze import ContractAnalysis

    result = ContractAnalysis.model_validate(data)
    _check_spans(result, source)
    law = result.finding("Governing Law")
    assert law.found and "Illinois" in source[law.start : law.end]
    assert out_md.read_text(encoding="utf-8").startswith("# Contract analysis: supply")


def test_cli_refuses_bad_input_before_loading_a_model(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from rolora.cli import app

    r = CliRunner().invoke(app, ["analyze", "missing.txt", "--domain", "contracts"])
    assert r.exit_code != 0 and "no such file" in str(r.exception)
    r = CliRunner().invoke(app, ["analyze", "nda_mutual", "--categories", "Governing Law,Bogus"])
    assert r.exit_code != 0 and "Bogus" in str(r.exception)


def _result(payload: Any, finish: str = "stop") -> Any:
    from rolora.adapters.serving.base import GenerationResult

    text = payload if isinstance(payload, str) else json.dumps(payload)
    parsed = None if isinstance(payload, str) else payload
    return GenerationResult(text, parsed, 100, 20, finish, 0.1, None, "inprocess")  # type: ignore[arg-type]


def test_findings_from_analyst_replies(examples_retriever: Any) -> None:
    """Each kind of reply (a located quote, a quote not in the passages, a refusal, broken JSON) on real chunks."""
    from rolora.agents.analyze import select_categories
    from rolora.agents.analyze.analyst import _finding
    from rolora.agents.analyze.document import candidates, indexed_document
    from rolora.roles import quote_candidates

    doc = indexed_document("nda_mutual", examples_retriever)
    [cat] = select_categories(["Governing Law"])
    passages = candidates(doc, cat, 3, 60)
    sentences = quote_candidates(passages)
    law = next(s for s in sentences if "governed by" in s)
    number = next(i for i, p in enumerate(passages, 1) if law in p.text)

    quoted = _finding(cat, doc, passages, _result({"answer": "New York law", "not_found": False,
                      "citations": [{"passage": number, "quote": " ".join(law.upper().split())}]}))  # fmt: skip
    assert quoted.found and quoted.method == "analyst" and quoted.answer == "New York law"
    assert doc.text[quoted.quote_start : quoted.quote_end] == quoted.quote == law  # normalised match, exact text
    assert quoted.risk == "low"

    invented = {
        "answer": "Delaware",
        "not_found": False,
        "citations": [{"passage": 1, "quote": "the laws of Delaware"}],
    }
    dropped = _finding(cat, doc, passages, _result(invented))
    assert not dropped.found and dropped.quote == "" and "could not be located" in dropped.note
    assert dropped.risk == "high"  # the heuristic for a missing clause, said to be one
    assert "heuristic" in dropped.risk_note

    refusal = {"answer": "Not in the provided clauses.", "not_found": False, "citations": []}
    fallback = _finding(cat, doc, passages, _result(refusal), sentences)
    assert fallback.found and fallback.method == "keyword" and fallback.quote == law and fallback.answer == ""
    assert "not confirmed by the analyst" in fallback.note

    broken = _finding(cat, doc, passages, _result('{"answer": "New Yo', "length"))
    assert not broken.found and broken.risk == "unknown" and "max_tokens" in broken.note


def test_risk_numbers_come_from_the_quote_and_the_notice_wording() -> None:
    from rolora.agents.analyze import QUOTE_END, RISK_RULES

    clause = (
        "The initial term is three (3) years. Thereafter it renews automatically for successive one (1) year terms "
        "unless a Party gives notice of non-renewal at least sixty (60) days before the end of the then-current term."
    )
    risk, note = RISK_RULES["Notice Period To Terminate Renewal"](True, clause + QUOTE_END + clause)
    assert risk == "medium" and "60 days" in note  # not the three-year term
    assert RISK_RULES["Renewal Term"](True, "renews automatically" + QUOTE_END + clause)[0] == "medium"
    pay = "Client shall pay each undisputed invoice within forty-five (45) days after receipt."
    late = " Supplier may suspend the Services if any amount is more than ninety (90) days overdue."
    assert RISK_RULES["Payment Terms"](True, pay + QUOTE_END + pay + late) == ("low", "payment within 45 days")
    tfc = "Client may terminate for any reason upon sixty (60) days' prior written notice."
    assert "60 days' notice" in RISK_RULES["Termination For Convenience"](True, tfc)[1]
