"""The ``rolora`` command line. Heavy libraries (torch, transformers, faiss) load inside commands only,
so ``rolora --help`` stays fast."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from rolora.cli.adapters import adapters_app, experiment_app, train_command
from rolora.cli.analyze import analyze_command
from rolora.cli.ask import ask_command
from rolora.cli.common import ConfigOpt, DomainOpt, command_group, console, domain_of, err_console, load
from rolora.cli.data import data_app
from rolora.cli.eval import eval_command
from rolora.cli.retriever import retriever_app
from rolora.cli.runs import runs_app
from rolora.cli.serve import serve_app
from rolora.errors import RoloraError


class SearchModeName(StrEnum):
    hybrid = "hybrid"
    dense = "dense"
    lexical = "lexical"


app = command_group("rolora: per-role LoRA experts for agentic RAG.")
models_app = command_group("List and prepare the base models.")
app.add_typer(models_app, name="models")
app.add_typer(serve_app, name="serve")
app.add_typer(adapters_app, name="adapters")
app.add_typer(experiment_app, name="experiment")
app.add_typer(runs_app, name="runs")
app.add_typer(data_app, name="data")
app.add_typer(retriever_app, name="retriever")
app.command("train")(train_command)
app.command("analyze")(analyze_command)
app.command("eval")(eval_command)
app.command("ask")(ask_command)


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="where to write the config")] = Path("rolora.yaml"),
    force: Annotated[bool, typer.Option(help="overwrite an existing file")] = False,
) -> None:
    """Write a commented default rolora.yaml."""
    from rolora.config import default_config_text
    from rolora.fileutil import atomic_write_text

    if path.exists() and not force:
        raise typer.BadParameter(f"{path} exists; pass --force to overwrite it")
    atomic_write_text(path, default_config_text())
    console.print(f"wrote {path}")


@models_app.command("list")
def models_list(config: ConfigOpt = None) -> None:
    """Show the built-in model aliases, where their weights come from and whether they are prepared."""
    from rich.table import Table

    from rolora.models import list_models

    cfg = load(config)
    table = Table("kind", "alias", "source", "prepared")
    for m in list_models(cfg.home_dir):
        table.add_row(m.kind, m.alias, m.source, m.prepared)
    console.print(table)
    console.print(f"configured: generator={cfg.models.generator} embedder={cfg.models.embedder}")


@models_app.command("prepare")
def models_prepare(
    config: ConfigOpt = None,
    force: Annotated[bool, typer.Option(help="convert again even if prepared")] = False,
) -> None:
    """Convert the configured generator to a safetensors folder (once) and check the embedder loads."""
    from rolora.models import prepare_generator, resolve_embedder

    cfg = load(config)
    with console.status(f"preparing {cfg.models.generator}"):
        folder = prepare_generator(cfg.models.generator, cfg.home_dir, force=force)
    console.print(f"generator {cfg.models.generator}: {folder}")
    console.print(f"embedder {cfg.models.embedder}: {resolve_embedder(cfg.models.embedder, cfg.home_dir)}")


@app.command()
def ingest(
    paths: Annotated[list[Path] | None, typer.Argument(help="files or folders (default: the domain's corpus)")] = None,
    domain: DomainOpt = None,
    config: ConfigOpt = None,
    rebuild: Annotated[bool, typer.Option(help="drop the domain's index and ingest from scratch")] = False,
) -> None:
    """Ingest files into a domain: chunk with offsets, embed (cached), index (FAISS + BM25)."""
    from rich.table import Table

    from rolora.retrieval import Retriever

    cfg = load(config)
    retriever = Retriever.open(domain_of(cfg, domain), cfg)
    report = retriever.ingest(paths or None, rebuild=rebuild, progress=sys.stderr.isatty())
    console.print(report.summary())
    if report.skipped or report.flagged:
        table = Table(title="needs attention")
        table.add_column("file", overflow="fold")
        table.add_column("skipped or flagged because", overflow="fold")
        for s in report.skipped:
            table.add_row(s.path, s.reason)
        for doc_id, flag in report.flagged:
            table.add_row(doc_id, flag)
        console.print(table)


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="what to look for")],
    domain: DomainOpt = None,
    k: Annotated[int, typer.Option("-k", help="passages to return")] = 5,
    mode: Annotated[SearchModeName | None, typer.Option(help="retrieval mode")] = None,
    doc: Annotated[
        list[str] | None, typer.Option(help="only this doc_id (repeatable); default: the contract the query names")
    ] = None,
    resolve: Annotated[
        bool, typer.Option(help="search inside the contract the query names, when it names one confidently")
    ] = True,
    mmr: Annotated[bool, typer.Option(help="diversify with maximal marginal relevance")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="print scope and passages as JSON")] = False,
    config: ConfigOpt = None,
) -> None:
    """Search a domain and print each hit with its cited span.

    Without --doc, a query that names a contract (title, parties, a defined short name, the file name) is searched
    inside it; the line above the table says which contract(s) and how confident the resolution is."""
    from rich.table import Table

    from rolora.retrieval import Retriever

    cfg = load(config)
    domain = domain_of(cfg, domain)
    retriever = Retriever.open(domain, cfg)
    resolution = retriever.resolve(query) if resolve and not doc else []
    scope = list(doc or []) or [d for d, _ in resolution] or None
    passages = retriever.search(query, k=k, mode=mode.value if mode else None, doc_ids=scope, mmr=mmr)
    if json_out:
        import json

        fields = ("citation", "doc_id", "start", "end", "score", "heading_path", "text")
        out = {
            "scope": "explicit" if doc else ("resolved" if resolution else "domain"),
            "doc_ids": scope or [],
            "resolution": [{"doc_id": d, "confidence": c} for d, c in resolution],
            "passages": [{f: getattr(p, f) for f in fields} for p in passages],
        }
        typer.echo(json.dumps(out, ensure_ascii=False, indent=1))
        return
    if doc:
        console.print(f"scope: {', '.join(doc)} (--doc)")
    elif resolution:
        console.print("scope: resolved to " + ", ".join(f"{d} ({c:.2f})" for d, c in resolution))
    table = Table("#", "score", title=f"{query!r} in {domain}", show_lines=True)
    for name in ("citation", "heading", "text"):
        table.add_column(name, overflow="fold")
    for i, p in enumerate(passages, 1):
        snippet = " ".join(p.text.split())
        table.add_row(
            str(i), f"{p.score:.3f}", p.citation, p.heading_path, snippet[:300] + ("…" if len(snippet) > 300 else "")
        )
    console.print(table)
    if not passages:
        console.print("no passages found")


def main() -> None:
    """Entry point: user and runtime errors become one line on stderr and exit code 2."""
    try:
        app()
    except RoloraError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
