"""Incremental ingest of a corpus into a domain: load, chunk, embed (cached), commit, rebuild indexes.

Unchanged files are skipped without embedding anything; changed files replace their chunks; files that
disappeared from an ingested folder are removed. Document changes are one SQLite transaction; the derived indexes
of the new generation are written (temp folder, rename) before it commits and published by the manifest after it, so
a crash, a kill or a full disk at any point leaves the last good state (a kill between the commit and the manifest:
the next open rebuilds the indexes from the store). A full disk is one ``UserError`` naming the domain's folder.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rolora.config import RetrievalConfig
from rolora.errors import IndexError_, RoloraError, UserError
from rolora.fileutil import is_disk_full

from .chunking import ChunkingOptions, chunk_document
from .embedder import Embedder
from .index import IndexManifest, LexicalIndex, build_dense, publish_generation, write_generation_folder
from .loaders import iter_corpus, load_path
from .profile import DocProfile, context_prefix, extract_profile
from .store import SCHEMA_VERSION, Store, indexed_text, text_hash
from .types import Chunk, LoadedDocument, SkippedFile

__all__ = ["IngestReport", "chunk_for_index", "ingest_paths", "rebuild_indexes"]

log = logging.getLogger("rolora.retrieval")


@dataclass
class IngestReport:
    """What one ingest did, for the CLI table and for tests."""

    domain: str
    files_seen: int = 0
    documents_added: int = 0
    documents_updated: int = 0
    documents_unchanged: int = 0
    documents_removed: int = 0
    chunks_added: int = 0
    chunks_removed: int = 0
    chunks_total: int = 0
    embedded: int = 0
    embedding_cache_hits: int = 0
    skipped: list[SkippedFile] = field(default_factory=list)
    flagged: list[tuple[str, str]] = field(default_factory=list)  # (doc_id, flag)
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.domain}: {self.files_seen} files, +{self.documents_added} new, ~{self.documents_updated} changed, "
            f"={self.documents_unchanged} unchanged, -{self.documents_removed} removed; chunks +{self.chunks_added} "
            f"-{self.chunks_removed} (total {self.chunks_total}); embedded {self.embedded}, cache hits "
            f"{self.embedding_cache_hits}; skipped {len(self.skipped)}, flagged {len(self.flagged)}; "
            f"{self.seconds:.1f}s"
        )


def _embed_missing(
    store: Store, embedder: Embedder, texts: Sequence[str], batch_size: int, progress: bool, report: IngestReport
) -> None:
    """Embed the indexed texts (context + chunk) the cache does not hold yet; the cache key is their hash."""
    cached = store.cached_hashes(embedder.name)
    todo: dict[str, str] = {}
    for text in texts:
        h = text_hash(text)
        if h in cached:
            report.embedding_cache_hits += 1
        elif h not in todo:
            todo[h] = text
    if not todo:
        return
    hashes, texts = list(todo), list(todo.values())
    step = max(batch_size * 4, 64)  # commit every few batches: an interrupt keeps what was embedded
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]embedding"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task("embed", total=len(texts), rate="")
        t0 = time.perf_counter()
        for i in range(0, len(texts), step):
            vecs = embedder.embed(texts[i : i + step], batch_size=batch_size)
            store.put_embeddings(embedder.name, hashes[i : i + step], vecs)
            done = min(i + step, len(texts))
            bar.update(task, completed=done, rate=f"{done / (time.perf_counter() - t0):.0f} chunks/s")
    report.embedded += len(texts)


def _build_generation(
    store: Store, domain_dir: Path, domain: str, embedder_name: str, dim: int, cfg: RetrievalConfig
) -> IndexManifest:
    """FAISS + BM25 of the store as this connection sees it (inside an open transaction: its uncommitted state),
    written to a new generation folder; the manifest that names it is returned, not yet published."""
    ids, texts, hashes, _docs = store.all_chunks()
    vectors = store.get_embeddings(embedder_name, hashes, dim) if len(ids) else np.zeros((0, dim), np.float32)
    dense = build_dense(vectors, ids, cfg.index, dim, nlist=cfg.ivf_nlist, hnsw_m=cfg.hnsw_m)
    lexical = LexicalIndex.build(ids, texts, cfg.stemmer)
    n_docs = int(store.db.execute("SELECT count(*) FROM documents").fetchone()[0])
    return write_generation_folder(
        domain_dir, domain, dense, lexical, embedder_name, dim, store.generation, n_docs, contextual=cfg.contextual
    )


def rebuild_indexes(
    store: Store, domain_dir: Path, domain: str, embedder_name: str, dim: int, cfg: RetrievalConfig
) -> int:
    """Rebuild FAISS + BM25 from the store at its current generation and switch the manifest to them."""
    manifest = _build_generation(store, domain_dir, domain, embedder_name, dim, cfg)
    publish_generation(domain_dir, manifest)
    return manifest.chunks


def _no_space(domain_dir: Path, domain: str) -> UserError:
    return UserError(
        f"{domain_dir}: no space left on device while ingesting domain '{domain}'; free space on that disk (or set "
        "ROLORA_HOME to a larger one) and run the ingest again (the last complete ingest is kept)"
    )


def ingest_paths(
    store: Store,
    domain_dir: Path,
    domain: str,
    paths: Sequence[Path],
    embedder: Embedder,
    cfg: RetrievalConfig,
    include: Sequence[str] = ("**/*",),
    exclude: Sequence[str] = (),
    rebuild: bool = False,
    progress: bool = True,
) -> IngestReport:
    """Ingest files and folders into ``store``; see the module docstring for the guarantees. A full disk is one
    ``UserError`` naming the domain's folder; what was published before stays as it was."""
    try:
        return _ingest_paths(store, domain_dir, domain, paths, embedder, cfg, include, exclude, rebuild, progress)
    except RoloraError:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise _no_space(domain_dir, domain) from e
        raise


def chunk_for_index(doc: LoadedDocument, cfg: RetrievalConfig) -> tuple[list[Chunk], DocProfile, list[str]]:
    """A document's chunks, its profile and each chunk's context line, as ingest stores them: what is embedded for
    chunk ``i`` is ``indexed_text(contexts[i], chunks[i].text)`` (the embedder tuning builds its pairs from this)."""
    opts = ChunkingOptions(cfg.chunk_max_chars, cfg.chunk_min_chars, cfg.chunk_overlap_words)
    chunks = chunk_document(doc.doc_id, doc.text, opts)
    profile = extract_profile(doc.doc_id, doc.text)
    contexts = [context_prefix(profile, c.heading_path) if cfg.contextual else "" for c in chunks]
    return chunks, profile, contexts


def _ingest_paths(
    store: Store,
    domain_dir: Path,
    domain: str,
    paths: Sequence[Path],
    embedder: Embedder,
    cfg: RetrievalConfig,
    include: Sequence[str],
    exclude: Sequence[str],
    rebuild: bool,
    progress: bool,
) -> IngestReport:
    t0 = time.perf_counter()
    report = IngestReport(domain)
    recorded = store.get_meta("embedder")
    if recorded is not None and recorded != embedder.name and not rebuild:
        raise IndexError_(
            f"domain '{domain}' was embedded with '{recorded}', not '{embedder.name}'; "
            f"re-ingest with --rebuild or set models.embedder (and models.embedder_backend) back to '{recorded}'"
        )
    if not rebuild and store.schema_version != SCHEMA_VERSION and store.chunk_count():
        # an ingest is a write the user asked for: upgrade the domain in place (searches refuse the old index)
        log.warning(
            "domain %s was indexed by an older rolora (store schema %s, this one writes %s: document profiles and "
            "contextual chunks); rebuilding it (cached embeddings of unchanged text are reused)",
            domain,
            store.schema_version,
            SCHEMA_VERSION,
        )
        rebuild = True
    for p in paths:
        if not p.exists():
            raise UserError(f"{p}: no such file or folder; check the path (or the domain's corpus in rolora.yaml)")

    max_bytes = int(cfg.max_file_mb * 1024 * 1024)
    loaded: dict[str, tuple[LoadedDocument, str]] = {}
    roots = [str(p.resolve()) for p in paths]
    skipped_sources: set[str] = set()
    for root_path, root in zip(paths, roots, strict=True):
        base = root_path if root_path.is_dir() else root_path.parent
        for f in iter_corpus(root_path, list(include), list(exclude)):
            report.files_seen += 1
            res = load_path(f, base, max_bytes)
            report.skipped.extend(res.skipped)
            if res.skipped and not res.documents:
                skipped_sources.add(str(f))
            for doc in res.documents:
                if doc.doc_id in loaded:
                    report.skipped.append(SkippedFile(doc.source, f"duplicate doc_id '{doc.doc_id}' (kept the first)"))
                    continue
                loaded[doc.doc_id] = (doc, root)
                report.flagged.extend((doc.doc_id, flag) for flag in doc.flags)

    existing = {} if rebuild else store.documents()
    new_docs: list[tuple[LoadedDocument, str]] = []
    changed: list[str] = []
    for doc_id, (doc, root) in loaded.items():
        old = existing.get(doc_id)
        if old is None:
            new_docs.append((doc, root))
            report.documents_added += 1
        elif old.content_hash != doc.content_hash or old.root != root:
            new_docs.append((doc, root))
            changed.append(doc_id)
            report.documents_updated += 1
        else:
            report.documents_unchanged += 1
    removed = [  # gone from an ingested root; a file that failed to load this time keeps its old chunks
        d.doc_id
        for d in existing.values()
        if d.root in roots and d.doc_id not in loaded and d.source not in skipped_sources
    ]
    report.documents_removed = len(removed)

    chunked = []
    for doc, root in new_docs:
        chunks, profile, contexts = chunk_for_index(doc, cfg)
        chunked.append((doc, root, chunks, profile, contexts))
    indexed = [indexed_text(x, c.text) for _, _, cs, _, xs in chunked for c, x in zip(cs, xs, strict=True)]
    _embed_missing(store, embedder, indexed, cfg.batch_size, progress, report)

    if rebuild or new_docs or removed or store.generation == 0:
        manifest: IndexManifest | None = None
        # The new generation's index is written inside the transaction, before the commit: a crash or a full disk
        # before the commit leaves the store and the published index as they were. The commit is synced (FULL) so
        # that a power loss cannot take it back once the manifest names its index.
        store.db.execute("PRAGMA synchronous=FULL")
        try:
            with store.transaction():
                if rebuild or not store.chunk_count():
                    store.set_meta("schema_version", SCHEMA_VERSION)
                if rebuild:
                    report.chunks_removed += store.chunk_count()
                    store.db.execute("DELETE FROM documents")
                report.chunks_removed += store.delete_documents(changed + removed)
                for doc, root, cs, profile, contexts in chunked:
                    store.put_document(doc, root, cs, profile, contexts)
                    report.chunks_added += len(cs)
                store.set_meta("embedder", embedder.name)
                store.set_meta("dim", str(embedder.dim))
                store.set_meta("generation", str(store.generation + 1))
                manifest = _build_generation(store, domain_dir, domain, embedder.name, embedder.dim, cfg)
        except BaseException:
            if manifest is not None:  # written, never published: drop it
                shutil.rmtree(domain_dir / manifest.folder, ignore_errors=True)
            raise
        finally:
            store.db.execute("PRAGMA synchronous=NORMAL")
        assert manifest is not None
        publish_generation(domain_dir, manifest)
        try:
            store.prune_embeddings(embedder.name)
        except sqlite3.OperationalError as e:  # unused cached vectors stay until the next ingest
            if not is_disk_full(e):
                raise
            log.warning("domain %s: disk full while pruning the embedding cache; pruned on the next ingest", domain)
    report.chunks_total = store.chunk_count()
    report.seconds = time.perf_counter() - t0
    return report
