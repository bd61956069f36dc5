"""Adapters shipped with a project: packed from the registry into a small folder that can be committed, and
installed from it into any registry (``make demo`` installs the example domain's).

A packed folder holds the LoRA weights cast to bfloat16 (``adapter_model.safetensors``), the PEFT config with the
base model named by its hub id (no path of the machine that trained it), the data card the adapter was trained on,
``manifest.json`` (role, domain, base weights' sha256, training config, metrics, gate results, and the sha256 of
every file of the folder) and ``gate_report.md``. Installing verifies each file against the manifest and the base
weights against the recorded sha256, registers the folder as a new version (or finds the version already holding
the same weights) and promotes it; an adapter whose recorded gates failed is never promoted.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rolora.errors import UserError
from rolora.fileutil import atomic_write_text

from .base_models import base_model_info

__all__ = ["MAX_SHIPPED_BYTES", "install_shipped", "pack_adapter"]

MAX_SHIPPED_BYTES = 8 * 1024 * 1024  # one shipped adapter's weights, at most
_WEIGHTS = "adapter_model.safetensors"
_CONFIG = "adapter_config.json"


def _scrub(value: Any) -> Any:
    """Absolute paths (of the machine that trained the adapter) become their last component."""
    if isinstance(value, Mapping):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and value.startswith("/") and "\n" not in value and len(value) < 1000:
        return Path(value).name
    return value


def _gate_markdown(name: str, gates: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    lines = [f"# {name}: quality gates", "", f"passed: {bool(gates.get('passed'))}", ""]
    lines += ["| gate | status | summary |", "|---|---|---|"]
    for g in gates.get("gates", []) or []:
        summary = str(g.get("summary", "")).replace("|", "/")
        lines.append(f"| {g.get('name')} | {g.get('status', '')} | {summary} |")
    role = metrics.get("role") or {}
    if role:
        lines += ["", "Role metrics on the role's test split (tuned vs base):", ""]
        keys = sorted({k for side in role.values() if isinstance(side, Mapping) for k in side})
        lines += ["| metric | " + " | ".join(role) + " |", "|---|" + "---|" * len(role)]
        for k in keys:
            cells = [role[s].get(k, "") if isinstance(role[s], Mapping) else "" for s in role]
            lines.append(f"| {k} | " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    lines += [
        "",
        "The gates and role metrics were measured on the float32 weights before the bfloat16 cast of the shipped file.",
        "",
    ]
    return "\n".join(lines)


def pack_adapter(registry: Any, ref: str, out_root: Path | str, data_root: Path | str | None = None) -> Path:
    """Write ``out_root/<name>/`` from registered ``ref`` (a bare name: its latest version), with the data card of
    ``data_root/<domain>/<role>/`` (``$ROLORA_HOME/data``, where ``rolora train`` builds it) when there is one.
    Refused when the recorded gates failed or were never run, when it is not a LoRA adapter, or when its weights
    exceed 8 MB in bfloat16 (train with a lower ``--rank``). Written to a temp folder and renamed into place."""
    import torch
    from safetensors.torch import load_file, save_file

    from rolora.models import sha256_file

    rec = registry.latest(ref)
    if rec.kind != "lora":
        raise UserError(f"{rec.ref} is a {rec.kind} model; only LoRA adapters are shipped")
    if not rec.gates:
        raise UserError(f"{rec.ref} has no gate results; run `rolora adapters gate {rec.ref}` first")
    if rec.failed_gates:
        raise UserError(f"{rec.ref} failed its gates ({', '.join(rec.failed_gates)}); it is not shipped")
    out = Path(out_root) / rec.name
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{rec.name}.", suffix=".tmp", dir=out.parent))
    try:
        tensors = load_file(str(rec.path / _WEIGHTS))
        cast = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
        save_file(cast, str(tmp / _WEIGHTS), metadata={"format": "pt"})
        size = (tmp / _WEIGHTS).stat().st_size
        if size > MAX_SHIPPED_BYTES:
            raise UserError(
                f"{rec.ref}: {size / 2**20:.1f} MB of weights in bfloat16 > 8 MB; retrain with a lower --rank"
            )
        peft_cfg = json.loads((rec.path / _CONFIG).read_text(encoding="utf-8"))
        peft_cfg["base_model_name_or_path"] = rec.base_model
        (tmp / _CONFIG).write_text(json.dumps(peft_cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        card_path = Path(data_root) / rec.domain / rec.role / "data_card.json" if data_root is not None else None
        if card_path is not None and card_path.is_file():
            card = json.loads(card_path.read_text(encoding="utf-8"))
            (tmp / "data_card.json").write_text(json.dumps(_scrub(card), indent=2) + "\n", encoding="utf-8")
        (tmp / "gate_report.md").write_text(_gate_markdown(rec.ref, rec.gates, rec.metrics), encoding="utf-8")
        manifest = _scrub(rec.manifest())
        for drop in ("stage", "history", "created", "version"):
            manifest.pop(drop, None)
        manifest["shipped_from"] = rec.ref
        manifest["dtype"] = "bfloat16"
        manifest["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.name != "manifest.json"}
        atomic_write_text(tmp / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        old = out.with_name(f".{rec.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def install_shipped(registry: Any, folder: Path | str, base_dir: Path | str, *, promote: bool = True) -> Any:
    """Register a packed folder (verified against its manifest and the base model) and promote it; a version that
    already holds the same weights is reused, so installing twice changes nothing. Returns the record."""
    from rolora.models import sha256_file

    folder = Path(folder)
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        raise UserError(f"{folder}: no manifest.json; pack it with `rolora adapters pack NAME --out DIR`")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
        name, role, domain = manifest["name"], manifest["role"], manifest["domain"]
        files: dict[str, str] = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{mpath}: not a shipped-adapter manifest ({e}); pack it again") from e
    for fname, sha in files.items():
        if not (folder / fname).is_file() or sha256_file(folder / fname) != sha:
            raise UserError(
                f"{folder / fname}: missing or changed since it was packed (sha256); restore it or pack it again"
            )
    base = base_model_info(base_dir)
    want = manifest.get("base_weights_sha256")
    if want and base.weights_sha256 and want != base.weights_sha256:
        raise UserError(
            f"{folder}: trained on base weights sha256 {want[:12]}…, but {base.path} has {base.weights_sha256[:12]}…; "
            "prepare the same base model (`rolora models prepare`) or retrain"
        )
    weights = files.get(_WEIGHTS)
    rec = next(
        (r for r in registry.list() if r.name == name and weights and r.files.get(_WEIGHTS) == weights),
        None,
    )
    if rec is None:
        rec = registry.register(
            folder,
            name,
            role,
            domain,
            base_dir,
            manifest.get("data_card_hash"),
            manifest.get("training_config") or {},
            {**(manifest.get("metrics") or {}), "shipped_from": manifest.get("shipped_from")},
        )
        if manifest.get("gates"):
            rec = registry.record_gates(rec.ref, manifest["gates"])
    if promote and rec.stage != "promoted":
        rec = registry.promote(rec.ref)
    return rec
