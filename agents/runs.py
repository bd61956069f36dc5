"""Where runs are kept (the checkpointer), and how long.

Every step of every run is checkpointed with its passages, so a long-running service's ``runs.sqlite`` grows with
each question. :func:`prune_runs` deletes whole threads whose last step is older than the retention, or beyond the
newest ``keep``; the service applies ``agent.runs_retention_days`` / ``agent.runs_keep`` at start and every hour,
and ``rolora runs prune`` does it by hand. A pruned thread is gone: reading or resuming it is "no such run".

>>> async with open_checkpointer(config) as saver:       # doctest: +SKIP
...     report = await prune_runs(saver, older_than_days=30)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from rolora.config import Config
from rolora.errors import UserError

__all__ = ["PruneReport", "open_checkpointer", "prune_runs"]

CheckpointerKind = Literal["sqlite", "memory", "postgres", "none"]
_PG_SETUP_LOCK = 0x726F6C6F7261  # "rolora": the advisory lock key serialising the Postgres saver's setup


@asynccontextmanager
async def open_checkpointer(config: Config, kind: CheckpointerKind | None = None) -> AsyncIterator[Any]:
    """The checkpointer ``agent.checkpointer`` names (None for ``"none"``), set up, closed on exit."""
    settings = config.agent
    kind = kind or settings.checkpointer
    if kind == "none":
        yield None
    elif kind == "memory":
        from langgraph.checkpoint.memory import InMemorySaver

        yield InMemorySaver()
    elif kind == "sqlite":
        import aiosqlite
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        path = Path(settings.checkpoint_path or config.home_dir / "runs.sqlite").expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        async with aiosqlite.connect(str(path)) as conn:
            saver = AsyncSqliteSaver(conn)
            await saver.setup()
            yield saver
    else:
        try:
            from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
        except ImportError as e:
            raise UserError("agent.checkpointer: postgres needs `pip install langgraph-checkpoint-postgres`") from e
        if not settings.postgres_url:
            raise UserError("agent.checkpointer: postgres needs agent.postgres_url")
        from psycopg import AsyncConnection
        from psycopg.rows import dict_row

        # the connection AsyncPostgresSaver.from_conn_string would open, kept at hand for the setup lock
        async with await AsyncConnection.connect(
            settings.postgres_url, autocommit=True, prepare_threshold=0, row_factory=dict_row
        ) as conn:
            # Several workers starting at once against a new database would all run the saver's migrations (and
            # collide on checkpoint_migrations' key): one at a time, under a session-level advisory lock.
            # Polled with pg_try_advisory_lock, never waited for inside a statement: the migrations build indexes
            # CONCURRENTLY, which wait for every open transaction, a blocked pg_advisory_lock call included
            # (Postgres then reports a deadlock).
            for _ in range(600):
                row = await (await conn.execute("SELECT pg_try_advisory_lock(%s) AS ok", (_PG_SETUP_LOCK,))).fetchone()
                if row and row["ok"]:
                    break
                await asyncio.sleep(0.2)
            else:
                raise UserError("agent.postgres_url: another process held the setup lock for 2 minutes; retry")
            try:
                pg_saver = AsyncPostgresSaver(conn)
                await pg_saver.setup()
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (_PG_SETUP_LOCK,))
            yield pg_saver


@dataclass(frozen=True)
class PruneReport:
    threads: int  # threads found
    deleted: int  # threads deleted
    oldest_kept: datetime | None  # the last step of the oldest thread kept

    def summary(self) -> str:
        kept = self.threads - self.deleted
        since = f", the oldest from {self.oldest_kept:%Y-%m-%d %H:%M} UTC" if self.oldest_kept else ""
        return f"{self.deleted} of {self.threads} runs deleted, {kept} kept{since}"


async def prune_runs(
    saver: Any,
    *,
    older_than_days: float | None = None,
    keep: int | None = None,
    now: datetime | None = None,
) -> PruneReport:
    """Delete every thread whose last checkpoint is older than ``older_than_days``, and every thread beyond the
    newest ``keep``. Both None: nothing is deleted (the report still counts the threads)."""
    if older_than_days is not None and older_than_days < 0:
        raise UserError(f"older_than_days must be 0 or more (got {older_than_days})")
    if keep is not None and keep < 0:
        raise UserError(f"keep must be 0 or more (got {keep})")
    last: dict[str, datetime] = {}
    async for item in saver.alist(None):
        tid = str(item.config["configurable"]["thread_id"])
        ts = datetime.fromisoformat(item.checkpoint["ts"])
        if tid not in last or ts > last[tid]:
            last[tid] = ts
    newest_first = sorted(last, key=lambda t: last[t], reverse=True)
    doomed: set[str] = set()
    if older_than_days is not None:
        cutoff = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
        doomed |= {t for t, ts in last.items() if ts < cutoff}
    if keep is not None:
        doomed |= set(newest_first[keep:])
    for tid in sorted(doomed):
        await saver.adelete_thread(tid)
    kept = [last[t] for t in newest_first if t not in doomed]
    if doomed and type(saver).__name__ == "AsyncSqliteSaver":
        await saver.conn.commit()
        await saver.conn.execute("VACUUM")  # give the space back to the file system
    return PruneReport(len(last), len(doomed), min(kept) if kept else None)
