"""What every command group shares: how a group is made, the ``--config``/``--domain`` options, the consoles.

Help is Click's plain formatter (``rich_markup_mode=None``): it wraps option help to the terminal's width, where
Rich's option tables left one word per line in an 80-column terminal.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from rolora.config import Config

__all__ = ["ConfigOpt", "DomainOpt", "command_group", "console", "domain_of", "err_console", "load"]

console = Console(width=None if sys.stdout.isatty() else 160)  # wide tables when piped or logged
err_console = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="rolora.yaml (default: $ROLORA_CONFIG, ./rolora.yaml)")
]
DomainOpt = Annotated[
    str | None, typer.Option("--domain", "-d", help="domain from the config (default: its only domain)")
]


def command_group(help: str, **kwargs: object) -> typer.Typer:
    """A Typer group with the CLI's conventions: no completion commands, help when called bare, plain help."""
    return typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None, help=help, **kwargs)  # type: ignore[arg-type]


def load(path: Path | None) -> Config:
    """The config from ``--config`` / ``$ROLORA_CONFIG`` / ``./rolora.yaml`` / built-in defaults."""
    from rolora.config import load_config

    return load_config(path)


def domain_of(config: Config, domain: str | None) -> str:
    """``--domain`` checked against the config, or the config's only domain when none is given."""
    return config.default_domain(domain)
