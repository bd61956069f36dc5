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

from rolora.cli.common import ConfigOpt, DomainOpt, command_group, domain_of, load

if TYPE_CHECKING:
    from rolora.config import Config

adapters_app = command_group("List, inspect, promote, roll back and export adapters.")
experiment_app = command_group("Measured experiments (LoRA vs full fine-tuning).")
console = Console()

EvalLimitOpt = Annotated[
    int | None, typer.Option(min=1, help="test/validation rows the gates read (default: gates.eval_limit)")
]


class Role(StrEnum):
    analyst = "analyst"
    critic = "critic"
    query_writer = "query_writer"


class AnalystFormat(StrEnum):  # rolora.roles.formats.ANALYST_FORMATS
    quote = "quote"
    sentence = "sentence"


def _registry(cfg: Config) -> Any:
    from rolora.adapters.registry import Registry
    from rolora.models import resolve_generator

    return Registry.from_config(cfg, resolve_generator(cfg.models.generator, cfg.home_dir))


def train_command(
    role: Annotated[Role, typer.Option(help="which role's adapter to train")],
    domain: DomainOpt = None,
    full: Annotated[bool, typer.Option(help="full fine-tuning instead of LoRA (for comparison)")] = False,
    resume: Annotated[bool, typer.Option(help="continue from the last checkpoint of this role's run")] = False,
    qa: Annotated[Path | None, typer.Option(help="annotated questions (default: domains.D.qa)")] = None,
    max_steps: Annotated[int, typer.Option(help="optimizer steps; <= 0 trains --epochs epochs")] = 30,
    epochs: Annotated[float, typer.Option()] = 2.0,
    rank: Annotated[int, typer.Option("--rank", "-r")] = 16,
    grad_accum: Annotated[int, typer.Option(help="examples per optimizer step (batch 1)")] = 2,
    learning_rate: Annotated[float | None, typer.Option("--lr", help="default 1e-3 (LoRA), 2e-5 (full)")] = None,
    limit: Annotated[int | None, typer.Option(help="max examples per split (quick runs)")] = None,
    time_budget: Annotated[
        float | None, typer.Option(min=0.1, help="minutes of training at most (then a checkpoint: --resume goes on)")
    ] = None,
    stop_after: Annotated[
        int | None, typer.Option(min=1, help="stop at this step; the schedule still spans --epochs/--max-steps")
    ] = None,
    eval_limit: EvalLimitOpt = None,
    eval_steps: Annotated[int, typer.Option(min=1, help="validation loss (and a checkpoint) every N steps")] = 20,
    eval_rows: Annotated[
        int | None, typer.Option(min=1, help="validation rows the validation loss reads (default: all)")
    ] = None,
    role_eval_rows: Annotated[
        int,
        typer.Option(
            min=0,
            help="validation rows the role metric reads at each evaluation: it picks the best checkpoint, stops early "
            "and draws the learning curve (0: the validation loss does)",
        ),
    ] = 24,
    role_eval_probe_texts: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="general-prose texts scored with the role metric to watch forgetting: a checkpoint past the "
            "forgetting gate is chosen only when all are (default: the gate's whole probe set; 0: the role metric "
            "alone)",
        ),
    ] = None,
    oracle_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="analyst (RAFT): share of contexts holding the gold clause")
    ] = 0.8,
    refusal_share: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="analyst: most of the training mix that is the refusal target")
    ] = 0.25,
    distractors: Annotated[
        int, typer.Option(min=0, max=10, help="analyst/critic: passages beside the gold one (fewer: faster)")
    ] = 3,
    generated: Annotated[
        int, typer.Option(min=0, help="analyst/critic: questions generated from each contract's text (0: none)")
    ] = 40,
    analyst_format: Annotated[
        AnalystFormat,
        typer.Option("--format", help="analyst: cite by copying a sentence (quote) or by its number (sentence)"),
    ] = AnalystFormat.quote,
    bf16: Annotated[
        bool,
        typer.Option(
            "--bf16",
            help="matmuls under bfloat16 autocast: on CPUs with AMX a raw LoRA step 0.61x, a run through TRL 0.88x "
            "the fp32 time (bench/training.py); slower without AMX",
        ),
    ] = False,
    config: ConfigOpt = None,
) -> None:
    """Build the role's data from the domain, train an adapter, run the gates, register a candidate."""

    from rolora.adapters.pipeline import train_role
    from rolora.adapters.role_eval import ROLE_METRIC
    from rolora.adapters.train import TrainConfig

    cfg = load(config)
    domain = domain_of(cfg, domain)
    tc = TrainConfig(
        full=full,
        max_steps=max_steps,
        epochs=epochs,
        r=rank,
        alpha=2 * rank,
        grad_accum=grad_accum,
        learning_rate=learning_rate,
        time_budget_s=time_budget * 60 if time_budget else None,
        eval_steps=eval_steps,
        max_eval_examples=eval_rows,
        stop_after_steps=stop_after,
        role_eval_rows=role_eval_rows,
        role_eval_probe_texts=role_eval_probe_texts,
        bf16=bf16,
    )
    run = train_role(
        cfg,
        domain,
        role.value,
        train_config=tc,
        resume=resume,
        qa=qa,
        limit=limit,
        eval_limit=eval_limit,
        oracle_rate=oracle_rate,
        max_refusal_share=refusal_share,
        distractors=distractors,
        generated_per_document=generated,
        analyst_format=analyst_format.value,
    )
    rec, gates = run.record, run.gates
    console.print(f"registered [bold]{rec.ref}[/] ({rec.kind}, stage {rec.stage}) at {rec.path}")
    console.print(
        f"data: {run.data_card.counts}; loss {run.train.train_loss_first:.3f} -> {run.train.train_loss_last:.3f}"
    )
    if run.train.learning_curve:
        curve = ", ".join(f"{p['minutes']:.1f} min {p[ROLE_METRIC[role.value]]:.3f}" for p in run.train.learning_curve)
        console.print(
            f"validation {ROLE_METRIC[role.value]} while training: {curve} (learning_curve.png in {rec.path})"
        )
    _print_gates(gates, "quality gates")
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
    for rec in _registry(load(config)).list(domain=domain, role=role):
        failed = rec.failed_gates
        gates = "-" if not rec.gates else ("passed" if not failed else "failed: " + ", ".join(failed))
        table.add_row(rec.ref, rec.kind, rec.role, rec.domain, rec.stage, gates, rec.created)
    console.print(table)


@adapters_app.command("show")
def adapters_show(ref: str, config: ConfigOpt = None) -> None:
    """The manifest of one adapter (``name`` = latest promoted, ``name@N`` = that version)."""
    rec = _registry(load(config)).show(ref)
    console.print_json(json.dumps({**rec.manifest(), "path": str(rec.path)}, default=str))


def _print_gates(report: Any, title: str) -> None:
    from rich.table import Table

    table = Table("gate", "status", "figures", title=title)
    for g in report.gates:
        table.add_row(g.name, g.status if g.passed else f"[red]{g.status}[/]", g.summary)
    console.print(table)


@adapters_app.command("gate")
def adapters_gate(
    ref: Annotated[str, typer.Argument(help="name@version")],
    eval_limit: EvalLimitOpt = None,
    probe_limit: Annotated[int | None, typer.Option(help="probe paragraphs for the forgetting gate (all)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the role metric and the quality gates again on a registered adapter, on the data it was trained with."""

    from rolora.adapters.pipeline import regate

    rec, report = regate(load(config), ref, eval_limit=eval_limit, probe_limit=probe_limit)
    _print_gates(report, f"quality gates of {rec.ref} (stage {rec.stage})")
    console.print("passed" if report.passed else f"failed: {', '.join(rec.failed_gates)}")


@adapters_app.command("promote")
def adapters_promote(
    ref: str,
    force: Annotated[bool, typer.Option(help="promote even if a gate failed")] = False,
    config: ConfigOpt = None,
) -> None:
    """Promote a candidate (refused when a gate failed, unless --force)."""
    rec = _registry(load(config)).promote(ref, force=force)
    console.print(f"promoted {rec.ref}")


@adapters_app.command("rollback")
def adapters_rollback(name: str, config: ConfigOpt = None) -> None:
    """Retire the promoted version of ``name`` and promote the previous one."""
    rec = _registry(load(config)).rollback(name)
    console.print(f"rolled back: {rec.ref} is promoted")


@adapters_app.command("pack")
def adapters_pack(
    refs: Annotated[list[str], typer.Argument(help="adapters to pack (a bare name: its latest version)")],
    out: Annotated[Path, typer.Option(help="folder that receives one sub-folder per adapter")],
    config: ConfigOpt = None,
) -> None:
    """Pack registered adapters for shipping: bf16 weights, manifest, data card, gate report."""
    from rolora.adapters.shipped import pack_adapter

    cfg = load(config)
    registry = _registry(cfg)
    for ref in refs:
        folder = pack_adapter(registry, ref, out, cfg.home_dir / "data")
        size = (folder / "adapter_model.safetensors").stat().st_size / 2**20
        shipped_from = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))["shipped_from"]
        console.print(f"packed {shipped_from} -> {folder} ({size:.1f} MB)")


@adapters_app.command("install")
def adapters_install(
    folders: Annotated[list[Path], typer.Argument(help="packed adapter folders (rolora adapters pack)")],
    promote: Annotated[bool, typer.Option(help="promote each installed adapter")] = True,
    config: ConfigOpt = None,
) -> None:
    """Register packed adapters (verified against their manifests) and promote them."""
    from rolora.adapters.shipped import install_shipped
    from rolora.models import resolve_generator

    cfg = load(config)
    base_dir = resolve_generator(cfg.models.generator, cfg.home_dir)
    registry = _registry(cfg)
    for folder in folders:
        rec = install_shipped(registry, folder, base_dir, promote=promote)
        console.print(f"installed {folder.name} as {rec.ref} ({rec.stage})")


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

    cfg = load(config)
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
    from rolora.adapters.export import export_merged

    folder = export_merged(registry, ref, out, resolve_generator(cfg.models.generator, cfg.home_dir))
    console.print(f"merged model written to {folder}")


def _gate_figure(gates: dict[str, Any], name: str, key: str) -> Any:
    for g in gates.get("gates", []):
        if g.get("name") == name:
            return g.get("figures", {}).get(key)
    return None


def _latest(registry: Any, name: str) -> Any:
    return max((r for r in registry.list() if r.name == name), key=lambda r: r.version)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _plot(rows: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["trainable_params", "wall_s", "peak_rss_mb", "val_perplexity", "forgetting_pct", "intruder_dimensions"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3 * len(metrics), 3), dpi=110)
    for ax, m in zip(axes, metrics, strict=True):
        vals = [float(rows[k][m] or 0) for k in ("LoRA", "full")]
        ax.bar(["LoRA", "full"], vals, color=["#4c72b0", "#dd8452"])
        ax.set_title(m, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@experiment_app.command("lora-vs-full")
def lora_vs_full(
    role: Annotated[Role, typer.Option()] = Role.analyst,
    domain: DomainOpt = None,
    max_steps: Annotated[int, typer.Option(help="the same step budget for both runs")] = 30,
    limit: Annotated[int | None, typer.Option(help="max examples per split")] = None,
    eval_limit: EvalLimitOpt = None,
    grad_accum: Annotated[int, typer.Option(help="examples per optimizer step (batch 1), both runs")] = 2,
    lora_lr: Annotated[float, typer.Option(help="LoRA learning rate")] = 1e-3,
    full_lr: Annotated[float, typer.Option(help="full fine-tuning learning rate")] = 2e-5,
    out: Annotated[Path | None, typer.Option(help="report folder (default: $ROLORA_HOME/experiments/…)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Train LoRA and full fine-tuning on the same data and step budget; write a Markdown/JSON table and a plot.

    Each run is its own process, so peak RSS is measured per run.
    """
    import subprocess
    import sys

    from rolora.adapters.pipeline import adapter_name
    from rolora.adapters.role_eval import ROLE_METRIC

    cfg = load(config)
    domain = domain_of(cfg, domain)
    eval_limit = eval_limit or cfg.gates.eval_limit
    common = ["--role", role.value, "--domain", domain, "--max-steps", str(max_steps), "--eval-limit", str(eval_limit)]
    common += ["--grad-accum", str(grad_accum)]
    if limit:
        common += ["--limit", str(limit)]
    if config:
        common += ["--config", str(config)]
    for full in (False, True):
        console.rule(f"{'full fine-tuning' if full else 'LoRA'}: {max_steps} steps")
        cmd = [sys.executable, "-m", "rolora.cli", "train", *common, "--lr", str(full_lr if full else lora_lr)]
        cmd += ["--full"] if full else []
        subprocess.run(cmd, check=True)
    registry = _registry(cfg)
    key = ROLE_METRIC[role.value]
    rows: dict[str, dict[str, Any]] = {}
    for label, full in (("LoRA", False), ("full", True)):
        rec = _latest(registry, adapter_name(domain, role.value, full))
        t, m = rec.metrics.get("train", {}), rec.metrics.get("role", {})
        rows[label] = {
            "adapter": rec.ref,
            "trainable_params": t.get("trainable_params"),
            "wall_s": t.get("wall_s"),
            "tokens_per_s": t.get("tokens_per_s"),
            "peak_rss_mb": t.get("peak_rss_mb"),
            "val_perplexity": _gate_figure(rec.gates, "val_perplexity", "adapter_ppl"),
            "base_val_perplexity": _gate_figure(rec.gates, "val_perplexity", "base_ppl"),
            f"{key} (tuned)": m.get("tuned", {}).get(key),
            f"{key} (base)": m.get("base", {}).get(key),
            "forgetting_pct": _gate_figure(rec.gates, "forgetting", "rise_pct"),
            "intruder_dimensions": _gate_figure(rec.gates, "intruder_dimensions", "total"),
        }
    folder = out or cfg.home_dir / "experiments" / f"lora-vs-full-{domain}-{role.value}"
    folder.mkdir(parents=True, exist_ok=True)
    from rolora.fileutil import atomic_write_text

    lrs = {"LoRA": lora_lr, "full": full_lr}
    report = {"role": role.value, "domain": domain, "max_steps": max_steps, "grad_accum": grad_accum, "lr": lrs}
    atomic_write_text(folder / "report.json", json.dumps({**report, "rows": rows}, indent=2))
    md = ["| metric | LoRA | full |", "|---|---|---|"]
    md += [f"| {k} | {_fmt(rows['LoRA'][k])} | {_fmt(rows['full'][k])} |" for k in rows["LoRA"]]
    title = f"# LoRA vs full fine-tuning ({domain}/{role.value}, {max_steps} steps × {grad_accum} examples)\n\n"
    title += f"Learning rates: LoRA {lora_lr:g}, full {full_lr:g}. Same data, same steps, batch 1.\n\n"
    atomic_write_text(folder / "report.md", title + "\n".join(md) + "\n")
    _plot(rows, folder / "lora_vs_full.png")
    console.print("\n".join(md))
    console.print(f"report: {folder}/report.md, report.json, lora_vs_full.png")
