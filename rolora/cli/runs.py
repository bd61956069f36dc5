"""``rolora runs …``: the agent's stored runs (the checkpointer named by ``agent.checkpointer``)."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from rolora.cli.common import ConfigOpt, command_group, console, load

__all__ = ["runs_app"]

runs_app = command_group("The agent's stored runs (checkpoints): retention.")


@runs_app.command("prune")
def runs_prune(
    older_than_days: Annotated[
        float | None, typer.Option(min=0, help="delete runs older than this (default: agent.runs_retention_days)")
    ] = None,
    keep: Annotated[
        int | None, typer.Option(min=0, help="keep only the newest N runs (default: agent.runs_keep)")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Delete old runs (whole threads) from the checkpointer; SQLite files are vacuumed."""
    from rolora.agents.runs import open_checkpointer, prune_runs

    cfg = load(config)
    days = cfg.agent.runs_retention_days if older_than_days is None else older_than_days
    keep = cfg.agent.runs_keep if keep is None else keep

    async def run() -> str:
        async with open_checkpointer(cfg) as saver:
            if saver is None or cfg.agent.checkpointer == "memory":
                return "agent.checkpointer keeps no runs on disk: nothing to prune"
            return (await prune_runs(saver, older_than_days=days, keep=keep)).summary()

    console.print(asyncio.run(run()))
