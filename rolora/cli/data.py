"""``rolora data …``: get external data sets into this project's layout (today: CUAD v1)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from rolora.cli.common import command_group, console

__all__ = ["data_app"]

data_app = command_group("Convert external data sets (CUAD v1) into rolora's corpus + qa.jsonl layout.")


@data_app.command("convert-cuad")
def convert_cuad_command(
    source: Annotated[
        Path, typer.Argument(metavar="CUAD_V1_JSON", help="CUAD_v1.json of The Atticus Project's CUAD v1 release")
    ],
    out: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="folder to write contracts/*.txt and qa.jsonl into")],
    domain: Annotated[str, typer.Option(help="domain written in each qa.jsonl row")] = "contracts",
    force: Annotated[bool, typer.Option(help="overwrite a folder that already holds a qa.jsonl")] = False,
) -> None:
    """Convert the official CUAD v1 JSON (SQuAD style) into OUT/contracts/<doc_id>.txt + OUT/qa.jsonl.

    Then: ROLORA_CUAD_DIR=OUT for the tests and the cuad eval suite, or `rolora ingest` with OUT/contracts.
    """
    from rolora.evals.cuad import convert_cuad

    report = convert_cuad(source, out, domain=domain, force=force, progress=sys.stderr.isatty())
    console.print(
        f"{report.contracts} contracts, {report.questions} questions ({report.answerable} answerable, "
        f"{report.categories} categories) -> {out}"
    )
    if report.realigned:
        console.print(f"{report.realigned} answers had an answer_start off their text and were realigned")
