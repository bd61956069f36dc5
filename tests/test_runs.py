"""Runs retention on a real SQLite checkpointer file: whole threads deleted by age or beyond the newest N, the file
vacuumed, the rest readable; the same through ``rolora runs prune``."""

from __future__ import annotations

import asyncio
import operator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypedDict

import yaml
from typer.testing import CliRunner

from rolora.cli import app
from rolora.config import Config


class _State(TypedDict, total=False):
    question: str
    trace: Annotated[list[str], operator.add]


def _config(tmp_path: Path) -> Config:
    return Config.model_validate({"home": str(tmp_path), "agent": {"checkpoint_path": str(tmp_path / "runs.sqlite")}})


async def _write_runs(config: Config, threads: list[str]) -> None:
    """A few real checkpointed runs (a small graph with the agent's checkpointer, bulky state like passages)."""
    from langgraph.graph import END, START, StateGraph

    from rolora.agents.runs import open_checkpointer

    def step(state: _State) -> dict[str, Any]:
        return {"trace": ["x" * 20000]}

    g = StateGraph(_State)
    g.add_node("step", step)
    g.add_edge(START, "step")
    g.add_edge("step", END)
    async with open_checkpointer(config) as saver:
        graph = g.compile(checkpointer=saver)
        for tid in threads:
            await graph.ainvoke({"question": tid}, {"configurable": {"thread_id": tid}})


async def _threads(config: Config) -> list[str]:
    from rolora.agents.runs import open_checkpointer

    async with open_checkpointer(config) as saver:
        return sorted({str(t.config["configurable"]["thread_id"]) async for t in saver.alist(None)})


def test_prune_by_age_and_by_count_on_a_real_sqlite_file(tmp_path: Path) -> None:
    from rolora.agents.runs import open_checkpointer, prune_runs

    cfg = _config(tmp_path)
    asyncio.run(_write_runs(cfg, [f"run-{i}" for i in range(6)]))
    db = tmp_path / "runs.sqlite"
    size_before = db.stat().st_size

    async def prune(**kwargs: Any) -> Any:
        async with open_checkpointer(cfg) as saver:
            return await prune_runs(saver, **kwargs)

    nothing = asyncio.run(prune())
    assert (nothing.threads, nothing.deleted) == (6, 0)
    young = asyncio.run(prune(older_than_days=1))  # every run is minutes old
    assert young.deleted == 0

    kept = asyncio.run(prune(keep=2))
    assert (kept.threads, kept.deleted) == (6, 4)
    assert asyncio.run(_threads(cfg)) == ["run-4", "run-5"]  # the newest two
    assert db.stat().st_size < size_before  # vacuumed: the space went back to the file system

    later = datetime.now(UTC) + timedelta(days=10)
    old = asyncio.run(prune(older_than_days=5, now=later))
    assert (old.threads, old.deleted, old.oldest_kept) == (2, 2, None)
    assert asyncio.run(_threads(cfg)) == []


def test_runs_prune_command(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    asyncio.run(_write_runs(cfg, ["a", "b", "c"]))
    path = tmp_path / "rolora.yaml"
    path.write_text(
        yaml.safe_dump({"home": str(tmp_path), "agent": {"checkpoint_path": str(tmp_path / "runs.sqlite")}})
    )
    result = CliRunner().invoke(app, ["runs", "prune", "--keep", "1", "-c", str(path)])
    assert result.exit_code == 0, result.output
    assert "2 of 3 runs deleted, 1 kept" in result.stdout
    assert asyncio.run(_threads(cfg)) == ["c"]
    bad = CliRunner().invoke(app, ["runs", "prune", "--keep", "-1", "-c", str(path)])
    assert bad.exit_code == 2 and "--keep" in bad.output
