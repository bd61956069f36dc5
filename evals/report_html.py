"""The self-contained HTML report: the Jinja2 template ``templates/report.html.j2`` (autoescape on, so every
question, answer and passage is escaped), fed with the tables ``report_tables`` formats for the Markdown report too;
plots are embedded as PNG data URIs, so the page loads nothing from elsewhere."""

from __future__ import annotations

import base64
import functools
from pathlib import Path
from typing import Any

from .report_tables import (
    HEADLINE_NOTE,
    TRACE_HEADER,
    adapters_used,
    gates_rows,
    headline_table,
    lvf_rows,
    metric_groups,
    trace_rows,
)

__all__ = ["render_html"]

TEMPLATE = "report.html.j2"
PLOT_TITLES = {
    "metrics": "Metrics per configuration",
    "differences": "Paired differences",
    "recall_at_k": "Recall@k",
    "per_category": "Per category",
    "latency": "Latency",
}


@functools.cache
def _environment() -> Any:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(report: dict[str, Any], plots: dict[str, bytes]) -> str:
    """One self-contained HTML page (no external resources); plots embedded as PNG data URIs."""
    n_configs = len(report["configs"])

    def headline_mark(i: int, cell: str) -> str:  # the paired-difference columns: better / worse
        if i <= n_configs:
            return ""
        return "better" if cell.endswith("▲") else "worse" if cell.endswith("▼") else ""

    lora_vs_full = []
    for exp in report["lora_vs_full"]:
        plot = Path(exp["plot"]) if exp.get("plot") else None
        uri = _data_uri(plot.read_bytes()) if plot is not None and plot.is_file() else None
        lora_vs_full.append(
            {"name": exp["name"], "max_steps": exp["max_steps"], "table": lvf_rows(exp), "plot_uri": uri}
        )
    return str(
        _environment()
        .get_template(TEMPLATE)
        .render(
            report=report,
            headline_note=HEADLINE_NOTE.format(ref=report["reference"]),
            headline=headline_table(report),
            headline_mark=headline_mark,
            adapters_used=adapters_used(report),
            plots={name: _data_uri(png) for name, png in plots.items()},
            plot_titles=PLOT_TITLES,
            metric_groups=metric_groups(report),
            trace_header=TRACE_HEADER,
            trace_rows=trace_rows,
            gates=gates_rows(report),
            lora_vs_full=lora_vs_full,
        )
    )
