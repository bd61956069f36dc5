"""``rolora eval SUITE``: run an eval suite, write the reports, and gate against a baseline.

Heavy imports stay inside the command so ``rolora --help`` remains light.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rolora.cli.common import console, err_console

__all__ = ["eval_command"]


def eval_command(
    suite: Annotated[Path, typer.Argument(help="suite YAML, e.g. evals/suites/contracts.yaml")],
    configs: Annotated[
        str | None, typer.Option(help="comma-separated configurations (default: the suite's default_configs)")
    ] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N questions")] = None,
    sample: Annotated[int | None, typer.Option(min=1, help="N questions drawn with the suite's seed")] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(help="report.json of an earlier run: exit 1 when a gated metric drops beyond its tolerance"),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="output folder (default: $ROLORA_HOME/evals/SUITE-NAME)")] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="questions in flight (default: the suite's)")] = None,
    fresh: Annotated[bool, typer.Option(help="recompute every answer instead of resuming")] = False,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="rolora.yaml (default: the suite's)")] = None,
) -> None:
    """Run SUITE's configurations over its questions (resuming a stopped run), write report.json/.md/.html.

    With --baseline, exit 1 when a gated metric fell beyond the suite's tolerance, naming each one.
    """
    from rich.table import Table

    from rolora.evals.gate import check_gate, load_baseline
    from rolora.evals.report import build_report, headline_table, write_reports
    from rolora.evals.runner import run_suite
    from rolora.evals.suite import load_suite

    spec = load_suite(suite)
    base = load_baseline(baseline) if baseline is not None else None
    cfg = spec.resolve_config(config)
    folder = out or cfg.home_dir / "evals" / spec.name
    names = [c.strip() for c in configs.split(",") if c.strip()] if configs else None
    try:
        run = run_suite(
            spec,
            out=folder,
            config=cfg,
            configs=names,
            limit=limit,
            sample=sample,
            concurrency=concurrency,
            fresh=fresh,
            progress=sys.stderr.isatty(),
            console=err_console,
        )
    except KeyboardInterrupt:
        err_console.print(f"interrupted: finished answers are kept in {folder / 'results.sqlite'}; rerun to resume")
        raise typer.Exit(130) from None
    report = build_report(run)
    outcome = check_gate(report, base, spec.gate.metrics, spec.gate.configs) if base is not None else None
    if outcome is not None:
        report["gate"] = outcome.to_dict()
    files = write_reports(report, folder)

    header, rows = headline_table(report)
    table = Table(*header, title=f"{spec.name}: {report['meta']['questions']} questions, mean [95 % CI]")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    for name, c in report["configurations"].items():
        used = ", ".join(f"{r}: {'/'.join(sorted(a))}" for r, a in c["adapters_used"].items())
        console.print(f"{name}: {used or 'no answers'}" + (f" ({c['errors']} errors)" if c["errors"] else ""))
    console.print(f"reports: {files.html}, {files.markdown.name}, {files.json.name}")
    if outcome is not None:
        for note in outcome.notes:
            err_console.print(f"gate note: {note}")
        if not outcome.passed:
            for f in outcome.failures:
                err_console.print(f"[bold red]gate:[/] {f.message}", highlight=False, soft_wrap=True)
            raise typer.Exit(1)
        console.print(f"gate passed: {len(outcome.checked)} metrics within tolerance of {outcome.baseline}")
