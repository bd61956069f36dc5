"""A real run of the contracts suite (4 questions, base vs adapters, one analyse round) with SmolLM2, MiniLM and
the LangGraph agent: killed mid-way (a real process, SIGKILL), resumed (only the missing answers are computed),
reported (JSON, Markdown, HTML whose plots load in headless Chromium) and gated against a baseline by the CLI's exit
code (the CLI run in-process through typer's CliRunner)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from click.testing import Result
from typer.testing import CliRunner

from rolora.config import load_config
from rolora.evals.runner import run_suite
from rolora.evals.suite import load_suite

from conftest import EXAMPLES, REPO, TEST_HOME, copy_index, make_lora_adapter, require_chromium
from test_eval_report import chromium_image_check

pytestmark = pytest.mark.slow

CONFIGS = "base,adapters"
SAMPLE = 4  # with the suite's seed: three answerable questions and one unanswerable


def cli(*args: str) -> Result:
    """``rolora ARGS`` in this process (the same typer app ``python -m rolora.cli`` runs)."""
    from rolora.cli import app

    return CliRunner().invoke(app, list(args))


def ok_rows(db: Path) -> dict[tuple[str, str], float]:
    if not db.is_file():
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute("SELECT config, qid, created FROM results WHERE status='ok'").fetchall()
    except sqlite3.OperationalError:  # the table is not created yet
        return {}
    finally:
        con.close()
    return {(c, q): t for c, q, t in rows}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory, generator_dir: Path, examples_retriever: Any) -> SimpleNamespace:
    """A fresh home (the prepared SmolLM2 by path; seeded with a copy of the session's index of the sample corpus,
    the same corpus and settings the suite ingests), a promoted analyst adapter with real PEFT weights and recorded
    gates, and the contracts suite cut to one analyse round."""
    from rolora.adapters.gates import GateReport, gate_forgetting, gate_val_perplexity
    from rolora.adapters.registry import Registry

    root = tmp_path_factory.mktemp("eval-run")
    config = root / "rolora.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "home": str(root / "home"),
                "models": {"generator": str(generator_dir)},
                "domains": {"contracts": {"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"]}},
            }
        )
    )
    suite_data = yaml.safe_load((REPO / "evals" / "suites" / "contracts.yaml").read_text())
    suite_data["domains"]["contracts"]["corpus"] = [str(EXAMPLES)]
    suite_data["datasets"][0]["path"] = str(EXAMPLES / "qa.jsonl")
    suite_data["agent"] = {"max_iterations": 1}
    suite_data["bootstrap"]["samples"] = 1000
    suite = root / "contracts.yaml"
    suite.write_text(yaml.safe_dump(suite_data))

    index = TEST_HOME / "indexes" / "contracts"
    assert examples_retriever.stats()["documents"] == 12 and (index / "manifest.json").is_file()
    copy_index(index, root / "home" / "indexes" / "contracts")
    cfg = load_config(config)
    registry = Registry.from_config(cfg, generator_dir)
    folder = make_lora_adapter(generator_dir, root / "analyst-lora", seed=11)
    rec = registry.register(folder, "contracts-analyst", "analyst", "contracts", generator_dir)
    gates = GateReport(
        rec.ref, str(generator_dir), "lora", {}, [gate_val_perplexity(12.0, 11.0), gate_forgetting(10.0, 10.2)]
    )
    registry.record_gates(rec.ref, gates)
    registry.promote(rec.ref)

    out = root / "out"
    db = out / "results.sqlite"
    args = [str(suite), "--config", str(config), "--sample", str(SAMPLE), "--configs", CONFIGS, "--out", str(out)]
    # 1. a run killed (SIGKILL) once two answers are stored
    proc = subprocess.Popen(
        [sys.executable, "-m", "rolora.cli", "eval", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 1200
    while len(ok_rows(db)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    proc.kill()
    output = proc.communicate()[0]
    assert proc.returncode == -9, f"the run ended before it could be interrupted (rc {proc.returncode}):\n{output}"
    before = ok_rows(db)
    # 2. resumed in-process: only the missing answers are computed
    t0 = time.perf_counter()
    resumed = run_suite(
        load_suite(suite), out=out, config=cfg, configs=CONFIGS.split(","), sample=SAMPLE, concurrency=2
    )
    resume_s = time.perf_counter() - t0
    # 3. the CLI again: everything stored, so no model runs; it writes the reports
    report_cli = cli("eval", *args)
    assert "no index yet" not in output + report_cli.output, "the seeded index was not used"
    return SimpleNamespace(
        root=root,
        out=out,
        db=db,
        args=args,
        before=before,
        after=ok_rows(db),
        resumed=resumed,
        resume_s=resume_s,
        report_cli=report_cli,
        adapter=rec.ref,
    )


def test_resume_computes_only_the_missing_answers(real_run: SimpleNamespace) -> None:
    total = SAMPLE * 2
    before, after, run = real_run.before, real_run.after, real_run.resumed
    assert 2 <= len(before) < total
    assert run.reused == len(before)
    assert run.computed == total - len(before)
    assert set(after) == {(c, q.id) for c in ("base", "adapters") for _, q in run.questions}
    assert all(after[k] == t for k, t in before.items())  # stored answers were not recomputed
    con = sqlite3.connect(real_run.db)
    runs = con.execute("SELECT finished, computed, reused FROM runs ORDER BY id").fetchall()
    con.close()
    assert runs[0][0] is None  # the killed run never finished
    assert runs[1][1:] == (total - len(before), len(before))
    assert runs[2][1:] == (0, total)  # the CLI run reused everything
    errors = [(n, r.question.id, r.error) for n, rs in run.results.items() for r in rs if r.status != "ok"]
    assert not errors


def test_real_answers_carry_traces_and_the_adapters_used(real_run: SimpleNamespace) -> None:
    run = real_run.resumed
    assert run.plans["adapters"].adapters["contracts"] == {
        "query_writer": None,
        "analyst": real_run.adapter,
        "critic": None,
    }
    assert run.plans["base"].adapters["contracts"] == dict.fromkeys(("query_writer", "analyst", "critic"))
    for name, results in run.results.items():
        for r in results:
            a = r.answer
            assert a is not None and a.trace and a.passages
            assert a.adapters["analyst"] == (real_run.adapter if name == "adapters" else "base")
            # one analyst call, none when the question was decided without a model: the evidence gate refused it
            # (agent.min_evidence_similarity), the typed reader read its value, or a yes/no verdict decided it
            analyse = [s for s in a.trace if s.node == "analyse"]
            modelless = any(
                "refused" in s.detail.get("evidence_gate", {}) or "typed_reader" in s.detail or "yes_no" in s.detail
                for s in analyse
            )
            assert all(s.role is None for s in analyse) is modelless
            calls = [s.adapter for s in a.trace if s.role == "analyst"]
            assert calls == ([] if modelless else [a.adapters["analyst"]])
            assert r.wall_s is not None and r.wall_s > 0
            assert r.question.answerable == bool(r.gold_chunks)


def test_cli_writes_every_report_file(real_run: SimpleNamespace) -> None:
    res = real_run.report_cli
    assert res.exit_code == 0, res.output
    assert "0 to run" in res.stderr
    out = real_run.out
    report = json.loads((out / "report.json").read_text())
    assert report["configs"] == ["base", "adapters"] and report["meta"]["questions"] == SAMPLE
    assert report["meta"]["answerable"] == SAMPLE - 1
    for cfg in report["configs"]:
        r = report["results"][cfg]
        assert r["retrieval.span_recall@5"]["n"] == SAMPLE - 1
        assert r["answer.refusal_accuracy"]["n"] == 1
        assert r["cost.latency_s"]["n"] == SAMPLE and r["cost.latency_s"]["mean"] > 0
        low, mean, high = (r["retrieval.ndcg@5"][k] for k in ("low", "mean", "high"))
        assert low <= mean <= high
    diff = report["differences"]["adapters"]["retrieval.span_recall@5"]
    assert diff["n"] == SAMPLE - 1 and diff["low"] <= diff["mean"] <= diff["high"]
    used = report["configurations"]["adapters"]["adapters_used"]
    assert used["analyst"] == {real_run.adapter: SAMPLE} and used["query_writer"] == {"base": SAMPLE}
    [adapter] = report["adapters"]
    assert adapter["ref"] == real_run.adapter and adapter["gates_passed"] is True
    assert adapter["forgetting_pct"] == pytest.approx(2.0)
    md = (out / "report.md").read_text()
    assert "## Headline" in md and f"| adapters | base ({SAMPLE}) | {real_run.adapter} ({SAMPLE}) |" in md
    assert "## Worst questions" in md and "| analyse | analyst |" in md
    for name in ("metrics", "recall_at_k", "per_category", "latency", "differences"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    assert "contracts: 4 questions" in res.stdout


def test_real_report_opens_in_headless_chromium(real_run: SimpleNamespace, tmp_path: Path) -> None:
    require_chromium()
    loaded, total = chromium_image_check(real_run.out / "report.html", tmp_path)
    assert total >= 5 and loaded == total


def test_gate_exit_code_names_the_metric_that_dropped(real_run: SimpleNamespace) -> None:
    report: dict[str, Any] = json.loads((real_run.out / "report.json").read_text())
    same = cli("eval", *real_run.args, "--baseline", str(real_run.out / "report.json"))
    assert same.exit_code == 0, same.output
    assert "gate passed" in same.stdout
    better = json.loads(json.dumps(report))
    better["results"]["adapters"]["retrieval.span_recall@5"]["mean"] = (
        report["results"]["adapters"]["retrieval.span_recall@5"]["mean"] + 0.5
    )
    baseline = real_run.root / "better-baseline.json"
    baseline.write_text(json.dumps(better))
    worse = cli("eval", *real_run.args, "--baseline", str(baseline))
    assert worse.exit_code == 1, worse.output
    assert "gate: adapters retrieval.span_recall@5 fell" in " ".join(worse.stderr.split())
    assert json.loads((real_run.out / "report.json").read_text())["gate"]["passed"] is False
