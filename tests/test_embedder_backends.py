"""models.embedder_backend: the real MiniLM exported to ONNX (float32 and dynamic int8), run by onnxruntime.

The exports are made once into TEST_HOME (keyed by the source weights' SHA-256) and reused by later runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import EXAMPLES, TEST_HOME, make_config

pytest.importorskip("onnxruntime", reason="the onnx extra: pip install 'rolora[onnx]'")

pytestmark = pytest.mark.slow


def _sentences(n: int = 48) -> list[str]:
    """Real contract sentences (and one over MiniLM's 256 tokens) from the example corpus."""
    text = (EXAMPLES / "loan_agreement.txt").read_text(encoding="utf-8")
    sents = [s.strip() for s in re.split(r"(?<=[.;:])\s+", text) if len(s.strip()) > 40]
    return [*sents[:n], " ".join(sents[:40])]


@pytest.fixture(scope="module")
def onnx_embedders() -> dict[str, Any]:
    from rolora.retrieval import make_embedder

    return {b: make_embedder("all-minilm-l6-v2", home=TEST_HOME, backend=b) for b in ("onnx", "onnx-int8")}


def test_onnx_matches_torch(embedder: Any, onnx_embedders: dict[str, Any]) -> None:
    texts = _sentences()
    ref = embedder.embed(texts)
    fp32, int8 = (onnx_embedders[b].embed(texts, batch_size=16) for b in ("onnx", "onnx-int8"))
    assert fp32.shape == int8.shape == ref.shape and fp32.dtype == np.float32
    assert np.allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    cos32, cos8 = (fp32 * ref).sum(1), (int8 * ref).sum(1)
    assert cos32.min() >= 0.999, cos32.min()
    assert cos8.mean() >= 0.98 and cos8.min() >= 0.95, (cos8.mean(), cos8.min())
    # batching by length does not change a text's vector, nor the order of the rows
    one = np.stack([onnx_embedders["onnx"].embed([t])[0] for t in texts[:5]])
    assert np.allclose(one, fp32[:5], atol=1e-4)
    assert onnx_embedders["onnx"].embed([]).shape == (0, embedder.dim)
    # the nearest sentence is the same whichever backend embedded it
    assert (np.argsort(-(ref @ ref[0]))[:2] == np.argsort(-(int8 @ int8[0]))[:2]).all()


def test_export_is_cached_outside_the_wheel(monkeypatch: pytest.MonkeyPatch, onnx_embedders: dict[str, Any]) -> None:
    import json

    from rolora import models

    folders = {b: models.prepare_onnx_embedder("all-minilm-l6-v2", b, TEST_HOME) for b in ("onnx", "onnx-int8")}
    stamps = {b: (f / "model.onnx").stat().st_mtime_ns for b, f in folders.items()}

    def no_export(*_: Any, **__: Any) -> Any:
        raise AssertionError("exported again")

    monkeypatch.setattr(models, "_export_onnx", no_export)
    monkeypatch.setattr("onnxruntime.quantization.quantize_dynamic", no_export)
    for b, folder in folders.items():
        assert models.prepare_onnx_embedder("all-minilm-l6-v2", b, TEST_HOME) == folder
        assert (folder / "model.onnx").stat().st_mtime_ns == stamps[b]
        assert folder.is_relative_to(TEST_HOME / "models" / "onnx")
        meta = json.loads((folder / "rolora_onnx.json").read_text())
        assert meta["backend"] == b and meta["dim"] == 384 and meta["source_sha256"]
    wheel = models.resolve_embedder("all-minilm-l6-v2")
    assert not list(wheel.rglob("*.onnx"))  # the wheel's folder is never written
    assert not [p for p in folders["onnx"].parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_backend_names_and_validation() -> None:
    from rolora.config import Config
    from rolora.models import embedder_name
    from rolora.retrieval import make_embedder

    assert embedder_name("all-minilm-l6-v2") == "all-minilm-l6-v2"
    assert embedder_name("all-minilm-l6-v2", backend="onnx-int8") == "all-minilm-l6-v2+onnx-int8"
    with pytest.raises(ValueError, match="onnx-int8"):
        make_embedder("all-minilm-l6-v2", backend="fp16")
    assert Config().models.embedder_backend == "torch"
    with pytest.raises(ValueError, match="embedder_backend"):
        Config.model_validate({"models": {"embedder_backend": "tensorrt"}})


def test_index_of_another_backend_is_refused(tmp_path: Path, embedder: Any, onnx_embedders: dict[str, Any]) -> None:
    from rolora.errors import IndexError_
    from rolora.retrieval import Retriever

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("nda_mutual.txt", "loan_agreement.txt"):
        (corpus / name).write_text((EXAMPLES / name).read_text(encoding="utf-8"), encoding="utf-8")
    cfg = make_config(tmp_path / "home", c={"corpus": [str(corpus)]})
    Retriever("c", cfg, embedder).ingest(progress=False)

    int8 = onnx_embedders["onnx-int8"]
    cfg.models.embedder_backend = "onnx-int8"
    r = Retriever("c", cfg, int8)
    with pytest.raises(IndexError_, match=r"built with embedder 'all-minilm-l6-v2', .*--domain c --rebuild"):
        r.search("governing law", k=3)
    with pytest.raises(IndexError_, match=r"embedded with 'all-minilm-l6-v2', not 'all-minilm-l6-v2\+onnx-int8'"):
        r.ingest(progress=False)
    rep = r.ingest(rebuild=True, progress=False)
    assert rep.embedded == rep.chunks_total > 0  # no torch vector reused for int8
    assert r.search("governing law", k=3)
    # one cache, keyed by backend: the torch vectors stay beside the int8 ones
    assert r.store.cached_hashes("all-minilm-l6-v2+onnx-int8") == r.store.cached_hashes("all-minilm-l6-v2")
    r.close()

    cfg.models.embedder_backend = "torch"  # and back: refused again until rebuilt, which reuses the torch vectors
    back = Retriever("c", cfg, embedder)
    with pytest.raises(IndexError_, match=r"built with embedder 'all-minilm-l6-v2\+onnx-int8'"):
        back.search("governing law", k=3)
    rep = back.ingest(rebuild=True, progress=False)
    assert rep.embedded == 0 and rep.embedding_cache_hits == rep.chunks_total
    assert back.search("governing law", k=3)
    back.close()
