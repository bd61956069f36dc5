"""CLI for the agent layer: ``rolora analyze`` (whole-contract clause analysis).

Heavy imports (torch, transformers, the agent graph) stay inside the commands so ``rolora --help`` remains light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rolora.cli.common import ConfigOpt, DomainOpt, console, domain_of, err_console, load
from rolora.errors import UserError

__all__ = ["analyze_command"]

_RISK_STYLE = {"high": "bold red", "medium": "yellow", "low": "green", "unknown": "dim"}
_FILE_SUFFIXES = {".txt", ".md", ".html", ".htm", ".pdf", ".docx", ".jsonl"}


def _source(contract: str) -> str | Path:
    """A file path when ``contract`` is an existing file, else a doc_id of the domain's index."""
    path = Path(contract)
    if path.is_file():
        return path
    if path.suffix.lower() in _FILE_SUFFIXES:
        raise UserError(f"{contract}: no such file; give a contract file or the doc_id of an ingested contract")
    return contract


def analyze_command(
    contract: Annotated[str, typer.Argument(help="a contract file, or the doc_id of a contract ingested in DOMAIN")],
    domain: DomainOpt = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="write the analysis as JSON to FILE")] = None,
    markdown: Annotated[Path | None, typer.Option("--markdown", help="write a Markdown report to FILE")] = None,
    categories: Annotated[
        str | None, typer.Option(help="comma-separated clause categories, e.g. 'Governing Law,Cap On Liability'")
    ] = None,
    k: Annotated[int, typer.Option("-k", help="candidate passages shown to the analyst per category")] = 3,
    keyword_fallback: Annotated[
        bool, typer.Option(help="when the analyst finds nothing, report a sentence matching the category's keywords")
    ] = True,
    config: ConfigOpt = None,
) -> None:
    """Extract each clause category of one contract with its exact span and a heuristic risk note.

    Categories follow CUAD's names where CUAD has one (Parties, Governing Law, Cap On Liability, ...). Risk notes are
    keyword heuristics, not legal advice. Example: rolora analyze nda_mutual --domain contracts --markdown nda.md
    """
    from rich.table import Table

    from rolora.agents import make_backend
    from rolora.agents.analyze import analyze_contract, select_categories
    from rolora.fileutil import atomic_write_text

    cfg = load(config)
    domain = domain_of(cfg, domain)
    names = [c.strip() for c in categories.split(",") if c.strip()] if categories else None
    select_categories(names)  # unknown names fail before any model loads
    source = _source(contract)
    for out in (json_out, markdown):
        if out is not None and not out.parent.is_dir():
            raise UserError(f"{out}: folder {out.parent} does not exist")
    with err_console.status(f"loading {cfg.models.generator} ({cfg.backend.kind})") as status:
        backend = make_backend(cfg)
        try:
            result = analyze_contract(
                source,
                domain,
                config=cfg,
                backend=backend,
                categories=names,
                k=k,
                keyword_fallback=keyword_fallback,
                on_progress=status.update,
            )
        finally:
            backend.close()
    table = Table("category", "found", "answer", "span", "risk", title=f"{result.doc_id} ({domain})", show_lines=True)
    table.columns[2].overflow = "fold"
    for f in result.findings:
        style = _RISK_STYLE[f.risk]
        found_by = f"yes ({f.method})" if f.found else "no"
        answer = " ".join((f.answer or f.quote or f.note).split())
        table.add_row(
            f.category,
            found_by,
            answer[:200] + ("…" if len(answer) > 200 else ""),
            f.citation or "—",
            f"[{style}]{f.risk}[/]: {f.risk_note}",
        )
    console.print(table)
    found = sum(f.found for f in result.findings)
    console.print(
        f"{found}/{len(result.findings)} categories found; analyst: {result.adapters['analyst']} on {result.backend}; "
        f"{result.latency_s:.1f} s. Risk notes are heuristics, not legal advice."
    )
    if json_out is not None:
        atomic_write_text(json_out, result.model_dump_json(indent=2) + "\n")
        console.print(f"wrote {json_out}")
    if markdown is not None:
        atomic_write_text(markdown, result.to_markdown())
        console.print(f"wrote {markdown}")
