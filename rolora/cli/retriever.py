"""CLI for the tuned retriever: ``rolora retriever tune|list|show|promote``.

Heavy imports (torch, sentence-transformers) stay inside ``tune``, so ``rolora --help`` remains light.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from rolora.cli.common import ConfigOpt, DomainOpt, command_group, console, domain_of, load

retriever_app = command_group(
    "Tune the embedder on a domain's annotated questions; list, inspect and promote tuned embedders "
    "(use one with models.embedder: tuned:NAME, then `rolora ingest PATH --domain D --rebuild`)."
)


@retriever_app.command("tune")
def tune(
    domain: DomainOpt = None,
    name: Annotated[str | None, typer.Option(help="registry name (default: DOMAIN-retriever)")] = None,
    qa: Annotated[Path | None, typer.Option(help="annotated questions (default: domains.D.qa)")] = None,
    max_steps: Annotated[int, typer.Option(min=1, help="optimizer steps (the LR schedule spans them)")] = 300,
    batch_size: Annotated[int, typer.Option(min=2, help="pairs per step (in-batch negatives)")] = 16,
    learning_rate: Annotated[float, typer.Option("--lr", min=0.0)] = 2e-5,
    negatives: Annotated[
        str, typer.Option(help="hard negative per pair from the same contract: bm25, random or none")
    ] = "bm25",
    max_pairs: Annotated[int | None, typer.Option(min=1, help="training pairs at most (a seeded sample)")] = None,
    eval_steps: Annotated[int, typer.Option(min=1, help="validation recall (and a checkpoint) every N steps")] = 50,
    val_contracts: Annotated[int, typer.Option(min=1, help="validation contracts searched to pick a checkpoint")] = 6,
    gate_contracts: Annotated[
        int | None, typer.Option(min=1, help="test contracts the gate searches (default: all; a seeded sample)")
    ] = None,
    time_budget: Annotated[
        float | None, typer.Option(min=0.1, help="minutes of training at most (then a checkpoint: --resume goes on)")
    ] = None,
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint of this run")] = False,
    promote: Annotated[bool, typer.Option(help="promote the result when its gate passes")] = False,
    seed: Annotated[int, typer.Option(help="the contract split's and the samples' seed")] = 0,
    config: ConfigOpt = None,
) -> None:
    """Fine-tune the configured embedder on the domain's annotated questions (train split), pick the checkpoint on
    validation, gate it against the base on the test split, and register it as a candidate."""
    from rolora.adapters.embedder_tuning import TuneConfig, tune_retriever
    from rolora.errors import UserError

    if negatives not in ("bm25", "random", "none"):
        raise UserError(f"--negatives {negatives!r}: use bm25, random or none")
    cfg = load(config)
    domain = domain_of(cfg, domain)
    tc = TuneConfig(
        max_steps=max_steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        negatives=negatives,  # type: ignore[arg-type]
        max_pairs=max_pairs,
        eval_steps=eval_steps,
        val_contracts=val_contracts,
        gate_contracts=gate_contracts,
        time_budget_s=time_budget * 60 if time_budget else None,
        seed=seed,
    )
    run = tune_retriever(
        cfg, domain, tc, name=name, qa=qa, resume=resume, promote=promote, progress=sys.stderr.isatty()
    )
    g = run.gates
    console.print(
        f"{run.record.ref}: {run.data_card['counts']['train_pairs']} pairs, {run.metrics['steps']} steps in "
        f"{run.metrics['train_seconds']:.0f} s (total {run.seconds:.0f} s); validation span@5 "
        f"{run.metrics['validation_base']:.3f} -> {run.metrics['validation_best']:.3f}"
    )
    console.print(
        f"gate ({g['questions']} test questions, {g['contracts']} contracts): {g['gates'][0]['summary']}, "
        f"difference {g['ci']['difference']['mean']:+.3f} [{g['ci']['difference']['low']:+.3f}, "
        f"{g['ci']['difference']['high']:+.3f}] -> {'passed' if g['passed'] else 'FAILED'}"
    )
    if run.promoted:
        console.print(f"promoted {run.record.ref}; use it with models.embedder: tuned:{run.record.name}")
    else:
        console.print(f"candidate {run.record.ref}; promote it with `rolora retriever promote {run.record.name}@N`")


@retriever_app.command("list")
def list_(config: ConfigOpt = None) -> None:
    """Every registered tuned embedder with its stage and test recall."""
    from rich.table import Table

    from rolora.embedder_registry import EmbedderRegistry

    reg = EmbedderRegistry.from_home(load(config).home_dir)
    table = Table("ref", "stage", "domain", "base", "test span@5 base -> tuned", "gate")
    for r in reg.list():
        g = r.gates.get("gates", [{}])[0] if r.gates else {}
        recall = f"{g['base']:.3f} -> {g['tuned']:.3f}" if "base" in g else "–"
        verdict = "–" if not r.gates else ("passed" if not r.failed_gates else "failed")
        table.add_row(r.ref, r.stage, r.domain, r.base_embedder, recall, verdict)
    console.print(table)


@retriever_app.command("show")
def show(
    ref: Annotated[str, typer.Argument(help="NAME (latest promoted) or NAME@N")],
    config: ConfigOpt = None,
) -> None:
    """Print the manifest of a tuned embedder (data card, training config, metrics, gates, stages) as JSON."""
    from rolora.embedder_registry import EmbedderRegistry

    rec = EmbedderRegistry.from_home(load(config).home_dir).latest(ref)
    typer.echo(json.dumps(rec.model_dump(mode="json"), indent=1))


@retriever_app.command("promote")
def promote(
    ref: Annotated[str, typer.Argument(help="NAME@N (a bare NAME: its highest version)")],
    force: Annotated[bool, typer.Option(help="promote even when its gate failed")] = False,
    config: ConfigOpt = None,
) -> None:
    """Promote a tuned embedder (retiring the one promoted before); refused when its gate failed unless --force."""
    from rolora.embedder_registry import EmbedderRegistry

    rec = EmbedderRegistry.from_home(load(config).home_dir).promote(ref, force=force)
    console.print(
        f"promoted {rec.ref}; set models.embedder: tuned:{rec.name} and re-embed with "
        "`rolora ingest PATH --domain D --rebuild`"
    )
