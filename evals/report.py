"""Reports of a run: ``report.json`` (everything, the gate's baseline), ``report.md`` and one self-contained
``report.html`` (plots embedded as PNG data URIs; no external resource), plus the plots as PNG files.

Contents: the headline table (mean and bootstrap 95 % interval per configuration), paired differences against the
reference configuration, the adapters each configuration actually used (from the answers), per-category results,
recall@k curves, latency, the critic judge apart from the deterministic metrics, the worst questions with their
traces, and, when present, each adapter's gates (forgetting included), a held-out check of its training contracts
and the LoRA-vs-full experiment.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import io
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
            "agent": rc.agent.model_dump(mode="json", include={"k", "max_queries", "max_iterations", "use_critic"}),
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


# -- formatting --------------------------------------------------------------------------------------------------------
def _num(v: Any, metric: str = "") -> str:
    if v is None:
        return "–"
    if not isinstance(v, int | float):
        return str(v)
    digits = 2 if metric.startswith("cost.") else 3
    return f"{v:.{digits}f}"


def _ci(iv: dict[str, Any], metric: str) -> str:
    if iv.get("mean") is None:
        return "–"
    return f"{_num(iv['mean'], metric)} [{_num(iv['low'], metric)}, {_num(iv['high'], metric)}]"


def _diff(iv: dict[str, Any], metric: str, hib: bool) -> str:
    if iv.get("mean") is None:
        return "–"
    mark = ""
    if iv.get("significant"):
        better = (iv["mean"] > 0) == hib
        mark = " ▲" if better else " ▼"
    m, lo, hi = iv["mean"], iv["low"], iv["high"]
    d = 2 if metric.startswith("cost.") else 3
    return f"{m:+.{d}f} [{lo:+.{d}f}, {hi:+.{d}f}]{mark}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return out


def headline_table(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """One row per headline metric: each configuration's mean [95 % CI], then each paired difference."""
    ref = report["reference"]
    others = list(report["differences"])
    header = ["metric", *report["configs"], *[f"{c} − {ref}" for c in others]]
    rows = []
    for m in report["headline"]:
        hib = report["metrics"][m]["higher_is_better"]
        cells = [_ci(report["results"][c][m], m) for c in report["configs"]]
        cells += [_diff(report["differences"][c][m], m, hib) for c in others]
        rows.append([f"{m} {'↑' if hib else '↓'}", *cells])
    return header, rows


_HEADLINE_NOTE = (
    "Mean [95 % bootstrap interval] per configuration; differences paired by question against {ref}, "
    "▲ / ▼ where the interval excludes 0 (better / worse); ↑ / ↓: higher / lower is better."
)


def _adapters_used(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for cfg in report["configs"]:
        c = report["configurations"][cfg]
        used = c["adapters_used"]
        cells = []
        for role in ("query_writer", "analyst", "critic"):
            counts = used.get(role, {})
            cells.append(", ".join(f"{a} ({n})" for a, n in sorted(counts.items())) or "–")
        rows.append([cfg, *cells, str(c["errors"]), "; ".join(c["notes"]) or ""])
    return ["configuration", "query_writer", "analyst", "critic", "errors", "notes"], rows


def _all_metric_rows(report: dict[str, Any], group: str) -> tuple[list[str], list[list[str]]]:
    metrics = [m for m, i in report["metrics"].items() if i["group"] == group]
    header = ["metric", *report["configs"], "n", "applies to"]
    rows = []
    for m in metrics:
        ns = "/".join(str(report["results"][c][m]["n"]) for c in report["configs"])
        rows.append(
            [m]
            + [_ci(report["results"][c][m], m) for c in report["configs"]]
            + [ns, report["metrics"][m]["applies_to"]]
        )
    return header, rows


def _gates_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for a in report["adapters"]:
        gates = "; ".join(f"{g['name']}: {g['status']}" for g in a["gates"]) or "not recorded"
        ho = a["held_out"]
        if ho.get("checked"):
            held = "ok" if not ho["overlap"] else f"LEAK: {len(ho['overlap'])} evaluated contracts trained on"
        else:
            held = f"not checked ({ho.get('why')})"
        forgetting = f"{a['forgetting_pct']:+.2f}%" if isinstance(a.get("forgetting_pct"), int | float) else "–"
        rows.append([a["ref"], a["role"], a["domain"], a["kind"], a["stage"], gates, forgetting, held])
    return ["adapter", "role", "domain", "kind", "stage", "gates", "forgetting", "held-out contracts"], rows


def _lvf_rows(exp: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows_by = exp.get("rows", {})
    labels = list(rows_by)
    keys = list(dict.fromkeys(k for r in rows_by.values() for k in r))
    return ["metric", *labels], [[k] + [_num(rows_by[lab].get(k)) for lab in labels] for k in keys]


def render_markdown(report: dict[str, Any], plots: dict[str, str] | None = None) -> str:
    """The report as Markdown; ``plots``: name -> relative PNG path."""
    meta = report["meta"]
    lines = [f"# Eval: {report['suite']['name']}", ""]
    if report["suite"]["description"]:
        lines += [report["suite"]["description"], ""]
    lines += [
        f"- {meta['questions']} questions ({meta['answerable']} answerable) on {meta['contracts']} contracts; "
        f"domains {', '.join(meta['domains'])}; datasets {meta['datasets']}",
        f"- generator {meta['generator']}, embedder {meta['embedder']}, backend {meta['backend']}, "
        f"agent {meta['agent']}, retrieval {meta['retrieval_mode']}",
        f"- {meta['computed']} answers computed, {meta['reused']} reused from the results database; "
        f"{meta['wall_s']} s; created {meta['created']}",
        f"- intervals: {int(meta['bootstrap']['level'] * 100)} % bootstrap ({meta['bootstrap']['samples']} samples), "
        f"differences paired by question against `{report['reference']}`",
        "",
    ]
    if report.get("gate"):
        g = report["gate"]
        lines += [
            "## Regression gate",
            "",
            f"Baseline: `{g['baseline']}` — **{'passed' if g['passed'] else 'FAILED'}**",
        ]
        lines += [f"- {f['message']}" for f in g["failures"]] + [f"- note: {n}" for n in g["notes"]] + [""]
    lines += ["## Headline", "", _HEADLINE_NOTE.format(ref=report["reference"]), ""]
    h, rows = headline_table(report)
    lines += [*_md_table(h, rows), ""]
    h, rows = _adapters_used(report)
    lines += [
        "## Adapters used",
        "",
        "From each answer's `adapters` (role -> adapter, count).",
        "",
        *_md_table(h, rows),
    ]
    lines += [""]
    if plots:
        lines += ["## Plots", ""] + [f"![{name}]({path})" for name, path in plots.items()] + [""]
    for group, title in (
        ("retrieval", "Retrieval"),
        ("answer", "Answers"),
        ("grounding", "Grounding"),
        ("judge", "Critic judge (a model's opinion, kept apart from the deterministic metrics)"),
        ("cost", "Cost"),
    ):
        h, rows = _all_metric_rows(report, group)
        if rows:
            lines += [f"## {title}", "", *_md_table(h, rows), ""]
    for cfg, v in report["verdicts"].items():
        lines.append(f"- {cfg}: graph critic verdicts {v['graph']}; judge verdicts {v['judge']}")
    lines.append("")
    for m, cats in report["per_category"].items():
        h = ["category", *report["configs"]]
        rows = [
            [c] + [f"{_num(v[cfg]['mean'], m)} (n={v[cfg]['n']})" for cfg in report["configs"]] for c, v in cats.items()
        ]
        lines += [f"## Per category: {m}", "", *_md_table(h, rows), ""]
    lines += ["## Worst questions", ""]
    for cfg, items in report["worst"].items():
        lines += [f"### {cfg}", ""]
        for it in items:
            lines += [
                f"**{it['id']}** ({it['category']}, {'answerable' if it['answerable'] else 'unanswerable'}): "
                f"{it['question']}",
                "",
                f"- gold: {it['gold_answers']} at {', '.join(it['gold_evidence']) or '–'}",
                f"- answer: {it['answer']!r} (not_found={it['not_found']}, verdict {it['verdict']}, judge "
                f"{(it['judge'] or {}).get('verdict')}) score {it['score']}",
                f"- citations: {', '.join(c['citation'] for c in it['citations']) or '–'}; passages: "
                + ", ".join(p["citation"] + (" (gold)" if p["gold"] else "") for p in it["passages"]),
            ]
            if it["error"]:
                lines.append(f"- error: {it['error']}")
            if it["trace"]:
                th = ["node", "role", "adapter", "iter", "s", "tok in", "tok out", "detail"]
                tr = [
                    [
                        s["node"],
                        s["role"] or "",
                        s["adapter"] or "",
                        str(s["iteration"]),
                        f"{s['latency_s']:.2f}",
                        str(s["tokens_in"]),
                        str(s["tokens_out"]),
                        s["detail"][:200],
                    ]
                    for s in it["trace"]
                ]
                lines += ["", *_md_table(th, tr)]
            lines.append("")
    if report["adapters"] or report["adapter_notes"]:
        h, rows = _gates_rows(report)
        lines += ["## Adapters: gates, forgetting, held-out check", "", *_md_table(h, rows), ""]
        lines += [f"- {n}" for n in report["adapter_notes"]] + [""]
    for exp in report["lora_vs_full"]:
        h, rows = _lvf_rows(exp)
        lines += [f"## LoRA vs full fine-tuning: {exp['name']} ({exp['max_steps']} steps)", "", *_md_table(h, rows), ""]
    return "\n".join(lines).rstrip() + "\n"


# -- plots -----------------------------------------------------------------------------------------------------------
_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]


def _fig_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def render_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """name -> PNG bytes: metric bars with CIs, recall@k curves, per-category breakdown, latency distribution."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfgs = report["configs"]
    out: dict[str, bytes] = {}
    metrics = [m for m in report["headline"] if report["metrics"][m]["group"] != "cost"]
    if metrics:
        cols = min(4, len(metrics))
        nrows = (len(metrics) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(3.2 * cols, 2.8 * nrows), squeeze=False)
        for ax, m in zip(axes.flat, metrics, strict=False):
            ivs = [report["results"][c][m] for c in cfgs]
            means = [iv["mean"] if iv["mean"] is not None else 0.0 for iv in ivs]
            lo = [max(0.0, mu - iv["low"]) if iv["low"] is not None else 0.0 for mu, iv in zip(means, ivs, strict=True)]
            hi = [
                max(0.0, iv["high"] - mu) if iv["high"] is not None else 0.0 for mu, iv in zip(means, ivs, strict=True)
            ]
            ax.bar(range(len(cfgs)), means, yerr=[lo, hi], capsize=4, color=_COLORS[: len(cfgs)] * 4)
            ax.set_xticks(range(len(cfgs)), cfgs, rotation=20, fontsize=8)
            ax.set_title(m, fontsize=9)
            ax.set_ylim(0, 1.05)
            for x, iv in enumerate(ivs):
                if iv["mean"] is None:
                    ax.text(x, 0.05, "no data", ha="center", fontsize=7, color="#888")
        for ax in list(axes.flat)[len(metrics) :]:
            ax.axis("off")
        fig.suptitle("mean per configuration with 95 % bootstrap intervals", fontsize=10)
        out["metrics"] = _fig_png(fig)

    ks = report["ks"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, prefix, title in (
        (axes[0], "retrieval.span_recall", "character-span recall@k"),
        (axes[1], "retrieval.recall", "chunk recall@k"),
    ):
        for i, c in enumerate(cfgs):
            ivs = [report["results"][c].get(f"{prefix}@{k}", {}) for k in ks]
            means = [iv.get("mean") if iv.get("mean") is not None else float("nan") for iv in ivs]
            low = [iv.get("low") if iv.get("low") is not None else float("nan") for iv in ivs]
            high = [iv.get("high") if iv.get("high") is not None else float("nan") for iv in ivs]
            color = _COLORS[i % len(_COLORS)]
            ax.plot(ks, means, marker="o", label=c, color=color)
            ax.fill_between(ks, low, high, alpha=0.15, color=color)
        ax.set_xlabel("k")
        ax.set_ylim(0, 1.05)
        ax.set_xticks(ks)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    out["recall_at_k"] = _fig_png(fig)

    if report["per_category"]:
        pcs = list(report["per_category"].items())
        ncat = max(len(c) for _, c in pcs)
        fig, axes = plt.subplots(1, len(pcs), figsize=(5.5 * len(pcs), 0.35 * ncat + 1.5), squeeze=False)
        for ax, (m, cats) in zip(axes.flat, pcs, strict=True):
            names = list(cats)
            height = 0.8 / max(1, len(cfgs))
            for i, c in enumerate(cfgs):
                vals = [cats[n][c]["mean"] if cats[n][c]["mean"] is not None else 0.0 for n in names]
                ax.barh(
                    [y + i * height for y in range(len(names))],
                    vals,
                    height=height,
                    label=c,
                    color=_COLORS[i % len(_COLORS)],
                )
            ax.set_yticks([y + 0.4 - height / 2 for y in range(len(names))], names, fontsize=7)
            ax.invert_yaxis()
            ax.set_xlim(0, 1.05)
            ax.set_title(m, fontsize=9)
            ax.legend(fontsize=7)
        out["per_category"] = _fig_png(fig)

    fig, ax = plt.subplots(figsize=(6, 3))
    data = [report["latency"][c]["values"] or [0.0] for c in cfgs]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(cfgs) + 1), cfgs)
    ax.set_ylabel("seconds per question")
    ax.set_title("latency distribution", fontsize=10)
    out["latency"] = _fig_png(fig)

    if report["differences"]:
        ms = [m for m in report["headline"] if report["metrics"][m]["group"] != "cost"]
        rows = [(c, m) for c in report["differences"] for m in ms]
        fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.2))
        for y, (c, m) in enumerate(rows):
            iv = report["differences"][c][m]
            if iv["mean"] is None:
                continue
            color = (
                "#55a868"
                if iv["significant"] and (iv["mean"] > 0) == report["metrics"][m]["higher_is_better"]
                else ("#c44e52" if iv["significant"] else "#4c72b0")
            )
            ax.errorbar(
                iv["mean"],
                y,
                xerr=[[iv["mean"] - iv["low"]], [iv["high"] - iv["mean"]]],
                fmt="o",
                color=color,
                capsize=3,
            )
        ax.axvline(0, color="#999", lw=1)
        ax.set_yticks(range(len(rows)), [f"{c}: {m}" for c, m in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"paired differences vs {report['reference']} (95 % CI)", fontsize=10)
        out["differences"] = _fig_png(fig)
    return out


# -- HTML ------------------------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;
padding:0 1rem}table{border-collapse:collapse;margin:.5rem 0 1.2rem;font-size:.85rem}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}th{background:#f4f4f4}
td.num{font-variant-numeric:tabular-nums;white-space:nowrap}.better{color:#1a7f37}.worse{color:#c62828}
.fail{color:#c62828;font-weight:bold}.pass{color:#1a7f37;font-weight:bold}img{max-width:100%;height:auto}
details{margin:.4rem 0 1rem}summary{cursor:pointer}code{background:#f4f4f4;padding:0 .2rem}.muted{color:#666}
"""


def _h(s: Any) -> str:
    return html.escape(str(s))


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = False) -> str:
    head = "".join(f"<th>{_h(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else _h(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    """One self-contained HTML page (no external resources); plots embedded as PNG data URIs."""
    meta = report["meta"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Eval: {_h(report['suite']['name'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Eval: {_h(report['suite']['name'])}</h1>",
    ]
    if report["suite"]["description"]:
        parts.append(f"<p>{_h(report['suite']['description'])}</p>")
    parts.append(
        "<ul>"
        f"<li>{meta['questions']} questions ({meta['answerable']} answerable) on {meta['contracts']} contracts; "
        f"domains {_h(', '.join(meta['domains']))}</li>"
        f"<li>generator <code>{_h(meta['generator'])}</code>, embedder <code>{_h(meta['embedder'])}</code>, "
        f"backend {_h(meta['backend'])}, agent {_h(meta['agent'])}, retrieval {_h(meta['retrieval_mode'])}</li>"
        f"<li>{meta['computed']} answers computed, {meta['reused']} reused; {meta['wall_s']} s; "
        f"{_h(meta['created'])}</li>"
        f"<li>{int(meta['bootstrap']['level'] * 100)} % bootstrap intervals ({meta['bootstrap']['samples']} samples); "
        f"differences paired by question against <b>{_h(report['reference'])}</b></li></ul>"
    )
    if report.get("gate"):
        g = report["gate"]
        status = "<span class='pass'>passed</span>" if g["passed"] else "<span class='fail'>FAILED</span>"
        items = "".join(f"<li class='fail'>{_h(f['message'])}</li>" for f in g["failures"])
        items += "".join(f"<li class='muted'>{_h(n)}</li>" for n in g["notes"])
        parts.append(
            f"<h2>Regression gate</h2><p>baseline <code>{_h(g['baseline'])}</code>: {status}</p><ul>{items}</ul>"
        )
    h, rows = headline_table(report)

    def mark(c: str) -> str:
        return "better" if c.endswith("▲") else "worse" if c.endswith("▼") else ""

    cells = [[_h(c) if i <= len(report["configs"]) else f"<span class='{mark(c)}'>{_h(c)}</span>"
              for i, c in enumerate(row)] for row in rows]  # fmt: skip
    parts += [
        "<h2>Headline</h2>",
        f"<p class='muted'>{_h(_HEADLINE_NOTE.format(ref=report['reference']))}</p>",
        _html_table(h, cells, raw=True),
    ]
    h, rows = _adapters_used(report)
    parts += [
        "<h2>Adapters used</h2><p class='muted'>From each answer's <code>adapters</code>.</p>",
        _html_table(h, rows),
    ]
    titles = {
        "metrics": "Metrics per configuration",
        "differences": "Paired differences",
        "recall_at_k": "Recall@k",
        "per_category": "Per category",
        "latency": "Latency",
    }
    parts.append("<h2>Plots</h2>")
    for name, png in plots.items():
        parts.append(f"<h3>{_h(titles.get(name, name))}</h3><img alt='{_h(name)}' src='{_data_uri(png)}'>")
    for group, title in (
        ("retrieval", "Retrieval"),
        ("answer", "Answers"),
        ("grounding", "Grounding"),
        ("judge", "Critic judge (a model's opinion, apart from the deterministic metrics)"),
        ("cost", "Cost"),
    ):
        h, rows = _all_metric_rows(report, group)
        if rows:
            parts += [f"<h2>{_h(title)}</h2>", _html_table(h, rows)]
    parts.append(
        "<ul>"
        + "".join(
            f"<li>{_h(c)}: graph critic verdicts {_h(v['graph'])}; judge verdicts {_h(v['judge'])}</li>"
            for c, v in report["verdicts"].items()
        )
        + "</ul>"
    )
    parts.append("<h2>Worst questions</h2>")
    for cfg, items in report["worst"].items():
        parts.append(f"<h3>{_h(cfg)}</h3>")
        for it in items:
            th = ["node", "role", "adapter", "iter", "s", "tok in", "tok out", "detail"]
            tr = [
                [
                    s["node"],
                    s["role"] or "",
                    s["adapter"] or "",
                    s["iteration"],
                    f"{s['latency_s']:.2f}",
                    s["tokens_in"],
                    s["tokens_out"],
                    s["detail"],
                ]
                for s in it["trace"]
            ]
            passages = ", ".join(p["citation"] + (" (gold)" if p["gold"] else "") for p in it["passages"])
            parts.append(
                f"<details><summary><b>{_h(it['id'])}</b> {_h(it['category'])} — {_h(it['question'])}</summary>"
                f"<ul><li>gold: {_h(it['gold_answers'])} at {_h(', '.join(it['gold_evidence']) or '–')}</li>"
                f"<li>answer: {_h(it['answer'])} (not_found={_h(it['not_found'])}, verdict {_h(it['verdict'])}, "
                f"judge {_h((it['judge'] or {}).get('verdict'))}) score {_h(it['score'])}</li>"
                f"<li>citations: {_h(', '.join(c['citation'] for c in it['citations']) or '–')}</li>"
                f"<li>passages: {_h(passages)}</li>"
                + (f"<li class='fail'>error: {_h(it['error'])}</li>" if it["error"] else "")
                + "</ul>"
                + (_html_table(th, [[str(c) for c in r] for r in tr]) if tr else "")
                + "</details>"
            )
    if report["adapters"] or report["adapter_notes"]:
        h, rows = _gates_rows(report)
        parts += ["<h2>Adapters: gates, forgetting, held-out check</h2>", _html_table(h, rows)]
        parts += [f"<p class='muted'>{_h(n)}</p>" for n in report["adapter_notes"]]
    for exp in report["lora_vs_full"]:
        h, rows = _lvf_rows(exp)
        parts += [
            f"<h2>LoRA vs full fine-tuning: {_h(exp['name'])} ({_h(exp['max_steps'])} steps)</h2>",
            _html_table(h, rows),
        ]
        if exp.get("plot") and Path(exp["plot"]).is_file():
            parts.append(f"<img alt='lora vs full' src='{_data_uri(Path(exp['plot']).read_bytes())}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


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
