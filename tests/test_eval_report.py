"""Reports from hand-made answers: the JSON's numbers, Markdown, a self-contained HTML whose plots load in headless
Chromium, the adapters section, the held-out check and the LoRA-vs-full experiment."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from rolora.agents.types import Answer, Citation, PassageRef, TraceStep
from rolora.evals.datasets import EvalQuestion
from rolora.evals.gate import check_gate
from rolora.evals.report import _held_out, build_report, write_reports
from rolora.evals.runner import Plan, QuestionResult, RunResult
from rolora.evals.suite import load_suite

from conftest import REPO, make_config, require_chromium

TEXT = "x" * 1000


def _question(i: int, answerable: bool) -> EvalQuestion:
    s = 100 * i
    return EvalQuestion(
        id=f"q{i}",
        question=f"Question {i}?",
        answers=[f"answer {i}"] if answerable else [],
        evidence=[{"doc_id": "doc", "start": s, "end": s + 50}] if answerable else [],  # type: ignore[list-item]
        answerable=answerable,
        category="Cat A" if i % 2 else "Cat B",
        doc_id="doc",
    )


def _answer(q: EvalQuestion, good: bool, adapters: dict[str, str]) -> Answer:
    s = 100 * int(q.id[1:])
    gold_passage = PassageRef(doc_id="doc", start=s, end=s + 80, text=TEXT[:80], chunk_id=f"c{s}")
    other = PassageRef(doc_id="doc", start=900, end=950, text=TEXT[:50], chunk_id="c900")
    if not q.answerable:
        return Answer(question=q.question, domain="contracts", answer="Not in the provided clauses.", not_found=good,
                      passages=[other], adapters=adapters)  # fmt: skip
    passages = [gold_passage, other] if good else [other, gold_passage]
    cite = Citation(doc_id="doc", start=s, end=s + 10, quote=TEXT[:10], passage=1, verified=True)
    trace = [
        TraceStep(
            node="retrieve",
            role="query_writer",
            adapter=adapters["query_writer"],
            latency_s=0.5,
            tokens_in=60,
            tokens_out=20,
        ),
        TraceStep(
            node="analyse",
            role="analyst",
            adapter=adapters["analyst"],
            latency_s=1.0 if good else 2.0,
            tokens_in=400,
            tokens_out=40,
            detail={"citations": [f"doc[{s}:{s + 10}] ok"]},
        ),
    ]
    return Answer(
        question=q.question,
        domain="contracts",
        answer=f"answer {q.id[1:]}" if good else "something else",
        not_found=False,
        citations=[cite],
        passages=passages,
        verdict="supported",
        adapters=adapters,
        trace=trace,
    )


def fake_run(tmp_path: Path, n: int = 8) -> RunResult:
    """A run of two configurations on hand-made answers: "adapters" ranks the gold passage first and answers
    right; "base" does neither on most questions (its third answer raised an error)."""
    suite = load_suite(REPO / "evals" / "suites" / "contracts.yaml")
    suite.bootstrap.samples = 500
    cfg = make_config(tmp_path / "home", contracts={"corpus": [str(tmp_path)]})
    qs = [(suite.datasets[0], _question(i, answerable=i % 4 != 3)) for i in range(n)]
    base_ad = {"query_writer": "base", "analyst": "base", "critic": "base"}
    tuned_ad = {"query_writer": "base", "analyst": "contracts-analyst@2", "critic": "base"}
    results: dict[str, list[QuestionResult]] = {"base": [], "adapters": []}
    for i, (_ds, q) in enumerate(qs):
        gold = {f"c{100 * i}"} if q.answerable else set()
        verdict = {"verdict": "unsupported", "reasons": [], "adapter": "base"}
        if i == 2:
            results["base"].append(QuestionResult(q, "examples-test", "contracts", "error", None, None, None, gold,
                                                  "RoloraRuntimeError: analyse failed"))  # fmt: skip
        else:
            a = _answer(q, good=i == 0, adapters=base_ad)
            results["base"].append(QuestionResult(q, "examples-test", "contracts", "ok", a, 3.0 + i, verdict, gold))
        a = _answer(q, good=True, adapters=tuned_ad)
        ok = {"verdict": "supported", "reasons": [], "adapter": "base"}
        results["adapters"].append(QuestionResult(q, "examples-test", "contracts", "ok", a, 2.0 + i / 10, ok, gold))
    plans = {
        "base": Plan("base", suite.configurations["base"], {"contracts": dict.fromkeys(base_ad)}),
        "adapters": Plan(
            "adapters",
            suite.configurations["adapters"],
            {"contracts": {"query_writer": None, "analyst": "contracts-analyst@2", "critic": None}},
            notes=["query_writer: no promoted adapter for domain contracts; base model used"],
        ),
    }
    return RunResult(suite, cfg, tmp_path / "out", ["base", "adapters"], "base", qs, plans, {"contracts": None},
                     results, computed=2 * n - 1, reused=0, wall_s=1.0)  # fmt: skip


def chromium_image_check(html_path: Path, tmp_path: Path) -> tuple[int, int]:
    """Open the page in headless Chromium; returns (images loaded, images) counted by a script after load.
    Without Chromium: a skip locally, a failure under CI (``require_chromium``)."""
    chromium = require_chromium()
    page = tmp_path / "check.html"
    probe = (
        "<script>window.addEventListener('load',()=>{const im=Array.from(document.images);"
        "const ok=im.filter(i=>i.complete&&i.naturalWidth>0&&i.src.startsWith('data:image/png;base64,'));"
        "const d=document.createElement('div');d.id='img-check';d.textContent=ok.length+'/'+im.length;"
        "document.body.appendChild(d);});</script>"
    )
    page.write_text(html_path.read_text(encoding="utf-8").replace("</body>", probe + "</body>"), encoding="utf-8")
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000", "--dump-dom",
        page.as_uri(),
    ]  # fmt: skip
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    m = re.search(r'<div id="img-check">(\d+)/(\d+)</div>', dom)
    assert m, f"the probe did not run; DOM starts {dom[:300]!r}"
    return int(m.group(1)), int(m.group(2))


def test_report_numbers_from_hand_made_answers(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    report = build_report(run)
    assert report["format"] == "rolora-eval/1" and report["reference"] == "base"
    assert report["meta"]["questions"] == 8 and report["meta"]["answerable"] == 6
    r = report["results"]
    # adapters: gold passage first on every answerable question; base only on q0
    assert r["adapters"]["retrieval.recall@1"]["mean"] == 1.0
    assert r["base"]["retrieval.recall@1"]["mean"] == pytest.approx(1 / 5)  # q2 errored: 5 answerable answers
    assert r["base"]["retrieval.recall@1"]["n"] == 5
    assert r["adapters"]["answer.exact_match"]["mean"] == 1.0
    assert r["adapters"]["answer.refusal_accuracy"] == {"mean": 1.0, "low": 1.0, "high": 1.0, "n": 2, "level": 0.95}
    assert r["base"]["answer.refusal_accuracy"]["mean"] == 0.0  # q7: base answered an unanswerable one
    assert r["base"]["judge.unsupported_rate"]["mean"] == 1.0 and r["adapters"]["judge.supported_rate"]["mean"] == 1
    d = report["differences"]["adapters"]
    assert d["retrieval.recall@1"]["mean"] == pytest.approx(4 / 5) and d["retrieval.recall@1"]["significant"]
    assert d["retrieval.recall@1"]["n"] == 5  # paired: only questions both answered
    assert d["cost.latency_s"]["mean"] < 0
    c = report["configurations"]
    assert c["adapters"]["adapters_used"]["analyst"] == {"contracts-analyst@2": 8}
    assert c["base"]["adapters_used"]["analyst"] == {"base": 7}
    assert c["base"]["errors"] == 1 and "analyse failed" in c["base"]["error_examples"][0]
    assert c["adapters"]["notes"] == ["query_writer: no promoted adapter for domain contracts; base model used"]
    assert set(report["per_category"]["answer.token_f1"]) == {"Cat A", "Cat B"}
    worst = report["worst"]["base"]
    assert worst[0]["id"] == "q2" and worst[0]["status"] == "error"  # errors first
    assert len(worst) == run.suite.worst and any(w["trace"] for w in worst)
    assert [q["id"] for q in report["per_question"]["adapters"]] == [f"q{i}" for i in range(8)]
    assert report["adapter_notes"] and "contracts-analyst@2" in report["adapter_notes"][0]  # not in this registry


def test_report_files_markdown_html_and_plots(tmp_path: Path) -> None:
    report = build_report(fake_run(tmp_path))
    report["gate"] = check_gate(report, report | {"_path": "prev.json"}, {"answer.token_f1": 0.01}).to_dict()
    files = write_reports(report, tmp_path / "out")
    data = json.loads(files.json.read_text())
    assert data["results"] == report["results"] and data["gate"]["passed"] is True
    md = files.markdown.read_text()
    assert md.startswith("# Eval: contracts")
    assert "| metric | base | adapters | adapters − base |" in md
    assert "| retrieval.recall@1 ↑ |" not in md  # only the headline metrics
    assert re.search(
        r"\| answer\.token_f1 ↑ \| [0-9.]+ \[[0-9., ]+\] \| 1\.000 \[1\.000, 1\.000\] \| \+[0-9.]+ .* ▲ \|", md
    )
    assert "| adapters | base (8) | contracts-analyst@2 (8) | base (8) | 0 |" in md
    assert "## Regression gate" in md and "**passed**" in md
    for name, path in files.plots.items():
        assert f"![{name}](plots/{name}.png)" in md
        with Image.open(path) as img:
            assert img.format == "PNG" and img.width > 300
    assert set(files.plots) == {"metrics", "recall_at_k", "per_category", "latency", "differences"}
    page = files.html.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", page)  # nothing loaded from elsewhere
    assert page.count("<img") == 5 and page.count("data:image/png;base64,") == 5
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic writes left no temp files


@pytest.mark.slow
def test_report_html_plots_load_in_headless_chromium(tmp_path: Path) -> None:
    require_chromium()
    files = write_reports(build_report(fake_run(tmp_path)), tmp_path / "out")
    assert chromium_image_check(files.html, tmp_path) == (5, 5)


def test_lora_vs_full_experiment_is_included(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    exp = run.config.home_dir / "experiments" / "lora-vs-full-contracts-analyst"
    exp.mkdir(parents=True)
    rows = {"LoRA": {"trainable_params": 460800, "forgetting_pct": 0.8}, "full": {"trainable_params": 134515008,
            "forgetting_pct": 6.1}}  # fmt: skip
    (exp / "report.json").write_text(json.dumps({"max_steps": 40, "rows": rows}))
    report = build_report(run)
    [e] = report["lora_vs_full"]
    assert e["name"] == "lora-vs-full-contracts-analyst" and e["rows"] == rows and e["plot"] is None
    md = write_reports(report, tmp_path / "out").markdown.read_text()
    assert "## LoRA vs full fine-tuning: lora-vs-full-contracts-analyst (40 steps)" in md
    assert "| forgetting_pct | 0.800 | 6.100 |" in md


def test_held_out_check_reads_the_adapters_data_card(tmp_path: Path) -> None:
    run = fake_run(tmp_path)
    card_dir = run.config.home_dir / "data" / "contracts" / "analyst"
    rec: Any = SimpleNamespace(domain="contracts", role="analyst", data_card_hash="abc")
    assert _held_out(run, rec, {"doc"})["checked"] is False
    card_dir.mkdir(parents=True)
    card = {"digest": "abc", "documents": {"train": ["a", "b"], "validation": ["c"], "test": ["doc"]}}
    (card_dir / "data_card.json").write_text(json.dumps(card))
    assert _held_out(run, rec, {"doc"}) == {"checked": True, "overlap": [], "evaluated": 1, "training_docs": 3}
    assert _held_out(run, rec, {"doc", "b"})["overlap"] == ["b"]
    rec.data_card_hash = "rebuilt"
    assert "rebuilt after this adapter was trained" in _held_out(run, rec, {"doc"})["why"]
