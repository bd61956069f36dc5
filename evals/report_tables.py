"""The report's tables, formatted once for every output (Markdown here, HTML through the Jinja2 template in
``report_html``): numbers, intervals, paired differences, and ``render_markdown``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = [
    "HEADLINE_NOTE",
    "TRACE_HEADER",
    "adapters_used",
    "gates_rows",
    "headline_table",
    "lvf_rows",
    "metric_groups",
    "render_markdown",
    "trace_rows",
]


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


HEADLINE_NOTE = (
    "Mean [95 % bootstrap interval] per configuration; differences paired by question against {ref}, "
    "▲ / ▼ where the interval excludes 0 (better / worse); ↑ / ↓: higher / lower is better."
)


def adapters_used(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
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


def gates_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
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


def lvf_rows(exp: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    rows_by = exp.get("rows", {})
    labels = list(rows_by)
    keys = list(dict.fromkeys(k for r in rows_by.values() for k in r))
    return ["metric", *labels], [[k] + [_num(rows_by[lab].get(k)) for lab in labels] for k in keys]


METRIC_GROUPS = (
    ("retrieval", "Retrieval"),
    ("answer", "Answers"),
    ("grounding", "Grounding"),
    ("judge", "Critic judge (a model's opinion, kept apart from the deterministic metrics)"),
    ("cost", "Cost"),
)
TRACE_HEADER = ["node", "role", "adapter", "iter", "s", "tok in", "tok out", "detail"]


def metric_groups(report: dict[str, Any]) -> list[tuple[str, tuple[list[str], list[list[str]]]]]:
    """(title, table) for each metric group that has metrics, in reading order."""
    tables = [(title, _all_metric_rows(report, group)) for group, title in METRIC_GROUPS]
    return [(title, t) for title, t in tables if t[1]]


def trace_rows(trace: Sequence[dict[str, Any]], detail_chars: int | None = None) -> list[list[str]]:
    """One row per step of a question's trace (``TRACE_HEADER``)."""
    return [
        [
            s["node"],
            s["role"] or "",
            s["adapter"] or "",
            str(s["iteration"]),
            f"{s['latency_s']:.2f}",
            str(s["tokens_in"]),
            str(s["tokens_out"]),
            s["detail"][:detail_chars],
        ]
        for s in trace
    ]


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
    lines += ["## Headline", "", HEADLINE_NOTE.format(ref=report["reference"]), ""]
    h, rows = headline_table(report)
    lines += [*_md_table(h, rows), ""]
    h, rows = adapters_used(report)
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
    for title, (h, rows) in metric_groups(report):
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
                lines += ["", *_md_table(TRACE_HEADER, trace_rows(it["trace"], detail_chars=200))]
            lines.append("")
    if report["adapters"] or report["adapter_notes"]:
        h, rows = gates_rows(report)
        lines += ["## Adapters: gates, forgetting, held-out check", "", *_md_table(h, rows), ""]
        lines += [f"- {n}" for n in report["adapter_notes"]] + [""]
    for exp in report["lora_vs_full"]:
        h, rows = lvf_rows(exp)
        lines += [f"## LoRA vs full fine-tuning: {exp['name']} ({exp['max_steps']} steps)", "", *_md_table(h, rows), ""]
    return "\n".join(lines).rstrip() + "\n"
