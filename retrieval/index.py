"""Derived search indexes of a domain: FAISS (dense) and bm25s (lexical), persisted atomically with a manifest.

Layout under ``<home>/indexes/<domain>/``::

    store.sqlite          # source of truth (retrieval/store.py)
    manifest.json         # written last, by rename: names the generation folder and its checksums
    gen-000007-1a2b3c4d/dense.faiss, …/lexical/…, …/lexical_ids.npy

A new generation is written to a temporary folder, renamed into place, and only then does the manifest
(temp file + ``os.replace``) point at it; a crash at any moment leaves the previous manifest and its folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from rolora.errors import IndexError_
from rolora.fileutil import atomic_write_text

__all__ = [
    "INDEX_VERSION",
    "DenseIndex",
    "IndexManifest",
    "LexicalIndex",
    "build_dense",
    "publish_generation",
    "read_manifest",
    "tokenize",
    "write_generation",
    "write_generation_folder",
]

IndexKind = Literal["flat", "ivf", "hnsw"]
MANIFEST = "manifest.json"
# 2: chunks indexed with their context (retrieval.contextual), BM25 stemming recorded, document profiles in the
# store for contract resolution. An index of an older version is refused with the command that rebuilds it.
INDEX_VERSION = 2


@dataclass
class IndexManifest:
    domain: str
    embedder: str
    dim: int
    index: str
    generation: int
    chunks: int
    documents: int
    folder: str
    checksums: dict[str, str]
    created: float
    version: int = 1  # manifests written before versioning had none
    stemmer: str = "none"  # how BM25 tokens were stemmed; queries are tokenised the same way
    contextual: bool = False


def _faiss() -> Any:
    """faiss, imported on first use and typed loosely (its SWIG stubs do not match its runtime API)."""
    import faiss

    return faiss


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


_STEMMERS: dict[str, Any] = {}


def tokenize(texts: list[str], stemmer: str = "none") -> list[list[str]]:
    """bm25s tokens (lower case, English stopwords removed), stemmed by PyStemmer unless ``stemmer`` is ``none``."""
    import bm25s

    stem = None
    if stemmer != "none":
        if stemmer not in _STEMMERS:
            import Stemmer

            _STEMMERS[stemmer] = Stemmer.Stemmer(stemmer)
        stem = _STEMMERS[stemmer]
    tokens = bm25s.tokenize(texts, stopwords="en", stemmer=stem, return_ids=False, show_progress=False)
    return list(tokens)


class LexicalIndex:
    """BM25 over chunk texts (bm25s), positions mapped to chunk ids."""

    def __init__(self, retriever: Any, ids: np.ndarray, stemmer: str = "none") -> None:
        self._bm25 = retriever
        self.ids = ids
        self.stemmer = stemmer

    @classmethod
    def build(cls, ids: np.ndarray, texts: list[str], stemmer: str = "none") -> LexicalIndex:
        import bm25s

        bm25 = bm25s.BM25()
        if texts:
            bm25.index(tokenize(texts, stemmer), show_progress=False)
        return cls(bm25, ids, stemmer)

    def save(self, folder: Path) -> None:
        (folder / "lexical").mkdir()
        if len(self.ids):
            self._bm25.save(str(folder / "lexical"))
        np.save(folder / "lexical_ids.npy", self.ids)

    @classmethod
    def load(cls, folder: Path, stemmer: str = "none") -> LexicalIndex:
        import bm25s

        ids = np.load(folder / "lexical_ids.npy")
        bm25 = bm25s.BM25.load(str(folder / "lexical")) if len(ids) else bm25s.BM25()
        return cls(bm25, ids, stemmer)

    def search(self, query: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """Top ``k`` (chunk id, BM25 score) with score > 0; ``allowed`` is a boolean mask over positions."""
        n = len(self.ids)
        if n == 0 or k <= 0:
            return []
        tokens = tokenize([query], self.stemmer)
        if not tokens[0]:
            return []
        mask = None if allowed is None else allowed.astype(np.float32)
        docs, scores = self._bm25.retrieve(tokens, k=min(k, n), show_progress=False, weight_mask=mask)
        out = []
        for pos, score in zip(docs[0], scores[0], strict=True):
            if score > 0 and (allowed is None or allowed[pos]):
                out.append((int(self.ids[pos]), float(score)))
        return out


class DenseIndex:
    """A FAISS inner-product index over normalised vectors, keyed by chunk id."""

    def __init__(self, index: Any, kind: str) -> None:
        self.index = index
        self.kind = kind

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(
        self, vectors: np.ndarray, k: int, allowed_ids: np.ndarray | None = None
    ) -> list[list[tuple[int, float]]]:
        faiss = _faiss()
        if self.ntotal == 0 or k <= 0:
            return [[] for _ in range(len(vectors))]
        params: Any = None
        sel = faiss.IDSelectorBatch(allowed_ids) if allowed_ids is not None else None
        # A selective filter (one contract of many: a scoped or resolved search) leaves few allowed vectors in the
        # probed IVF lists or on the HNSW path: probe every list / widen the beam so they are still found.
        selective = allowed_ids is not None and len(allowed_ids) * 10 < self.ntotal
        if self.kind == "ivf":
            nprobe = int(faiss.extract_index_ivf(self.index).nlist) if selective else self._nprobe()
            params = faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        elif self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=sel, efSearch=max(512 if selective else 64, 2 * k))
        elif sel is not None:
            params = faiss.SearchParameters(sel=sel)
        # A query or two: one faiss thread. Its OpenMP pool otherwise spins against torch's (the encoder's) on
        # small machines; measured on 2 cores, 54k vectors: encode + search 21 ms with both pools, 14.5 ms without.
        threads = faiss.omp_get_max_threads()
        if len(vectors) <= 4:
            faiss.omp_set_num_threads(1)
        try:
            scores, ids = self.index.search(
                np.ascontiguousarray(vectors, dtype=np.float32), min(k, self.ntotal), params=params
            )
        finally:
            faiss.omp_set_num_threads(threads)
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_s, strict=True) if i >= 0]
            for row_ids, row_s in zip(ids, scores, strict=True)
        ]

    def _nprobe(self) -> int:
        faiss = _faiss()
        ivf = faiss.extract_index_ivf(self.index)
        return max(8, int(ivf.nlist) // 16)


def build_dense(
    vectors: np.ndarray, ids: np.ndarray, kind: IndexKind, dim: int, nlist: int = 0, hnsw_m: int = 32
) -> DenseIndex:
    """Build a FAISS index: flat (exact), ivf (trained, nprobe = nlist/16) or hnsw; inner product."""
    faiss = _faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if kind == "ivf" and len(vectors) >= 256:
        nlist = nlist or max(16, int(4 * math.sqrt(len(vectors))))
        nlist = min(nlist, len(vectors) // 8)
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.add_with_ids(vectors, ids)
        return DenseIndex(index, "ivf")
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = 80
        index = faiss.IndexIDMap2(inner)
    else:  # flat, and ivf on a corpus too small to train
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if len(vectors):
        index.add_with_ids(vectors, ids)
    return DenseIndex(index, "hnsw" if kind == "hnsw" else "flat")


def read_manifest(domain_dir: Path) -> IndexManifest | None:
    path = domain_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        return IndexManifest(**json.loads(path.read_text()))
    except (ValueError, TypeError) as e:
        raise IndexError_(
            f"{path}: damaged manifest ({e}); rebuild with `rolora ingest PATH --domain D --rebuild`"
        ) from e


def write_generation_folder(
    domain_dir: Path,
    domain: str,
    dense: DenseIndex,
    lexical: LexicalIndex,
    embedder: str,
    dim: int,
    generation: int,
    documents: int,
    contextual: bool = False,
) -> IndexManifest:
    """Write a new generation folder (temp folder, then rename) and return its manifest, not yet published.

    The folder's name is unique (``gen-000007-<random>``), so writing never touches the folder the current manifest
    names, even when a power loss left that manifest a generation ahead of the store. On any failure (a full disk
    included) the temp folder is removed and the published state is untouched.
    """
    faiss = _faiss()
    tmp = Path(tempfile.mkdtemp(prefix=".gen-tmp-", dir=domain_dir))
    try:
        faiss.write_index(dense.index, str(tmp / "dense.faiss"))
        lexical.save(tmp)
        checksums = {str(p.relative_to(tmp)): _sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        folder = f"gen-{generation:06d}-{uuid.uuid4().hex[:8]}"
        os.replace(tmp, domain_dir / folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return IndexManifest(
        domain,
        embedder,
        dim,
        dense.kind,
        generation,
        dense.ntotal,
        documents,
        folder,
        checksums,
        time.time(),
        INDEX_VERSION,
        lexical.stemmer,
        contextual,
    )


def publish_generation(domain_dir: Path, manifest: IndexManifest) -> None:
    """Switch the manifest to ``manifest``'s folder atomically, then drop the other generations and stale temps."""
    atomic_write_text(domain_dir / MANIFEST, json.dumps(asdict(manifest), indent=2))
    for old in domain_dir.glob("gen-*"):
        if old.name != manifest.folder:
            shutil.rmtree(old, ignore_errors=True)
    for stale in domain_dir.glob(".gen-tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)


def write_generation(
    domain_dir: Path,
    domain: str,
    dense: DenseIndex,
    lexical: LexicalIndex,
    embedder: str,
    dim: int,
    generation: int,
    documents: int,
    contextual: bool = False,
) -> IndexManifest:
    """Write a generation folder, then switch the manifest to it atomically; drop older generations."""
    manifest = write_generation_folder(
        domain_dir, domain, dense, lexical, embedder, dim, generation, documents, contextual
    )
    publish_generation(domain_dir, manifest)
    return manifest


def load_generation(domain_dir: Path, manifest: IndexManifest, verify: bool = True) -> tuple[DenseIndex, LexicalIndex]:
    """Load the manifest's generation, refusing a damaged one with the command that rebuilds it."""
    faiss = _faiss()
    folder = domain_dir / manifest.folder
    fix = f"rebuild it with `rolora ingest PATH --domain {manifest.domain} --rebuild`"
    if verify:
        for rel, digest in manifest.checksums.items():
            path = folder / rel
            if not path.is_file():
                raise IndexError_(f"index of domain '{manifest.domain}' is damaged: {path} is missing; {fix}")
            if _sha256(path) != digest:
                raise IndexError_(f"index of domain '{manifest.domain}' is damaged: {path} fails its checksum; {fix}")
    try:
        index = faiss.read_index(str(folder / "dense.faiss"))
        lexical = LexicalIndex.load(folder, manifest.stemmer)
    except Exception as e:
        raise IndexError_(f"index of domain '{manifest.domain}' could not be read ({e}); {fix}") from e
    if index.ntotal != manifest.chunks:
        raise IndexError_(
            f"index of domain '{manifest.domain}' holds {index.ntotal} vectors, manifest says {manifest.chunks}; {fix}"
        )
    return DenseIndex(index, manifest.index), lexical
