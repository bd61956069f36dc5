"""Retrieval: ingest a corpus, chunk it with exact offsets, index it (FAISS + BM25), return cited passages."""

from .chunking import ChunkingOptions, chunk_document
from .embedder import Embedder, make_embedder, register_embedder
from .ingest import IngestReport
from .retriever import Retriever, rrf_fuse, rrf_fuse_items
from .types import Chunk, LoadedDocument, Passage

__all__ = [
    "Chunk",
    "ChunkingOptions",
    "Embedder",
    "IngestReport",
    "LoadedDocument",
    "Passage",
    "Retriever",
    "chunk_document",
    "make_embedder",
    "register_embedder",
    "rrf_fuse",
    "rrf_fuse_items",
]
