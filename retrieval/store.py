"""The domain store: documents, chunks (with offsets) and cached embeddings in one SQLite file (WAL).

SQLite is the source of truth: the FAISS and BM25 indexes are derived from it (``retrieval/index.py``).
Document changes of one ingest (documents, their profiles and chunks) are one transaction, so a crash leaves the
previous state. Embeddings are
cached by (embedder, sha256 of the chunk text) and committed batch by batch, so an interrupted ingest does
not lose the vectors it already computed. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rolora.errors import UserError
from rolora.fileutil import is_disk_full

from .profile import DocProfile
from .types import Chunk, LoadedDocument

__all__ = ["DocRow", "Store", "indexed_text", "text_hash"]

SCHEMA_VERSION = "2"  # 2: doc_profiles (contract resolution) and chunks.context (contextual chunks)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    root TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    flags TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY,
    chunk_id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL REFERENCES documents(doc_id) ON DELETE CASCADE,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    text TEXT NOT NULL,
    heading_path TEXT NOT NULL,
    context TEXT NOT NULL DEFAULT '',
    text_hash TEXT NOT NULL  -- sha256 of what was embedded: indexed_text(context, text)
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE TABLE IF NOT EXISTS doc_profiles (
    doc_id TEXT PRIMARY KEY REFERENCES documents(doc_id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    parties TEXT NOT NULL,
    short_names TEXT NOT NULL,
    dates TEXT NOT NULL,
    first_page TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS embeddings (
    embedder TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (embedder, text_hash)
);
"""


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def indexed_text(context: str, text: str) -> str:
    """What is embedded and BM25-indexed for a chunk: its context line (if any), then its exact text."""
    return f"{context}\n{text}" if context else text


@dataclass(frozen=True)
class DocRow:
    doc_id: str
    source: str
    root: str
    content_hash: str
    metadata: dict[str, Any]


class Store:
    """One domain's SQLite file. Not shared between threads: open one per thread."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as e:
            self.db.close()
            if is_disk_full(e):
                raise UserError(
                    f"{path}: no space left on device to open the store (SQLite needs a little for its WAL files); "
                    "free space on that disk and try again"
                ) from e
            raise
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(chunks)")}
        if "context" not in columns:  # a version-1 store: the column is added, the store stays v1 until rebuilt
            self.db.execute("ALTER TABLE chunks ADD COLUMN context TEXT NOT NULL DEFAULT ''")
        if self.get_meta("schema_version") is None and not self.chunk_count():
            self.set_meta("schema_version", SCHEMA_VERSION)  # a new store; an old one keeps its version until rebuilt

    @property
    def schema_version(self) -> str:
        return self.get_meta("schema_version") or "1"

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT, rolled back on any exception (a kill leaves the last commit)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:  # SQLite may have rolled back by itself (SQLITE_FULL): keep the first error
                self.db.execute("ROLLBACK")
            raise

    # -- meta ---------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    # -- documents and chunks -----------------------------------------------------------------------------
    def documents(self) -> dict[str, DocRow]:
        rows = self.db.execute("SELECT doc_id, source, root, content_hash, metadata FROM documents")
        return {r[0]: DocRow(r[0], r[1], r[2], r[3], json.loads(r[4])) for r in rows}

    def document_text(self, doc_id: str) -> str | None:
        row = self.db.execute("SELECT text FROM documents WHERE doc_id=?", (doc_id,)).fetchone()
        return None if row is None else str(row[0])

    def delete_documents(self, doc_ids: Iterable[str]) -> int:
        n = 0
        for doc_id in doc_ids:
            n += self.db.execute("SELECT count(*) FROM chunks WHERE doc_id=?", (doc_id,)).fetchone()[0]
            self.db.execute("DELETE FROM documents WHERE doc_id=?", (doc_id,))
        return n

    def put_document(
        self,
        doc: LoadedDocument,
        root: str,
        chunks: Sequence[Chunk],
        profile: DocProfile,
        contexts: Sequence[str] | None = None,
    ) -> None:
        """One document with its profile and chunks; ``contexts[i]`` is prepended to chunk i for indexing only."""
        ctx = list(contexts) if contexts is not None else [""] * len(chunks)
        self.db.execute(
            "INSERT INTO documents(doc_id, source, root, content_hash, text, metadata, flags) VALUES (?,?,?,?,?,?,?)",
            (doc.doc_id, doc.source, root, doc.content_hash, doc.text, json.dumps(doc.metadata), ",".join(doc.flags)),
        )
        self.db.execute(
            "INSERT INTO doc_profiles(doc_id, title, parties, short_names, dates, first_page) VALUES (?,?,?,?,?,?)",
            (
                doc.doc_id,
                profile.title,
                profile.parties,
                json.dumps(list(profile.short_names)),
                json.dumps(list(profile.dates)),
                profile.first_page,
            ),
        )
        rows = []
        for c, x in zip(chunks, ctx, strict=True):
            h = text_hash(indexed_text(x, c.text))
            rows.append((c.int_id, c.chunk_id, c.doc_id, c.start, c.end, c.text, c.heading_path, x, h))
        self.db.executemany(
            'INSERT INTO chunks(id, chunk_id, doc_id, start, "end", text, heading_path, context, text_hash) '
            "VALUES (?,?,?,?,?,?,?,?,?)",
            rows,
        )

    def profiles(self) -> dict[str, DocProfile]:
        """doc_id -> its profile (contract resolution and contextual chunks)."""
        rows = self.db.execute("SELECT doc_id, title, parties, short_names, dates, first_page FROM doc_profiles")
        return {
            r[0]: DocProfile(r[0], r[1], r[2], tuple(json.loads(r[3])), tuple(json.loads(r[4])), r[5]) for r in rows
        }

    def chunk_count(self) -> int:
        return int(self.db.execute("SELECT count(*) FROM chunks").fetchone()[0])

    def all_chunks(self) -> tuple[np.ndarray, list[str], list[str], list[str]]:
        """(int ids, indexed texts (context + text), their hashes, doc ids) of every chunk, ordered by id."""
        rows = self.db.execute("SELECT id, context, text, text_hash, doc_id FROM chunks ORDER BY id").fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        return ids, [indexed_text(r[1], r[2]) for r in rows], [r[3] for r in rows], [r[4] for r in rows]

    def chunks_by_ids(self, ids: Sequence[int]) -> dict[int, tuple[str, str, int, int, str, str, str]]:
        """id -> (chunk_id, doc_id, start, end, text, heading_path, text_hash)."""
        out: dict[int, tuple[str, str, int, int, str, str, str]] = {}
        ids = list(ids)
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            q = ",".join("?" * len(part))
            for r in self.db.execute(
                'SELECT id, chunk_id, doc_id, start, "end", text, heading_path, text_hash FROM chunks '
                f"WHERE id IN ({q})",
                part,
            ):
                out[int(r[0])] = (r[1], r[2], int(r[3]), int(r[4]), r[5], r[6], r[7])
        return out

    # -- embeddings cache ---------------------------------------------------------------------------------
    def cached_hashes(self, embedder: str) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT text_hash FROM embeddings WHERE embedder=?", (embedder,))}

    def put_embeddings(self, embedder: str, hashes: Sequence[str], vectors: np.ndarray) -> None:
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO embeddings(embedder, text_hash, vector) VALUES (?,?,?)",
                [(embedder, h, v.astype(np.float32).tobytes()) for h, v in zip(hashes, vectors, strict=True)],
            )

    def get_embeddings(self, embedder: str, hashes: Sequence[str], dim: int) -> np.ndarray:
        """Vectors in the order of ``hashes``; a missing one raises KeyError."""
        found: dict[str, bytes] = {}
        uniq = list(dict.fromkeys(hashes))
        for i in range(0, len(uniq), 500):
            part = uniq[i : i + 500]
            q = ",".join("?" * len(part))
            for h, blob in self.db.execute(
                f"SELECT text_hash, vector FROM embeddings WHERE embedder=? AND text_hash IN ({q})", [embedder, *part]
            ):
                found[h] = blob
        out = np.empty((len(hashes), dim), dtype=np.float32)
        for i, h in enumerate(hashes):
            out[i] = np.frombuffer(found[h], dtype=np.float32)
        return out

    def prune_embeddings(self, embedder: str) -> int:
        """Drop cached vectors no chunk uses any more."""
        cur = self.db.execute(
            "DELETE FROM embeddings WHERE embedder=? AND text_hash NOT IN (SELECT text_hash FROM chunks)", (embedder,)
        )
        return cur.rowcount
