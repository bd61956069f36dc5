"""CLI for per-role adapters: ``rolora train``, ``rolora adapters …``, ``rolora experiment lora-vs-full``.

Heavy imports stay inside the commands so ``rolora --help`` remains light.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from rolora.config import Config

adapters_app = typer.Typer(no_args_is_help=True, help="List, inspect, promote, roll back and export adapters.")
experiment_app = typer.Typer(no_args_is_help=True, help="Measured experiments (LoRA vs full fine-tuning).")
console = Console()

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="rolora.yaml")]


class Role(StrEnum):
    analyst = "analyst"
    critic = "critic"
    query_writer = "query_writer"


def _config(path: Path | None) -> Config:
    from rolora.config import load_config

    return load_config(path)


def _registry(cfg: Config) -> Any:
    from rolora.adapters.registry import Registry
    from rolora.models import resolve_generator

    return Registry.from_config(cfg, resolve_generator(cfg.models.generator, cfg.home_dir))


def train_command(
    role: Annotated[Role, typer.Option(help="which role's adapter to train")],
    domain: Annotated[str, typer.Option("--domain", "-d")] = "contracts",
    full: Annotated[bool, typer.Option(help="full fine-tuning instead of LoRA (for comparison)")] = False,
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint of this role's run")] = False,
    qa: Annotated[Path | None, typer.Option(help="annotated questions (default: domains.D.qa)")] = None,
    max_steps: Annotated[int, typer.Option(help="> 0 caps the steps (overrides epochs)")] = -1,
    epochs: Annotated[float, typer.Option()] = 2.0,
    rank: Annotated[int, typer.Option("--rank", "-r")] = 16,
    limit: Annotated[int | None, typer.Option(help="max examples per split (quick runs)")] = None,
    eval_limit: Annotated[int, typer.Option(help="test/validation examples used by the gates")] = 40,
    config: ConfigOpt = None,
) -> None:
    """Build the role's data from the domain, train an adapter, run the gates, register a candidate."""
    from rich.table import Table

    from rolora.adapters.pipeline import train_role
    from rolora.adapters.train import TrainConfig

    cfg = _config(config)
    tc = TrainConfig(full=full, max_steps=max_steps, epochs=epochs, r=rank, alpha=2 * rank)
    run = train_role(cfg, domain, role.value, train_config=tc, resume=resume, qa=qa, limit=limit, eval_limit=eval_limit)
    rec, gates = run.record, run.gates
    console.print(f"registered [bold]{rec.ref}[/] ({rec.kind}, stage {rec.stage}) at {rec.path}")
    console.print(
        f"data: {run.data_card.counts}; loss {run.train.train_loss_first:.3f} -> {run.train.train_loss_last:.3f}"
    )
    table = Table("gate", "passed", "figures", title="quality gates")
    for name, g in gates.to_dict()["gates"].items():
        figures = {k: v for k, v in g.items() if k not in ("passed", "per_layer", "name")}
        table.add_row(name, "yes" if g.get("passed") else "[red]no[/]", json.dumps(figures)[:160])
    console.print(table)
    console.print(
        "promote with `rolora adapters promote " + rec.ref + "`" if gates.passed else "gates failed: not promotable"
    )


@adapters_app.command("list")
def adapters_list(
    domain: Annotated[str | None, typer.Option("--domain", "-d")] = None,
    role: Annotated[str | None, typer.Option()] = None,
    config: ConfigOpt = None,
) -> None:
    """Every registered version with its stage and gate summary."""
    from rich.table import Table

    table = Table("adapter", "kind", "role", "domain", "stage", "gates", "created")
    for rec in _registry(_config(config)).list(domain=domain, role=role):
        failed = rec.failed_gates
        gates = "-" if not rec.gates else ("passed" if not failed else "failed: " + ", ".join(failed))
        table.add_row(rec.ref, rec.kind, rec.role, rec.domain, rec.stage, gates, rec.created)
    console.print(table)


@adapters_app.command("show")
def adapters_show(ref: str, config: ConfigOpt = None) -> None:
    """The manifest of one adapter (``name`` = latest promoted, ``name@N`` = that version)."""
    rec = _registry(_config(config)).show(ref)
    console.print_json(json.dumps({**rec.manifest, "path": str(rec.path)}, default=str))


@adapters_app.command("promote")
def adapters_promote(
    ref: str,
    force: Annotated[bool, typer.Option(help="promote even if a gate failed")] = False,
    config: ConfigOpt = None,
) -> None:
    """Promote a candidate (refused when a gate failed, unless --force)."""
    rec = _registry(_config(config)).promote(ref, force=force)
    console.print(f"promoted {rec.ref}")


@adapters_app.command("rollback")
def adapters_rollback(name: str, config: ConfigOpt = None) -> None:
    """Retire the promoted version of ``name`` and promote the previous one."""
    rec = _registry(_config(config)).rollback(name)
    console.print(f"rolled back: {rec.ref} is promoted")


@adapters_app.command("export")
def adapters_export(
    ref: Annotated[str | None, typer.Argument(help="adapter to merge into a full model")] = None,
    out: Annotated[Path | None, typer.Option(help="folder for the merged model")] = None,
    vllm_domain: Annotated[str | None, typer.Option("--vllm", help="print --lora-modules for this domain")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="with --vllm: the JSON form")] = False,
    config: ConfigOpt = None,
) -> None:
    """Export a merged full model for a single-role deployment, or the vLLM --lora-modules of a domain."""
    from rolora.models import resolve_generator

    cfg = _config(config)
    registry = _registry(cfg)
    if vllm_domain:
        refs = list(registry.role_adapters(cfg, vllm_domain).values())
        if as_json:
            console.print_json(json.dumps(registry.vllm_lora_modules_json(refs)))
        else:
            console.print("--lora-modules " + " ".join(registry.vllm_lora_modules(refs)), soft_wrap=True)
        return
    if ref is None or out is None:
        raise typer.BadParameter("give an adapter and --out DIR, or --vllm DOMAIN")
    folder = registry.export_merged(ref, out, resolve_generator(cfg.models.generator, cfg.home_dir))
    console.print(f"merged model written to {folder}")
