"""The regression gate: compare a report with a baseline report, metric by metric, within the suite's tolerances.

``rolora eval SUITE --baseline previous/report.json`` exits 1 when a gated metric of a configuration present in both
reports fell by more than its tolerance (rose, for lower-is-better metrics such as latency), naming each one:

    gate: adapters answer.token_f1 fell 0.412 -> 0.350 (-0.062; tolerance 0.050)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rolora.errors import UserError

from .suite import parse_tolerance

__all__ = ["REPORT_FORMAT", "GateFailure", "GateOutcome", "check_gate", "load_baseline"]

REPORT_FORMAT = "rolora-eval/1"


@dataclass(frozen=True)
class GateFailure:
    config: str
    metric: str
    baseline: float | None
    current: float | None
    tolerance: float
    relative: bool
    higher_is_better: bool

    @property
    def message(self) -> str:
        if self.current is None:
            return f"{self.config} {self.metric} has no value now (baseline {self.baseline:.4g})"
        base = self.baseline if self.baseline is not None else float("nan")
        delta = self.current - base
        verb = "fell" if self.higher_is_better else "rose"
        tol = f"{self.tolerance * 100:.4g}% of baseline" if self.relative else f"{self.tolerance:.4g}"
        return f"{self.config} {self.metric} {verb} {base:.4g} -> {self.current:.4g} ({delta:+.4g}; tolerance {tol})"


@dataclass
class GateOutcome:
    baseline: str
    failures: list[GateFailure] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # "config metric" pairs compared
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline": self.baseline,
            "passed": self.passed,
            "failures": [{**asdict(f), "message": f.message} for f in self.failures],
            "checked": self.checked,
            "notes": self.notes,
        }


def load_baseline(path: Path) -> dict[str, Any]:
    """A previous ``report.json`` (or the folder holding one); a one-line error when it is not a report."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise UserError(f"{path}: baseline not found; pass the report.json of an earlier `rolora eval` run")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: baseline is not JSON ({e.msg} at line {e.lineno}); pass a report.json") from e
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT or "results" not in data:
        raise UserError(f"{path}: not a rolora eval report (format {REPORT_FORMAT}); pass a report.json")
    data["_path"] = str(path)
    return data


def _mean(report: Mapping[str, Any], config: str, metric: str) -> float | None:
    v = report.get("results", {}).get(config, {}).get(metric, {}).get("mean")
    return float(v) if isinstance(v, int | float) else None


def check_gate(
    report: Mapping[str, Any],
    baseline: Mapping[str, Any],
    tolerances: Mapping[str, float | str],
    configs: list[str] | None = None,
) -> GateOutcome:
    """Every gated (configuration, metric) of ``report`` against ``baseline``; see the module docstring."""
    out = GateOutcome(str(baseline.get("_path", "baseline")))
    if not tolerances:
        out.notes.append("the suite gates no metrics (gate.metrics is empty)")
        return out
    if baseline.get("meta", {}).get("questions_hash") != report.get("meta", {}).get("questions_hash"):
        out.notes.append("the baseline ran on other questions (different suite, --limit or --sample)")
    current_cfgs = list(report.get("results", {}))
    base_cfgs = list(baseline.get("results", {}))
    wanted = configs or current_cfgs
    info = report.get("metrics", {})
    for cfg in wanted:
        if cfg not in current_cfgs:
            if configs:
                out.notes.append(f"gated configuration {cfg} was not run")
            continue
        if cfg not in base_cfgs:
            out.notes.append(f"{cfg} is not in the baseline; not gated")
            continue
        for metric, tol_spec in tolerances.items():
            tol, relative = parse_tolerance(tol_spec)
            hib = bool(info.get(metric, {}).get("higher_is_better", True))
            base, cur = _mean(baseline, cfg, metric), _mean(report, cfg, metric)
            if base is None:
                out.notes.append(f"{cfg} {metric}: no baseline value; not gated")
                continue
            out.checked.append(f"{cfg} {metric}")
            if cur is None:
                out.failures.append(GateFailure(cfg, metric, base, None, tol, relative, hib))
                continue
            worse = (base - cur) if hib else (cur - base)
            allowed = tol * abs(base) if relative else tol
            if worse > allowed + 1e-12:
                out.failures.append(GateFailure(cfg, metric, base, cur, tol, relative, hib))
    return out
