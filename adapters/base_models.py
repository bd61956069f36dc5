"""Base models and model folders: which base an adapter or a full model was made from, and whether a folder holds
safe weights of a known kind (``lora`` or ``full``), for the registry, the gates and the serving backends.

Importing this module is light: it reads JSON and safetensors headers only.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rolora.errors import RoloraRuntimeError, UserError

from .serving.base import MANIFEST, check_adapter_folder

__all__ = ["BaseModelInfo", "Kind", "base_model_info", "check_base_compatible", "check_model_folder", "detect_kind"]

log = logging.getLogger("rolora.adapters")

Kind = Literal["lora", "full"]
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Trainer state files written beside a checkpoint: never copied into the registry, never loaded.
_TRAINING_STATE = re.compile(r"^(training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth)$")


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise RoloraRuntimeError(f"{what} {path} is unreadable ({e}); restore or delete it") from e
    if not isinstance(data, dict):
        raise RoloraRuntimeError(f"{what} {path} is not a JSON object; restore or delete it")
    return data


@dataclass(frozen=True)
class BaseModelInfo:
    """What identifies a base model folder: its id and the SHA-256 of its weights."""

    path: Path
    model_id: str  # hub id from rolora_model.json, else config.json's _name_or_path, else the folder name
    weights_sha256: str | None
    alias: str | None
    config: Mapping[str, Any]


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _weights_sha(folder: Path) -> str | None:
    """SHA-256 of ``model.safetensors`` (or of the shard index), cached by path, size and mtime."""
    from rolora.models import sha256_file

    for fname in ("model.safetensors", "model.safetensors.index.json"):
        f = folder / fname
        if f.is_file():
            st = f.stat()
            key = (str(f.resolve()), st.st_size, st.st_mtime_ns)
            if key not in _SHA_CACHE:
                _SHA_CACHE[key] = sha256_file(f)
            return _SHA_CACHE[key]
    return None


def base_model_info(base_dir: Path | str) -> BaseModelInfo:
    """Identify a base model folder (prepared by rolora or any transformers folder with safetensors weights)."""
    folder = Path(base_dir).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"base model {folder} is not a model folder (no config.json); run `rolora models prepare`")
    config = _read_json(folder / "config.json", "model config")
    prepared = folder / "rolora_model.json"
    if prepared.is_file():
        meta = _read_json(prepared, "model manifest")
        sha = meta.get("weights_sha256") or _weights_sha(folder)
        model_id = str(meta.get("hub_id") or config.get("_name_or_path") or folder.name)
        alias = meta.get("alias")
    else:
        sha = _weights_sha(folder)
        model_id = str(config.get("_name_or_path") or folder.name)
        alias = None
    return BaseModelInfo(folder.resolve(), model_id, sha, str(alias) if alias else None, config)


def _tail(name: str) -> str:
    return name.rstrip("/").rpartition("/")[2].lower()


def _names_match(recorded: str, base: BaseModelInfo) -> bool:
    recorded = recorded.rstrip("/")
    known = {str(base.path), base.model_id, *([base.alias] if base.alias else [])}
    if recorded in known:
        return True
    as_path = Path(recorded).expanduser()
    if as_path.is_dir():
        if as_path.resolve() == base.path:
            return True
        if (as_path / "config.json").is_file():
            other = base_model_info(as_path)
            if other.weights_sha256 and base.weights_sha256:
                return other.weights_sha256 == base.weights_sha256
        return False
    # A folder moved between machines keeps its last component: the alias or the hub id's name.
    return _tail(recorded) in {_tail(k) for k in known}


def _base_mismatch(ref: str, recorded_sha: str | None, recorded_name: str | None, base: BaseModelInfo) -> str | None:
    """None when the recorded base is ``base``; else the one-line reason."""
    if recorded_sha and base.weights_sha256:
        if recorded_sha == base.weights_sha256:
            return None
        return (
            f"adapter '{ref}' was trained on base weights sha256 {recorded_sha[:12]}…, but {base.path} has "
            f"{base.weights_sha256[:12]}…; use the base it was trained on or retrain it on this one"
        )
    if not recorded_name or _names_match(recorded_name, base):
        return None
    return (
        f"adapter '{ref}' was trained on '{recorded_name}', not on '{base.model_id}' ({base.path}); "
        "use the base it was trained on or retrain it on this one"
    )


_ARCH_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def _arch_mismatch(ref: str, config: Mapping[str, Any], base: BaseModelInfo) -> str | None:
    diffs = [
        f"{k} {config.get(k)!r} != {base.config.get(k)!r}" for k in _ARCH_KEYS if config.get(k) != base.config.get(k)
    ]
    if not diffs:
        return None
    return f"model '{ref}' is not a fine-tune of {base.model_id} ({'; '.join(diffs)}); use the base it was trained on"


def detect_kind(folder: Path) -> Kind:
    """``"lora"`` for a PEFT adapter folder (adapter_config.json), ``"full"`` for a model folder (config.json)."""
    if (folder / "adapter_config.json").is_file():
        return "lora"
    if (folder / "config.json").is_file():
        return "full"
    raise UserError(
        f"{folder} is neither a PEFT adapter (adapter_config.json) nor a model folder (config.json); "
        "point at the folder that save_pretrained wrote"
    )


def _check_weights(ref: str, folder: Path, kind: Kind) -> list[Path]:
    """Refuse pickled or missing weights; returns the files to copy (trainer state pickles are left behind)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    pickles = [p for p in files if p.suffix.lower() in _PICKLE_SUFFIXES and not _TRAINING_STATE.match(p.name)]
    if kind == "lora":
        check_adapter_folder(ref, folder)  # names the pickle when there is no adapter_model.safetensors
    elif not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
        if pickles:
            raise UserError(
                f"model '{ref}': {', '.join(p.name for p in pickles)} is a pickle, which rolora never loads; "
                "re-save it with safetensors (save_pretrained(safe_serialization=True))"
            )
        raise UserError(f"model '{ref}': {folder} has no model.safetensors")
    if pickles:
        raise UserError(
            f"'{ref}': {folder} also holds {', '.join(p.name for p in pickles)}, a pickle rolora never loads; "
            "delete it (the safetensors weights are enough)"
        )
    left = [p.name for p in files if _TRAINING_STATE.match(p.name)]
    if left:
        log.info("'%s': trainer state %s is not copied into the registry", ref, ", ".join(left))
    return [p for p in files if not _TRAINING_STATE.match(p.name) and p.name != MANIFEST]


def check_model_folder(folder: Path | str, ref: str | None = None) -> Kind:
    """The kind of an adapter or model folder; ``UserError`` when its weights are pickles or missing."""
    folder = Path(folder)
    kind = detect_kind(folder)
    _check_weights(ref or folder.name, folder, kind)
    return kind


def _recorded_base_name(folder: Path) -> str | None:
    cfg_path = folder / "adapter_config.json"
    if cfg_path.is_file():
        name = _read_json(cfg_path, "adapter config").get("base_model_name_or_path")
        return str(name) if name else None
    return None


def check_base_compatible(folder: Path | str, base_dir: Path | str, ref: str | None = None) -> None:
    """Raise ``UserError`` when the adapter or model in ``folder`` was not trained on ``base_dir``.

    Compares the base weights' SHA-256 recorded in a registry manifest with the base's (``rolora_model.json`` or
    the weights file); without one, the adapter's ``base_model_name_or_path``. A full model is compared by
    architecture (model type, sizes, vocabulary).
    """
    folder = Path(folder)
    ref = ref or folder.name
    base = base_model_info(base_dir)
    kind = detect_kind(folder)
    manifest = folder / MANIFEST
    recorded_sha: str | None = None
    recorded_name: str | None = None
    if manifest.is_file():
        meta = _read_json(manifest, "adapter manifest")
        recorded_sha = meta.get("base_weights_sha256")
        recorded_name = meta.get("base_model")
    if kind == "lora":
        reason = _base_mismatch(ref, recorded_sha, recorded_name or _recorded_base_name(folder), base)
    else:
        reason = _base_mismatch(ref, recorded_sha, None, base) or _arch_mismatch(
            ref, _read_json(folder / "config.json", "model config"), base
        )
    if reason:
        raise UserError(reason)
