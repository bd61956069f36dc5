"""Reports of a run: ``report.json`` (everything, the gate's baseline), ``report.md`` and one self-contained
``report.html`` (plots embedded as PNG data URIs; no external resource), plus the plots as PNG files.

This module scores the run and builds the report's dict; ``report_tables`` formats its tables and writes the
Markdown, ``report_html`` renders the HTML from a Jinja2 template, ``report_plots`` draws the plots.

Contents: the headline table (mean and bootstrap 95 % interval per configuration), paired differences against the
reference configuration, the adapters each configuration actually used (from the answers), per-category results,
recall@k curves, latency, the critic judge apart from the deterministic metrics, the worst questions with their
traces, and, when present, each adapter's gates (forgetting included), a held-out check of its training contracts
and the LoRA-vs-full experiment.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rolora.fileutil import atomic_write_bytes, atomic_write_text

from .bootstrap import bootstrap_mean, paired_bootstrap
from .gate import REPORT_FORMAT
from .metrics import metric_catalogue, score_questions
from .report_html import render_html
from .report_plots import render_plots
from .report_tables import headline_table, render_markdown

if TYPE_CHECKING:
    from .runner import QuestionResult, RunResult

__all__ = [
    "ReportFiles",
    "build_report",
    "headline_table",
    "render_html",
    "render_markdown",
    "score_run",
    "write_reports",
]


# -- scoring ---------------------------------------------------------------------------------------------------------
def score_run(run: RunResult) -> dict[str, list[dict[str, float | None] | None]]:
    """Per-question metrics of every configuration (``None`` for a question that failed with an error)."""
    ks = run.suite.metrics.k
    out: dict[str, list[dict[str, float | None] | None]] = {}
    for name, results in run.results.items():
        ok = [r for r in results if r.status == "ok" and r.answer is not None]
        rows = score_questions(
            [r.question for r in ok],
            [r.answer for r in ok if r.answer is not None],
            [r.gold_chunks for r in ok],
            ks,
            wall_s=[r.wall_s for r in ok],
            judge=[r.verdict for r in ok],
        )
        by_id = {r.question.id: row for r, row in zip(ok, rows, strict=True)}
        out[name] = [by_id.get(r.question.id) for r in results]
    return out


def _values(rows: Sequence[dict[str, float | None] | None], metric: str) -> list[float | None]:
    return [row.get(metric) if row is not None else None for row in rows]


def _percentile(values: Sequence[float], q: float) -> float | None:
    import numpy as np

    return float(np.percentile(values, q)) if values else None


def _questions_hash(run: RunResult) -> str:
    ids = [q.id for _, q in run.questions]
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


# -- adapters, held-out check, experiments -----------------------------------------------------------------------------
def _adapter_records(run: RunResult, refs: set[str]) -> tuple[list[dict[str, Any]], list[str]]:
    from rolora.adapters.registry import Registry

    registry = Registry.from_config(run.config)
    contracts_by_domain: dict[str, set[str]] = defaultdict(set)
    for ds, q in run.questions:
        contracts_by_domain[ds.domain].add(q.contract)
        contracts_by_domain[ds.domain].update(e.doc_id for e in q.evidence)
    evaluated = set().union(*contracts_by_domain.values()) if contracts_by_domain else set()
    out, notes = [], []
    for ref in sorted(refs):
        try:
            rec = registry.show(ref)
        except Exception as e:
            notes.append(f"{ref}: not readable from the registry ({e})")
            continue
        gates = [
            {"name": g.get("name"), "status": g.get("status"), "summary": g.get("summary"), "figures": g.get("figures")}
            for g in rec.gates.get("gates", [])
            if isinstance(g, dict)
        ]
        forgetting = next(
            (
                g["figures"].get("rise_pct")
                for g in gates
                if g["name"] == "forgetting" and isinstance(g["figures"], dict)
            ),
            None,
        )
        out.append(
            {
                "ref": rec.ref,
                "role": rec.role,
                "domain": rec.domain,
                "kind": rec.kind,
                "stage": rec.stage,
                "gates_passed": not rec.failed_gates if rec.gates else None,
                "gates": gates,
                "forgetting_pct": forgetting,
                "role_metrics": rec.metrics.get("role", {}),
                "held_out": _held_out(run, rec, evaluated),
            }
        )
    return out, notes


def _held_out(run: RunResult, rec: Any, evaluated: set[str]) -> dict[str, Any]:
    """Whether any evaluated contract was in the adapter's training or validation data (from its data card)."""
    card_path = run.config.home_dir / "data" / rec.domain / rec.role / "data_card.json"
    if not card_path.is_file():
        return {"checked": False, "why": f"no data card at {card_path}"}
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        return {"checked": False, "why": f"data card unreadable: {e}"}
    if rec.data_card_hash and card.get("digest") != rec.data_card_hash:
        return {"checked": False, "why": "the data card was rebuilt after this adapter was trained"}
    seen = set(card.get("documents", {}).get("train", [])) | set(card.get("documents", {}).get("validation", []))
    overlap = sorted(seen & evaluated)
    return {"checked": True, "overlap": overlap, "evaluated": len(evaluated), "training_docs": len(seen)}


def _experiments(run: RunResult) -> list[dict[str, Any]]:
    out = []
    root = run.config.home_dir / "experiments"
    for path in sorted(root.glob("lora-vs-full-*/report.json")) if root.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        png = path.parent / "lora_vs_full.png"
        out.append(
            {
                "name": path.parent.name,
                "path": str(path),
                "max_steps": data.get("max_steps"),
                "rows": data.get("rows", {}),
                "plot": str(png) if png.is_file() else None,
            }
        )
    return out


# -- worst questions ---------------------------------------------------------------------------------------------------
def _badness(row: dict[str, float | None] | None, primary: str) -> float:
    if row is None:
        return -1.0  # errors first
    for key in (primary, "answer.refusal_accuracy", "answer.token_f1"):
        v = row.get(key)
        if v is not None:
            return v
    return 1.0


def _trace(result: QuestionResult) -> list[dict[str, Any]]:
    if result.answer is None:
        return []
    steps = []
    for s in result.answer.trace:
        detail = json.dumps(s.detail, ensure_ascii=False, default=str)
        steps.append(
            {
                "node": s.node,
                "role": s.role,
                "adapter": s.adapter,
                "backend": s.backend,
                "iteration": s.iteration,
                "latency_s": round(s.latency_s, 3),
                "tokens_in": s.tokens_in,
                "tokens_out": s.tokens_out,
                "retries": s.retries,
                "detail": detail if len(detail) <= 600 else detail[:600] + "…",
            }
        )
    return steps


def _worst(run: RunResult, scores: dict[str, list[dict[str, float | None] | None]]) -> dict[str, list[dict[str, Any]]]:
    primary = run.suite.metrics.primary
    out: dict[str, list[dict[str, Any]]] = {}
    for name, results in run.results.items():
        ranked = sorted(range(len(results)), key=lambda i: (_badness(scores[name][i], primary), i))
        items = []
        for i in ranked[: run.suite.worst]:
            r, row = results[i], scores[name][i]
            a = r.answer
            gold = {(e.doc_id, e.start, e.end) for e in r.question.evidence}
            items.append(
                {
                    "id": r.question.id,
                    "question": r.question.question,
                    "category": r.question.category,
                    "answerable": r.question.answerable,
                    "gold_answers": r.question.answers,
                    "gold_evidence": [f"{d}[{s}:{e}]" for d, s, e in sorted(gold)],
                    "status": r.status,
                    "error": r.error,
                    "answer": a.answer if a else None,
                    "not_found": a.not_found if a else None,
                    "verdict": a.verdict if a else None,
                    "judge": r.judge,
                    "score": {primary: (row or {}).get(primary)},
                    "citations": [
                        {"citation": c.citation, "quote": c.quote, "verified": c.verified}
                        for c in (a.citations if a else [])
                    ],
                    "passages": [
                        {
                            "citation": p.citation,
                            "score": p.score,
                            "gold": any(p.doc_id == d and p.start < e and s < p.end for d, s, e in gold),
                        }
                        for p in (a.passages if a else [])
                    ],
                    "adapters": a.adapters if a else {},
                    "trace": _trace(r),
                }
            )
        out[name] = items
    return out


# -- the report --------------------------------------------------------------------------------------------------------
def build_report(
    run: RunResult, scores: dict[str, list[dict[str, float | None] | None]] | None = None
) -> dict[str, Any]:
    """Everything the Markdown, HTML and the gate need, as JSON-able data."""
    suite = run.suite
    scores = scores if scores is not None else score_run(run)
    catalogue = metric_catalogue(suite.metrics.k)
    names = suite.metric_names()
    b = suite.bootstrap
    results: dict[str, dict[str, Any]] = {}
    for cfg in run.configs:
        results[cfg] = {m: bootstrap_mean(_values(scores[cfg], m), b.samples, b.seed, b.level).to_dict() for m in names}
    differences: dict[str, dict[str, Any]] = {}
    ref = run.reference
    for cfg in run.configs:
        if cfg == ref:
            continue
        diffs = {}
        for m in names:
            iv = paired_bootstrap(_values(scores[ref], m), _values(scores[cfg], m), b.samples, b.seed, b.level)
            diffs[m] = {**iv.to_dict(), "significant": iv.excludes_zero}
        differences[cfg] = diffs

    categories = sorted({q.category or "(none)" for _, q in run.questions})
    cat_metrics = list(dict.fromkeys([suite.metrics.primary, f"retrieval.span_recall@{max(suite.metrics.k)}"]))
    cat_metrics = [m for m in cat_metrics if m in names]
    per_category: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in cat_metrics}
    for m in cat_metrics:
        for c in categories:
            per_category[m][c] = {}
            for cfg in run.configs:
                vals = [
                    v
                    for (_, q), v in zip(run.questions, _values(scores[cfg], m), strict=True)
                    if (q.category or "(none)") == c and v is not None
                ]
                per_category[m][c][cfg] = {"mean": sum(vals) / len(vals) if vals else None, "n": len(vals)}

    configurations: dict[str, Any] = {}
    used_refs: set[str] = set()
    for cfg in run.configs:
        plan = run.plans[cfg]
        used: dict[str, Counter[str]] = defaultdict(Counter)
        errors = [r for r in run.results[cfg] if r.status != "ok"]
        for r in run.results[cfg]:
            for role, adapter in (r.answer.adapters if r.answer else {}).items():
                used[role][adapter] += 1
                if adapter and adapter != "base":
                    used_refs.add(adapter)
        configurations[cfg] = {
            "description": plan.spec.description,
            "spec": plan.spec.model_dump(mode="json"),
            "adapters_planned": plan.adapters,
            "adapters_used": {role: dict(c) for role, c in sorted(used.items())},
            "notes": plan.notes,
            "errors": len(errors),
            "error_examples": [f"{r.question.id}: {r.error}" for r in errors[:3]],
        }
    used_refs.update(ref for ref in run.judge_adapters.values() if ref)
    adapters, adapter_notes = _adapter_records(run, used_refs)

    latency: dict[str, Any] = {}
    verdicts: dict[str, Any] = {}
    for cfg in run.configs:
        lat = [v for v in _values(scores[cfg], "cost.latency_s") if v is not None]
        latency[cfg] = {
            "p50": _percentile(lat, 50),
            "p90": _percentile(lat, 90),
            "max": max(lat) if lat else None,
            "values": [round(v, 4) for v in lat],
        }
        graph = Counter(r.answer.verdict for r in run.results[cfg] if r.answer is not None)
        judge = Counter(str(r.verdict) for r in run.results[cfg] if r.answer is not None and not r.answer.not_found)
        verdicts[cfg] = {"graph": dict(graph), "judge": dict(judge)}

    per_question = {
        cfg: [
            {
                "id": q.id,
                "category": q.category,
                "answerable": q.answerable,
                "status": r.status,
                **({k: (round(v, 6) if v is not None else None) for k, v in (row or {}).items()}),
            }
            for (_, q), r, row in zip(run.questions, run.results[cfg], scores[cfg], strict=True)
        ]
        for cfg in run.configs
    }
    by_dataset = Counter(ds.name or ds.path.name for ds, _ in run.questions)
    rc = run.config
    return {
        "format": REPORT_FORMAT,
        "suite": {"name": suite.name, "description": suite.description.strip(), "path": str(suite.path)},
        "meta": {
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "questions": len(run.questions),
            "answerable": sum(q.answerable for _, q in run.questions),
            "contracts": len({q.contract for _, q in run.questions}),
            "datasets": dict(by_dataset),
            "domains": sorted({ds.domain for ds, _ in run.questions}),
            "questions_hash": _questions_hash(run),
            "generator": rc.models.generator,
            "embedder": rc.models.embedder,
            "backend": rc.backend.kind,
            "agent": rc.agent.model_dump(
                mode="json",
                include={"k", "max_queries", "max_iterations", "use_critic", "use_query_writer", "analyst_format"},
            ),
            "retrieval_mode": rc.retrieval.mode,
            "concurrency": suite.concurrency,
            "bootstrap": b.model_dump(),
            "computed": run.computed,
            "reused": run.reused,
            "wall_s": round(run.wall_s, 2),
            "judge": {"enabled": suite.judge.enabled, "adapters": run.judge_adapters},
        },
        "configs": run.configs,
        "reference": ref,
        "headline": [m for m in suite.metrics.headline if m in names],
        "ks": suite.metrics.k,
        "metrics": {
            m: {
                "group": catalogue[m].group,
                "higher_is_better": catalogue[m].higher_is_better,
                "applies_to": catalogue[m].applies_to,
                "description": catalogue[m].description,
            }
            for m in names
        },
        "configurations": configurations,
        "results": results,
        "differences": differences,
        "per_category": per_category,
        "latency": latency,
        "verdicts": verdicts,
        "worst": _worst(run, scores),
        "adapters": adapters,
        "adapter_notes": adapter_notes,
        "lora_vs_full": _experiments(run),
        "per_question": per_question,
        "gate": None,
    }


# -- files -----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportFiles:
    json: Path
    markdown: Path
    html: Path
    plots: dict[str, Path]


def write_reports(report: dict[str, Any], out: Path) -> ReportFiles:
    """Write ``report.json``, ``report.md``, ``report.html`` and ``plots/*.png`` under ``out`` (each atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "plots").mkdir(exist_ok=True)
    pngs = render_plots(report)
    plot_paths = {}
    for name, png in pngs.items():
        plot_paths[name] = out / "plots" / f"{name}.png"
        atomic_write_bytes(plot_paths[name], png)
    files = ReportFiles(out / "report.json", out / "report.md", out / "report.html", plot_paths)
    atomic_write_text(files.json, json.dumps(report, indent=1, ensure_ascii=False, default=str) + "\n")
    atomic_write_text(files.markdown, render_markdown(report, {n: f"plots/{n}.png" for n in pngs}))
    atomic_write_text(files.html, render_html(report, pngs))
    return files
