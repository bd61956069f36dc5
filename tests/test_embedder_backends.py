"""models.embedder_backend: the real MiniLM exported to ONNX (float32 and dynamic int8), run by onnxruntime, and
quantised to static int8 by NNCF, run by OpenVINO.

The exports are made once into TEST_HOME (keyed by the source weights' SHA-256) and reused by later runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import EXAMPLES, REPO, TEST_HOME, make_config

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

    folders = {b: models.prepare_exported_embedder("all-minilm-l6-v2", b, TEST_HOME) for b in ("onnx", "onnx-int8")}
    stamps = {b: (f / "model.onnx").stat().st_mtime_ns for b, f in folders.items()}

    def no_export(*_: Any, **__: Any) -> Any:
        raise AssertionError("exported again")

    monkeypatch.setattr(models, "_export_onnx", no_export)
    monkeypatch.setattr("onnxruntime.quantization.quantize_dynamic", no_export)
    for b, folder in folders.items():
        assert models.prepare_exported_embedder("all-minilm-l6-v2", b, TEST_HOME) == folder
        assert (folder / "model.onnx").stat().st_mtime_ns == stamps[b]
        assert folder.is_relative_to(TEST_HOME / "models" / "onnx")
        meta = json.loads((folder / "rolora_onnx.json").read_text())
        assert meta["backend"] == b and meta["dim"] == 384 and meta["source_sha256"]
    wheel = models.resolve_embedder("all-minilm-l6-v2")
    assert not list(wheel.rglob("*.onnx"))  # the wheel's folder is never written
    assert not [p for p in folders["onnx"].parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_backend_names_and_validation() -> None:
    from rolora.config import Config
    from rolora.models import embedder_name, split_embedder_name
    from rolora.retrieval import make_embedder

    assert embedder_name("all-minilm-l6-v2") == "all-minilm-l6-v2"
    assert embedder_name("all-minilm-l6-v2", backend="onnx-int8") == "all-minilm-l6-v2+onnx-int8"
    for backend in ("torch", "torch-bf16", "onnx-int8", "openvino-int8"):  # the recorded name read back
        assert split_embedder_name(embedder_name("all-minilm-l6-v2", backend=backend)) == ("all-minilm-l6-v2", backend)
    assert split_embedder_name("/models/a+b/minilm") == ("/models/a+b/minilm", "torch")  # a '+' of the path is not one
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


# -- openvino-int8: static int8 (NNCF), run by OpenVINO; CPUs with int8 dot-product units only ------------------------
def _openvino() -> None:
    import importlib.util

    from conftest import missing_real_part

    if importlib.util.find_spec("openvino") is None or importlib.util.find_spec("nncf") is None:
        missing_real_part("openvino and nncf are not installed", "pip install 'rolora[openvino]' (make setup does)")


def test_openvino_int8_matches_torch_where_the_cpu_has_int8_dot_units(embedder: Any, tmp_path: Path) -> None:
    """On a CPU with VNNI/AMX: vectors close to torch's and the same neighbours. Without them (AVX2 only; with oneDNN
    held to AVX2 on a VNNI CPU the int8 model's vectors fell to a cosine of 0.53 with its own VNNI ones and it ran
    3.4x slower): refused with the setting to change, before anything is exported."""
    from rolora.errors import ConfigError
    from rolora.hardware import cpu_has_int8_dot_units
    from rolora.retrieval import make_embedder

    _openvino()
    if not cpu_has_int8_dot_units():
        with pytest.raises(ConfigError, match=r"openvino-int8 needs a CPU with int8 dot-product units.*backend: torch"):
            make_embedder("all-minilm-l6-v2", home=TEST_HOME, backend="openvino-int8")
        return
    ov = make_embedder("all-minilm-l6-v2", home=TEST_HOME, backend="openvino-int8")
    assert re.fullmatch(r"all-minilm-l6-v2\+openvino-int8\.[0-9a-f]{8}", ov.name) and ov.dim == embedder.dim
    texts = _sentences()
    ref, vecs = embedder.embed(texts), ov.embed(texts, batch_size=16)
    assert vecs.shape == ref.shape and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    cos = (vecs * ref).sum(1)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97, (cos.mean(), cos.min())
    one = np.stack([ov.embed([t])[0] for t in texts[:5]])  # fixed int8 ranges: alone or in a padded batch, ~the same
    assert (one * vecs[:5]).sum(1).min() >= 0.999
    assert ov.embed([]).shape == (0, embedder.dim)
    # the same nearest sentences: a query's top 3 by int8 holds torch's top 1
    for i in range(0, len(texts), 7):
        assert np.argsort(-(ref @ ref[i]))[1] in np.argsort(-(vecs @ vecs[i]))[1:4]

    # an index ingested in int8 is searched with queries embedded exactly (torch float32): the agent's cosine
    # thresholds see the cosines they were chosen on, and the top passage is torch's
    from rolora.retrieval import Retriever

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("nda_mutual.txt", "loan_agreement.txt", "software_license.txt"):
        (corpus / name).write_text((EXAMPLES / name).read_text(encoding="utf-8"), encoding="utf-8")
    found = {}
    for backend, emb in (("torch", embedder), ("openvino-int8", ov)):
        cfg = make_config(tmp_path / f"home-{backend}", c={"corpus": [str(corpus)]})
        cfg.models.embedder_backend = backend  # type: ignore[assignment]
        r = Retriever("c", cfg, emb)
        r.ingest(progress=False)
        assert r.query_embedder is embedder  # float32 queries on both
        found[backend] = [
            r.search(q, k=3)[0].chunk_id
            for q in ("Which law governs the agreement?", "interest rate on the loan", "term of the license")
        ]
        r.close()
    assert found["openvino-int8"] == found["torch"]


def test_openvino_export_is_reused_redone_for_new_calibration_and_atomic(monkeypatch: pytest.MonkeyPatch) -> None:
    """The export lives under $ROLORA_HOME/models/openvino, is reused while the weights and calibration texts are the
    same, and is made again when the calibration texts change; an export that fails leaves the last good one."""
    import json

    from rolora import models
    from rolora.errors import RoloraRuntimeError

    _openvino()
    folder = models.prepare_exported_embedder("all-minilm-l6-v2", "openvino-int8", TEST_HOME)
    assert folder.is_relative_to(TEST_HOME / "models" / "openvino")
    meta = json.loads((folder / "rolora_onnx.json").read_text())
    texts, sha = models._calibration_texts()
    assert meta["calibration_sha256"] == sha and len(texts) >= 100 and meta["nncf"] and meta["openvino"]
    assert (folder / "model.xml").is_file() and (folder / "model.bin").stat().st_size < 40 << 20  # int8: < fp32's 90 MB
    assert not (folder / "model.onnx").exists()
    stamp = (folder / "model.bin").stat().st_mtime_ns

    def no_export(*_: Any, **__: Any) -> Any:
        raise AssertionError("exported again")

    monkeypatch.setattr(models, "_export_openvino_int8", no_export)
    assert models.prepare_exported_embedder("all-minilm-l6-v2", "openvino-int8", TEST_HOME) == folder

    # other calibration texts: another recorded name (an index of the old export is refused, its vectors not reused)
    # and exported again; here the export fails, and the last good export is still there
    name = models.embedder_name("all-minilm-l6-v2", TEST_HOME, "openvino-int8")
    monkeypatch.setattr(models, "_calibration_texts", lambda: (texts[:8], "0" * 64))
    other = models.embedder_name("all-minilm-l6-v2", TEST_HOME, "openvino-int8")
    assert other != name and other.startswith("all-minilm-l6-v2+openvino-int8.")
    assert models.embedder_name("all-minilm-l6-v2", TEST_HOME, "onnx-int8") == "all-minilm-l6-v2+onnx-int8"
    failed = r"could not export embedder 'all-minilm-l6-v2' for backend openvino-int8"
    with pytest.raises(RoloraRuntimeError, match=failed):
        models.prepare_exported_embedder("all-minilm-l6-v2", "openvino-int8", TEST_HOME)
    assert (folder / "model.bin").stat().st_mtime_ns == stamp
    assert json.loads((folder / "rolora_onnx.json").read_text()) == meta
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_calibration_contracts_are_the_example_corpus_cut_in_pieces() -> None:
    """The shipped calibration file is what ``calibration_contract_pieces`` cuts from examples/contracts (documents
    only: no question or answer of any split), and the calibration reads it with the packaged general prose."""
    import json

    from rolora import models

    shipped = REPO / "retrieval" / "calibration_contracts.jsonl"
    rows = [json.loads(line) for line in shipped.read_text(encoding="utf-8").splitlines()]
    assert rows == models.calibration_contract_pieces(EXAMPLES)
    assert {r["doc"] for r in rows} == {p.stem for p in EXAMPLES.glob("*.txt")}
    assert all(len(str(r["text"])) <= 1000 for r in rows)
    texts, sha = models._calibration_texts()
    assert texts[-len(rows) :] == [r["text"] for r in rows] and len(texts) > len(rows) and len(sha) == 64


def test_openvino_int8_is_refused_without_int8_dot_units(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The refusal itself, on any CPU: one line naming the setting, raised before an export is made."""
    from rolora import hardware
    from rolora.errors import ConfigError
    from rolora.retrieval.embedder import OnnxEmbedder

    monkeypatch.setattr(hardware, "cpu_has_int8_dot_units", lambda *_: False)
    refused = r"^models.embedder_backend: openvino-int8 needs .* set models.embedder_backend: torch"
    with pytest.raises(ConfigError, match=refused):
        OnnxEmbedder("all-minilm-l6-v2", "openvino-int8", home=tmp_path)
    assert not (tmp_path / "models").exists()
