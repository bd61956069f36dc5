"""Atomic file writes: temp file in the same folder, fsync, ``os.replace``; a crash leaves the old file. And
``is_disk_full``: whether an exception says the disk is full, whichever library raised it."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "is_disk_full"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one step; the temp file is removed on any failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) in one step."""
    atomic_write_bytes(path, text.encode("utf-8"))


_SQLITE_FULL = 13
_SQLITE_IOERR_SHMSIZE = 4874  # a WAL database's -shm file could not be grown: opening it on a full disk


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` (or an exception it was raised from) says the disk is full: ``ENOSPC``/``EDQUOT``,
    SQLite's ``SQLITE_FULL`` ("database or disk is full") or ``SQLITE_IOERR_SHMSIZE`` (a WAL file's shared
    memory could not grow), or FAISS's I/O errors, which carry ``strerror``."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if getattr(e, "sqlite_errorcode", None) in (_SQLITE_FULL, _SQLITE_IOERR_SHMSIZE):
            return True
        text = str(e)
        if "database or disk is full" in text or "No space left on device" in text:
            return True
        e = e.__cause__ or e.__context__
    return False
