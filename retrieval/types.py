"""Plain data types shared by the retrieval subsystem."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Chunk", "LoadedDocument", "Passage", "SkippedFile"]


@dataclass(frozen=True)
class LoadedDocument:
    """A document's text as rolora stores it: every chunk offset refers to ``text``."""

    doc_id: str
    text: str
    source: str  # file path (or path#line for JSONL records)
    content_hash: str  # sha256 of the raw bytes (or of the record) that produced ``text``
    metadata: dict[str, Any] = field(default_factory=dict)
    flags: tuple[str, ...] = ()  # e.g. ("invalid-utf8",)


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass(frozen=True)
class Chunk:
    """A span of a document: ``document.text[start:end] == text``."""

    chunk_id: str
    doc_id: str
    start: int
    end: int
    text: str
    heading_path: str

    @property
    def int_id(self) -> int:
        """A stable positive 63-bit id (used by FAISS and SQLite)."""
        return int(self.chunk_id[:15], 16)


@dataclass(frozen=True)
class Passage:
    """A search hit, citable as ``doc_id[start:end]``."""

    text: str
    score: float
    doc_id: str
    start: int
    end: int
    heading_path: str
    chunk_id: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def citation(self) -> str:
        """The project's citation format: ``doc_id[start:end]``."""
        return f"{self.doc_id}[{self.start}:{self.end}]"
