"""What the versioned registries share (adapters: :mod:`rolora.adapters.registry`; tuned embedders:
:mod:`rolora.embedder_registry`): the stages a version goes through, the event recorded for each, the gate summary
of a record, and the checks that keep a manifest plain JSON."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict

from .errors import UserError

__all__ = ["Stage", "StageEvent", "StagedRecord", "json_safe", "names", "now", "registry_lock", "versions"]

Stage = Literal["candidate", "promoted", "retired"]
# a version is the folder ROOT/NAME@N; writers hold ROOT/.registry.lock
FOLDER = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_-]{0,63})@([0-9]+)$")
_LOCK = ".registry.lock"


def versions(root: Path, name: str) -> list[int]:
    """The versions of ``name`` registered under ``root`` (folders ``name@N``), ascending."""
    if not root.is_dir():
        return []
    return sorted(
        int(m.group(2)) for p in root.iterdir() if (m := FOLDER.match(p.name)) and m.group(1) == name and p.is_dir()
    )


def names(root: Path) -> list[str]:
    """The names with at least one version under ``root``, sorted."""
    if not root.is_dir():
        return []
    return sorted({m.group(1) for p in root.iterdir() if (m := FOLDER.match(p.name)) and p.is_dir()})


@contextlib.contextmanager
def registry_lock(root: Path) -> Iterator[None]:
    """An exclusive lock on the registry under ``root`` for writers (``filelock``: flock on POSIX, msvcrt on
    Windows)."""
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / _LOCK):
        yield


def now() -> str:
    """The time a registry records (UTC, ISO 8601, microseconds: versions made in one second stay ordered)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


def json_safe(value: Any, what: str) -> Any:
    """``value`` as plain JSON data, or a one-line error naming ``what`` is not."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as e:
        raise UserError(f"{what} must be JSON-serialisable (plain dicts, lists, numbers, strings): {e}") from e


class StageEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    stage: Stage
    at: str
    note: str = ""


class StagedRecord:
    """The gate and stage readings of a registry record (a pydantic model with ``gates`` and ``history``)."""

    if TYPE_CHECKING:  # the record's own fields (annotated here, pydantic would take them as fields of its own)
        gates: dict[str, Any]
        history: list[StageEvent]

    @property
    def failed_gates(self) -> list[str]:
        """Names of the recorded gates that failed (empty when none failed or none were recorded)."""
        failed = self.gates.get("failed_gates")
        if isinstance(failed, list):
            return [str(g) for g in failed]
        return [] if self.gates.get("passed", True) else ["(unnamed)"]

    @property
    def promoted_at(self) -> str:
        """Time of the last promotion ('' when never promoted)."""
        return max((e.at for e in self.history if e.stage == "promoted"), default="")
