"""``Retriever``: the public face of a domain's index: ingest, search (dense, lexical, hybrid), cite.

>>> from rolora.retrieval import Retriever
>>> r = Retriever.open("contracts")                     # doctest: +SKIP
>>> r.ingest()                                          # the domain's configured corpus   # doctest: +SKIP
>>> for p in r.search("governing law", k=3):            # doctest: +SKIP
...     print(p.citation, p.heading_path, p.text[:60])
>>> q = "Under the Supply Agreement between Acme Inc. and Widget Co., who pays freight?"
>>> scope = r.resolve(q)         # [("acme_supply", 1.0)]: the contract the question names   # doctest: +SKIP
>>> hits = r.search(q, k=5, doc_ids=[d for d, _ in scope] or None)                  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np

from rolora.config import Config, load_config
from rolora.errors import IndexError_, UserError
from rolora.fileutil import is_disk_full
from rolora.models import embedder_name, split_embedder_name

from .embedder import Embedder, make_embedder
from .index import INDEX_VERSION, DenseIndex, LexicalIndex, load_generation, read_manifest
from .ingest import IngestReport, ingest_paths, rebuild_indexes
from .resolve import DocResolver
from .store import SCHEMA_VERSION, Store
from .types import Passage

__all__ = ["Retriever", "SearchMode", "convex_fuse", "rrf_fuse", "rrf_fuse_items"]

log = logging.getLogger("rolora.retrieval")
SearchMode = Literal["hybrid", "dense", "lexical"]
T = TypeVar("T")
Filters = dict[str, Any]


def rrf_fuse(
    rankings: Sequence[Sequence[int]], k: int = 60, weights: Sequence[float] | None = None
) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: score(d) = sum over rankings of weight / (k + rank), rank from 1 (weights default 1)."""
    scores: dict[int, float] = {}
    for r, ranking in enumerate(rankings):
        w = 1.0 if weights is None else weights[r]
        for rank, doc in enumerate(ranking, start=1):
            scores[doc] = scores.get(doc, 0.0) + w / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def convex_fuse(rankings: Sequence[Sequence[tuple[int, float]]], weights: Sequence[float]) -> list[tuple[int, float]]:
    """Weighted sum of min-max normalised scores (each ranking's best 1, its worst 0); a hit missing from a ranking
    gets 0 there."""
    scores: dict[int, float] = {}
    for ranking, w in zip(rankings, weights, strict=True):
        if not ranking:
            continue
        hi, lo = max(s for _, s in ranking), min(s for _, s in ranking)
        for doc, s in ranking:
            scores[doc] = scores.get(doc, 0.0) + w * ((s - lo) / (hi - lo) if hi > lo else 1.0)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


def _numbered(rankings: Sequence[Sequence[T]], key: Callable[[T], Hashable]) -> tuple[list[T], list[list[int]]]:
    """Items identified by ``key`` as integer ids (first-seen order) for the id-based fusions: the first item seen
    for each key, and each ranking as ids."""
    ids: dict[Hashable, int] = {}
    first: list[T] = []
    numbered = []
    for ranking in rankings:
        row = []
        for item in ranking:
            ident = ids.setdefault(key(item), len(first))
            if ident == len(first):
                first.append(item)
            row.append(ident)
        numbered.append(row)
    return first, numbered


def rrf_fuse_items(
    rankings: Sequence[Sequence[T]],
    key: Callable[[T], Hashable],
    k: int = 60,
    weights: Sequence[float] | None = None,
) -> list[tuple[T, float]]:
    """:func:`rrf_fuse` over items identified by ``key`` (e.g. passages by chunk id): the first item seen stands
    for its key, and ties keep first-seen order."""
    first, numbered = _numbered(rankings, key)
    return [(first[i], score) for i, score in rrf_fuse(numbered, k, weights)]


def convex_fuse_items(
    rankings: Sequence[Sequence[T]],
    key: Callable[[T], Hashable],
    score: Callable[[T], float],
    weights: Sequence[float],
) -> list[tuple[T, float]]:
    """:func:`convex_fuse` over items identified by ``key`` with their ranking's ``score``: the first item seen
    stands for its key, and ties keep first-seen order."""
    first, numbered = _numbered(rankings, key)
    scored = [
        [(i, score(item)) for i, item in zip(row, ranking, strict=True)]
        for row, ranking in zip(numbered, rankings, strict=True)
    ]
    return [(first[i], s) for i, s in convex_fuse(scored, weights)]


class Retriever:
    """Search one domain. Open with ``Retriever.open(domain, config)``; thread-safe for searches."""

    def __init__(self, domain: str, config: Config, embedder: Embedder | None = None) -> None:
        self.domain = domain
        self.config = config
        self.domain_config = config.domain(domain)
        self.cfg = config.retrieval
        self.dir = config.home_dir / "indexes" / domain
        self.store = Store(self.dir / "store.sqlite")
        self._embedder = embedder
        self._query_embedder: Embedder | None = None
        self._lock = threading.RLock()
        self._dense: DenseIndex | None = None
        self._lexical: LexicalIndex | None = None
        self._doc_of_pos: np.ndarray = np.zeros(0, dtype=np.int64)  # lexical position -> doc index
        self._docs: list[str] = []
        self._doc_meta: dict[str, dict[str, Any]] = {}
        self._chunk_doc: dict[int, int] = {}
        self._resolver: DocResolver | None = None
        self._loaded_generation = -1

    @classmethod
    def open(
        cls, domain: str, config: Config | Path | str | None = None, embedder: Embedder | None = None
    ) -> Retriever:
        cfg = config if isinstance(config, Config) else load_config(config)
        return cls(domain, cfg, embedder)

    def close(self) -> None:
        self.store.close()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            models = self.config.models
            self._embedder = make_embedder(models.embedder, home=self.config.home_dir, backend=models.embedder_backend)
        return self._embedder

    @property
    def query_embedder(self) -> Embedder:
        """What embeds a search's query, and the sentences the agent compares with a question, at question time: the
        index's embedder, except an int8 one that stands in for a float32 model to ingest faster (``openvino-int8``):
        then that float32 model on torch, so a query is embedded exactly, and the agent's cosine thresholds (evidence
        gate, typed reader, relevance), chosen with float32 vectors, see the cosines they were chosen on. The indexed
        passages keep their int8 vectors."""
        if self._query_embedder is None:
            emb = self.embedder
            spec, backend = split_embedder_name(emb.name)
            self._query_embedder = make_embedder(spec, home=self.config.home_dir) if backend == "openvino-int8" else emb
        return self._query_embedder

    # -- ingest -------------------------------------------------------------------------------------------
    def ingest(
        self, paths: Sequence[Path | str] | None = None, rebuild: bool = False, progress: bool = True
    ) -> IngestReport:
        """Ingest ``paths`` (default: the domain's configured corpus) incrementally."""
        roots = [Path(p) for p in paths] if paths else list(self.domain_config.corpus)
        if not roots:
            raise UserError(f"domain '{self.domain}' has no corpus: pass a PATH or set domains.{self.domain}.corpus")
        with self._lock:
            report = ingest_paths(
                self.store,
                self.dir,
                self.domain,
                roots,
                self.embedder,
                self.cfg,
                include=self.domain_config.include,
                exclude=self.domain_config.exclude,
                rebuild=rebuild,
                progress=progress,
            )
            self._loaded_generation = -1
        return report

    # -- loading ------------------------------------------------------------------------------------------
    def _ensure_loaded(self) -> None:
        gen = self.store.generation
        if gen == self._loaded_generation:
            return
        fix = f"run `rolora ingest PATH --domain {self.domain}`"
        manifest = read_manifest(self.dir)
        if manifest is None and gen == 0:
            raise IndexError_(f"domain '{self.domain}' has no index yet; {fix}")
        rebuild = f"rebuild it with `rolora ingest PATH --domain {self.domain} --rebuild`"
        if self.store.schema_version != SCHEMA_VERSION or (manifest is not None and manifest.version < INDEX_VERSION):
            have = manifest.version if manifest is not None else "?"
            raise IndexError_(
                f"index of domain '{self.domain}' was built by an older rolora (index version {have}, store schema "
                f"{self.store.schema_version}; this one needs {INDEX_VERSION}/{SCHEMA_VERSION}: document profiles for "
                f"contract resolution, contextual chunks); {rebuild} (cached embeddings of unchanged text are reused)"
            )
        spec = self.config.models.embedder
        backend = self.config.models.embedder_backend
        # tuned:NAME -> tuned:NAME@N (its promoted version); a backend other than torch appended: NAME+onnx-int8
        want = embedder_name(spec, self.config.home_dir, backend)
        recorded = manifest.embedder if manifest else self.store.get_meta("embedder")
        if recorded != want:
            says = f"'{spec}'" + (f" ({want})" if want != spec else "")
            raise IndexError_(
                f"index of domain '{self.domain}' was built with embedder '{recorded}', config says {says}; "
                f"re-ingest with `rolora ingest PATH --domain {self.domain} --rebuild` or set models.embedder "
                "and models.embedder_backend back"
            )
        dim = int(self.store.get_meta("dim") or 0)
        if self._embedder is not None and self._embedder.dim != dim:
            raise IndexError_(
                f"index of domain '{self.domain}' has dimension {dim}, embedder gives {self._embedder.dim}; "
                f"re-ingest with --rebuild"
            )
        if manifest is None or manifest.generation != gen:
            # behind: a run killed between its commit and the manifest swap; ahead: a power loss took back the
            # store's last commit after its manifest was written. Either way the store is the truth: rebuild from it.
            log.warning(
                "domain %s: index and store disagree (an interrupted ingest); rebuilding the indexes from the store",
                self.domain,
            )
            try:
                rebuild_indexes(self.store, self.dir, self.domain, want, dim, self.cfg)
            except Exception as e:
                if not is_disk_full(e):
                    raise
                raise IndexError_(
                    f"{self.dir}: no space left on device while rebuilding the index of domain '{self.domain}' "
                    "(an interrupted ingest); free space on that disk and search again"
                ) from e
            manifest = read_manifest(self.dir)
            assert manifest is not None
        self._dense, self._lexical = load_generation(self.dir, manifest)
        docs = self.store.documents()
        self._docs = sorted(docs)
        self._doc_meta = {d: {"doc_id": d, **docs[d].metadata} for d in self._docs}
        index_of = {d: i for i, d in enumerate(self._docs)}
        rows = self.store.db.execute("SELECT id, doc_id FROM chunks").fetchall()
        self._chunk_doc = {int(i): index_of[d] for i, d in rows}
        self._doc_of_pos = np.array([self._chunk_doc[int(i)] for i in self._lexical.ids], dtype=np.int64)
        profiles = self.store.profiles()
        self._resolver = DocResolver(
            self._docs, [profiles[d].search_text() if d in profiles else d for d in self._docs], self.cfg.stemmer
        )
        self._loaded_generation = manifest.generation

    # -- search -------------------------------------------------------------------------------------------
    def _allowed_docs(self, filters: Filters) -> np.ndarray:
        keep = []
        for i, d in enumerate(self._docs):
            meta = self._doc_meta[d]
            ok = True
            for key, want in filters.items():
                have = meta.get(key)
                ok = have in want if isinstance(want, list | tuple | set) else have == want
                if not ok:
                    break
            if ok:
                keep.append(i)
        return np.array(keep, dtype=np.int64)

    def resolve(self, question: str) -> list[tuple[str, float]]:
        """The contract(s) ``question`` names, as ``[(doc_id, confidence)]`` best first (confidences sum to 1), from
        the document-level index (title, parties, short names, file name, first page); ``[]`` when it names none
        confidently, or when ``retrieval.resolve`` is off. Pass the doc ids to :meth:`search` as ``doc_ids``."""
        if not self.cfg.resolve or not question.strip():
            return []
        with self._lock:
            self._ensure_loaded()
            assert self._resolver is not None
            return self._resolver.resolve(
                question, self.cfg.resolve_min_score, self.cfg.resolve_ratio, self.cfg.resolve_max_candidates
            )

    def has_document(self, doc_id: str) -> bool:
        with self._lock:
            self._ensure_loaded()
            return doc_id in self._doc_meta

    def check_doc_ids(self, doc_ids: Sequence[str]) -> None:
        """Refuse doc ids this domain does not hold (a misspelt ``--doc`` must not silently search nothing)."""
        with self._lock:
            self._ensure_loaded()
            unknown = [d for d in doc_ids if d not in self._doc_meta]
        if unknown:
            raise UserError(
                f"document(s) {', '.join(map(repr, unknown))} not in domain '{self.domain}' "
                f"({len(self._docs)} documents); check the doc_id (the file name without its extension)"
            )

    def search(
        self,
        query: str,
        k: int = 5,
        filters: Filters | None = None,
        mode: SearchMode | None = None,
        mmr: bool = False,
        mmr_lambda: float = 0.5,
        doc_ids: Sequence[str] | None = None,
    ) -> list[Passage]:
        """Top ``k`` passages for ``query`` in this domain only.

        ``mode``: ``hybrid`` (weighted reciprocal rank fusion of dense and BM25), ``dense`` or ``lexical``.
        ``filters``: ``{"doc_id": "nda_mutual"}`` or any document metadata key; a list value means any of.
        ``doc_ids``: search inside these documents only (e.g. what :meth:`resolve` returned); an unknown id is an
        error.
        ``mmr``: re-rank the fused candidates by maximal marginal relevance for diversity.
        """
        mode = mode or self.cfg.mode
        if mode not in ("hybrid", "dense", "lexical"):
            raise UserError(f"search mode must be hybrid, dense or lexical (got {mode!r})")
        if k <= 0 or not query.strip():
            return []
        if doc_ids is not None:
            self.check_doc_ids(doc_ids)
            filters = {**(filters or {}), "doc_id": list(doc_ids)}
        with self._lock:
            self._ensure_loaded()
            assert self._dense is not None and self._lexical is not None
            allowed_ids: np.ndarray | None = None
            allowed_mask: np.ndarray | None = None
            if filters:
                allowed_docs = self._allowed_docs(filters)
                allowed_mask = np.isin(self._doc_of_pos, allowed_docs)
                allowed_ids = self._lexical.ids[allowed_mask]
                if len(allowed_ids) == 0:
                    return []
            n = max(k, self.cfg.candidates) if (mode == "hybrid" or mmr) else k
            rankings: list[list[tuple[int, float]]] = []
            qvec: np.ndarray | None = None
            if mode in ("hybrid", "dense"):
                qvec = self.query_embedder.embed([query])
                rankings.append(self._dense.search(qvec, n, allowed_ids)[0])
            if mode in ("hybrid", "lexical"):
                rankings.append(self._lexical.search(query, n, allowed_mask))
            if mode == "hybrid":
                weights = (self.cfg.dense_weight, self.cfg.lexical_weight)
                if self.cfg.fusion == "convex":
                    scored = convex_fuse(rankings, weights)
                else:
                    scored = rrf_fuse([[i for i, _ in r] for r in rankings], self.cfg.rrf_k, weights)
            else:
                scored = rankings[0]
            if mmr and scored:
                scored = self._mmr(query, qvec, scored, k, mmr_lambda)
            scored = scored[:k]
            rows = self.store.chunks_by_ids([i for i, _ in scored])
        out = []
        for cid, score in scored:
            chunk_id, doc_id, start, end, text, heading, _h = rows[cid]
            out.append(
                Passage(text, score, doc_id, start, end, heading, chunk_id, dict(self._doc_meta.get(doc_id, {})))
            )
        return out

    def _mmr(
        self, query: str, qvec: np.ndarray | None, scored: list[tuple[int, float]], k: int, lam: float
    ) -> list[tuple[int, float]]:
        if qvec is None:
            qvec = self.query_embedder.embed([query])
        rows = self.store.chunks_by_ids([i for i, _ in scored])
        hashes = [rows[i][6] for i, _ in scored]
        vecs = self.store.get_embeddings(self.embedder.name, hashes, qvec.shape[1])
        rel = vecs @ qvec[0]
        chosen: list[int] = []
        rest = list(range(len(scored)))
        while rest and len(chosen) < k:
            red = (vecs[rest] @ vecs[chosen].T).max(axis=1) if chosen else np.zeros(len(rest))
            best = int(np.argmax(lam * rel[rest] - (1 - lam) * red))
            chosen.append(rest.pop(best))
        return [scored[i] for i in chosen]

    def document_chunks(self, doc_id: str, limit: int | None = None) -> list[Passage]:
        """Every chunk of one document in order (the first ``limit`` only, when given), as passages (score 0)."""
        with self._lock:
            rows = self.store.db.execute(
                'SELECT chunk_id, start, "end", text, heading_path FROM chunks WHERE doc_id=? ORDER BY start LIMIT ?',
                (doc_id, -1 if limit is None else limit),
            ).fetchall()
            meta = self._doc_meta.get(doc_id, {"doc_id": doc_id})
        return [Passage(r[3], 0.0, doc_id, int(r[1]), int(r[2]), r[4], r[0], dict(meta)) for r in rows]

    def document_text(self, doc_id: str) -> str:
        """The stored text a citation's offsets refer to."""
        with self._lock:
            text = self.store.document_text(doc_id)
        if text is None:
            raise UserError(f"document '{doc_id}' is not in domain '{self.domain}'")
        return text

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._ensure_loaded()
            manifest = read_manifest(self.dir)
        return {
            "domain": self.domain,
            "documents": len(self._docs),
            "chunks": self.store.chunk_count(),
            "index": manifest.index if manifest else None,
            "embedder": manifest.embedder if manifest else None,
            "generation": manifest.generation if manifest else 0,
        }

    def as_langchain(self, k: int = 5, mode: SearchMode | None = None, filters: Filters | None = None) -> Any:
        """A langchain-core ``BaseRetriever`` over this retriever."""
        from .langchain import RoloraLangchainRetriever

        return RoloraLangchainRetriever(retriever=self, k=k, mode=mode, filters=filters)
