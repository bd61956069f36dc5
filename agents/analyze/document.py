"""The contract being analysed: from the index (``doc_id``), a file or a text given inline, chunked and ranked.

A contract that is in no index is chunked with the project's chunker and ranked in memory (MiniLM + BM25, fused by
reciprocal rank), so ``rolora analyze FILE`` needs no ingest. Offsets always refer to the document's own text.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rolora.errors import UserError

from ..types import PassageRef
from .categories import ClauseCategory

if TYPE_CHECKING:
    from rolora.config import Config
    from rolora.retrieval import LoadedDocument, Retriever

__all__ = ["ContractDocument", "candidates", "indexed_document", "open_document", "text_document"]


@dataclass
class ContractDocument:
    """One contract, its chunks (``text[c.start:c.end] == c.text``) and how to rank and embed them."""

    doc_id: str
    text: str
    source: str  # "index", a file path, or "text"
    chunks: list[PassageRef]
    rank: Callable[[str, int], list[int]]  # (query, n) -> chunk positions, best first
    embed: Callable[[list[str]], Any]  # texts -> L2-normalised vectors (numpy)


def indexed_document(doc_id: str, retriever: Retriever) -> ContractDocument:
    """``doc_id`` of ``retriever``'s domain, ranked by the domain's own hybrid search restricted to it."""
    chunks = [PassageRef.from_passage(p) for p in retriever.document_chunks(doc_id)]
    if not chunks:
        raise UserError(
            f"document '{doc_id}' is not in domain '{retriever.domain}'; give a contract file instead or ingest it "
            f"with `rolora ingest PATH --domain {retriever.domain}`"
        )
    text = retriever.document_text(doc_id)
    position = {c.chunk_id: i for i, c in enumerate(chunks)}

    def rank(query: str, n: int) -> list[int]:
        hits = retriever.search(query, k=n, filters={"doc_id": doc_id}, mode="hybrid")
        return [position[h.chunk_id] for h in hits if h.chunk_id in position]

    return ContractDocument(doc_id, text, "index", chunks, rank, retriever.query_embedder.embed)


def _loaded_document(doc: LoadedDocument, source: str, config: Config, retriever: Retriever | None) -> ContractDocument:
    """Chunk a document that is not in any index and rank its chunks in memory (dense + BM25, fused by RRF)."""
    import numpy as np

    from rolora.retrieval import ChunkingOptions, chunk_document, make_embedder, rrf_fuse
    from rolora.retrieval.index import LexicalIndex

    rc = config.retrieval
    chunks = [
        PassageRef(
            doc_id=c.doc_id, start=c.start, end=c.end, text=c.text, chunk_id=c.chunk_id, heading_path=c.heading_path
        )
        for c in chunk_document(
            doc.doc_id, doc.text, ChunkingOptions(rc.chunk_max_chars, rc.chunk_min_chars, rc.chunk_overlap_words)
        )
    ]
    if not chunks:
        raise UserError(f"{source}: no text to analyse")
    embedder = retriever.query_embedder if retriever is not None else make_embedder(config.models.embedder)
    texts = [c.text for c in chunks]
    vectors = embedder.embed(texts, batch_size=rc.batch_size)
    lexical = LexicalIndex.build(np.arange(len(chunks), dtype=np.int64), texts)

    def rank(query: str, n: int) -> list[int]:
        q = embedder.embed([query])[0]
        dense = [int(i) for i in np.argsort(-(vectors @ q), kind="stable")[:n]]
        lex = [int(i) for i, _ in lexical.search(query, n)]
        return [i for i, _ in rrf_fuse([dense, lex], rc.rrf_k)][:n]

    return ContractDocument(doc.doc_id, doc.text, source, chunks, rank, embedder.embed)


def open_document(
    source: str | Path | LoadedDocument, domain: str, config: Config, retriever: Retriever | None
) -> ContractDocument:
    """``source``: a ``doc_id`` in ``domain``'s index (``str``), a contract file (``Path``) or a text given inline."""
    from rolora.retrieval import LoadedDocument, Retriever
    from rolora.retrieval.loaders import load_path

    if isinstance(source, LoadedDocument):
        return _loaded_document(source, "text", config, retriever)
    if isinstance(source, Path):
        if not source.is_file():
            raise UserError(f"{source}: no such contract file")
        res = load_path(source, source.parent, int(config.retrieval.max_file_mb * 1024 * 1024))
        if not res.documents:
            reason = res.skipped[0].reason if res.skipped else "no document"
            raise UserError(f"{source}: cannot analyse it ({reason})")
        if len(res.documents) > 1:
            raise UserError(f"{source}: holds {len(res.documents)} documents; analyse one contract at a time")
        return _loaded_document(res.documents[0], str(source), config, retriever)
    retriever = retriever or Retriever.open(domain, config)
    return indexed_document(str(source), retriever)


def text_document(text: str, doc_id: str | None = None) -> LoadedDocument:
    """A contract given as text (e.g. in an API request); offsets of the analysis refer to ``text``."""
    from rolora.retrieval import LoadedDocument

    if not text.strip():
        raise UserError("the contract text is empty")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return LoadedDocument(doc_id or f"text-{digest[:12]}", text, "text", digest, {})


def candidates(doc: ContractDocument, cat: ClauseCategory, k: int, rrf_k: int) -> list[PassageRef]:
    """Up to ``k`` chunks for ``cat``: the search ranking fused with heading matches (and the opening chunk)."""
    from rolora.retrieval import rrf_fuse

    n = min(len(doc.chunks), max(3 * k, 10))
    pattern = cat.heading_pattern()
    by_heading = [i for i, c in enumerate(doc.chunks) if c.heading_path and pattern.search(c.heading_path)][:n]
    fused = [i for i, _ in rrf_fuse([doc.rank(cat.query, n), by_heading], rrf_k)]
    picked = fused[:k]
    if cat.lead and 0 not in picked:
        picked = [0, *picked[: k - 1]]
    return [doc.chunks[i] for i in picked]
