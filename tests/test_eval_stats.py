"""Bootstrap intervals (of a mean, and paired differences) and the regression gate on hand-made reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rolora.errors import UserError
from rolora.evals.bootstrap import bootstrap_mean, paired_bootstrap
from rolora.evals.gate import REPORT_FORMAT, check_gate, load_baseline


def test_bootstrap_mean_by_hand() -> None:
    iv = bootstrap_mean([1.0, None, 1.0, 1.0])
    assert (iv.mean, iv.low, iv.high, iv.n) == (1.0, 1.0, 1.0, 3)  # constant: a degenerate interval, None dropped
    iv = bootstrap_mean([0.0, 1.0] * 50, samples=4000, seed=1)
    # standard error of a mean of 100 fair coin flips = 0.05 -> 95 % interval about 0.5 +- 0.098
    assert iv.mean == 0.5
    assert 0.38 < iv.low < 0.43 and 0.57 < iv.high < 0.62
    assert bootstrap_mean([0.0, 1.0] * 50, samples=4000, seed=1) == iv  # reproducible
    assert bootstrap_mean([]).mean is None and bootstrap_mean([]).fmt() == "–"
    assert bootstrap_mean([0.25]).to_dict() == {"mean": 0.25, "low": 0.25, "high": 0.25, "n": 1, "level": 0.95}


def test_paired_bootstrap_by_hand() -> None:
    a = [0.1, 0.5, 0.9, None, 0.3]
    b = [0.2, 0.6, 1.0, 0.4, None]
    iv = paired_bootstrap(a, b)
    assert iv.n == 3  # only questions both answered
    assert iv.mean == pytest.approx(0.1) and iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1)
    assert iv.excludes_zero
    with pytest.raises(ValueError, match="differ in length"):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_pairing_separates_a_small_consistent_gain_from_question_variance() -> None:
    rng = np.random.default_rng(0)
    difficulty = rng.uniform(0, 1, 60)  # questions vary a lot
    a = list(difficulty)
    b = list(difficulty + 0.03 + rng.normal(0, 0.01, 60))  # every question a little better
    paired = paired_bootstrap(a, b, seed=0)
    assert paired.excludes_zero and paired.low > 0
    # the unpaired intervals of the two means overlap: only pairing shows the gain
    ia, ib = bootstrap_mean(a, seed=0), bootstrap_mean(b, seed=0)
    assert ia.high > ib.low  # type: ignore[operator]
    same = paired_bootstrap(a, a)
    assert same.mean == 0.0 and not same.excludes_zero


def report(results: dict[str, dict[str, float | None]], questions_hash: str = "h") -> dict[str, Any]:
    return {
        "format": REPORT_FORMAT,
        "meta": {"questions_hash": questions_hash},
        "metrics": {
            "answer.token_f1": {"higher_is_better": True},
            "cost.latency_s": {"higher_is_better": False},
            "retrieval.ndcg@5": {"higher_is_better": True},
        },
        "results": {c: {m: {"mean": v} for m, v in ms.items()} for c, ms in results.items()},
    }


def test_gate_fails_on_a_drop_beyond_tolerance_and_names_it() -> None:
    base = report({"adapters": {"answer.token_f1": 0.40, "retrieval.ndcg@5": 0.70}, "base": {"answer.token_f1": 0.3}})
    cur = report({"adapters": {"answer.token_f1": 0.34, "retrieval.ndcg@5": 0.69}, "base": {"answer.token_f1": 0.3}})
    out = check_gate(cur, base, {"answer.token_f1": 0.05, "retrieval.ndcg@5": 0.02})
    assert not out.passed
    [f] = out.failures
    assert (f.config, f.metric) == ("adapters", "answer.token_f1")
    assert f.message == "adapters answer.token_f1 fell 0.4 -> 0.34 (-0.06; tolerance 0.05)"
    assert sorted(out.checked) == ["adapters answer.token_f1", "adapters retrieval.ndcg@5", "base answer.token_f1"]
    assert "base retrieval.ndcg@5: no baseline value; not gated" in out.notes
    assert check_gate(cur, base, {"answer.token_f1": 0.07}).passed


def test_gate_lower_is_better_with_a_relative_tolerance() -> None:
    base = report({"a": {"cost.latency_s": 2.0}})
    assert check_gate(report({"a": {"cost.latency_s": 2.3}}), base, {"cost.latency_s": "20%"}).passed
    out = check_gate(report({"a": {"cost.latency_s": 2.5}}), base, {"cost.latency_s": "20%"})
    assert [f.message for f in out.failures] == ["a cost.latency_s rose 2 -> 2.5 (+0.5; tolerance 20% of baseline)"]
    assert check_gate(report({"a": {"cost.latency_s": 1.0}}), base, {"cost.latency_s": "20%"}).passed  # faster


def test_gate_notes_what_it_cannot_compare_and_fails_a_vanished_metric() -> None:
    base = report({"a": {"answer.token_f1": None}, "b": {"answer.token_f1": 0.5}}, questions_hash="other")
    cur = report({"a": {"answer.token_f1": 0.1}, "b": {"answer.token_f1": None}, "c": {"answer.token_f1": 0.1}})
    out = check_gate(cur, base, {"answer.token_f1": 0.05})
    assert [f.message for f in out.failures] == ["b answer.token_f1 has no value now (baseline 0.5)"]
    assert "the baseline ran on other questions (different suite, --limit or --sample)" in out.notes
    assert "a answer.token_f1: no baseline value; not gated" in out.notes
    assert "c is not in the baseline; not gated" in out.notes
    assert check_gate(cur, base, {}).notes == ["the suite gates no metrics (gate.metrics is empty)"]


def test_load_baseline(tmp_path: Path) -> None:
    good = report({"a": {"answer.token_f1": 0.5}})
    (tmp_path / "report.json").write_text(json.dumps(good))
    assert load_baseline(tmp_path)["results"] == good["results"]  # a folder holding report.json works too
    (tmp_path / "x.json").write_text('{"results": {}}')
    with pytest.raises(UserError, match="not a rolora eval report"):
        load_baseline(tmp_path / "x.json")
    (tmp_path / "y.json").write_text("{")
    with pytest.raises(UserError, match="baseline is not JSON"):
        load_baseline(tmp_path / "y.json")
    with pytest.raises(UserError, match="baseline not found"):
        load_baseline(tmp_path / "missing.json")


def test_paired_bootstrap_agrees_with_scipy() -> None:
    """The hand-written percentile bootstrap (kept: about twice as fast) gives scipy.stats.bootstrap's interval."""
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a = rng.random(96).round(2)
    b = np.clip(a + rng.normal(0.05, 0.2, 96), 0, 1)
    ours = paired_bootstrap(list(a), list(b), samples=4000, seed=0)
    ref = stats.bootstrap(
        (b - a,), np.mean, n_resamples=4000, confidence_level=0.95, method="percentile", random_state=0
    ).confidence_interval
    assert ours.low == pytest.approx(ref.low, abs=0.005) and ours.high == pytest.approx(ref.high, abs=0.005)
