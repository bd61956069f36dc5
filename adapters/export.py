"""A registered LoRA adapter merged into its base model (PEFT ``merge_and_unload``) and saved as a full safetensors
model folder, for a single-role deployment (``rolora adapters export NAME@V --out DIR``)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from rolora.errors import UserError
from rolora.fileutil import atomic_write_text

from .base_models import _check_weights, _weights_sha, base_model_info
from .serving.base import verify_adapter_files

__all__ = ["export_merged"]


def export_merged(
    registry: Any, ref: str, out_dir: Path | str, base_dir: Path | str, *, overwrite: bool = False
) -> Path:
    """Merge adapter ``ref`` of ``registry`` into ``base_dir`` and save a full model folder with the tokenizer at
    ``out_dir``, written atomically. Its ``rolora_model.json`` names the adapter it was merged from and the new
    weights' SHA-256."""
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty; choose another folder or pass overwrite")
    rec = registry.check_base(ref, base_dir)
    _check_weights(rec.ref, rec.path, rec.kind)
    verify_adapter_files(rec.ref, rec.path)
    if rec.kind != "lora":
        raise UserError(f"'{rec.ref}' is already a full model; use its folder {rec.path} directly")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rolora.models import sha256_file

    base = base_model_info(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(rec.path)).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(base.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        meta = {
            "alias": rec.ref,
            "hub_id": base.model_id,
            "merged_from": rec.ref,
            "base_weights_sha256": base.weights_sha256,
            "weights_sha256": _weights_sha(tmp),
            "adapter_sha256": sha256_file(rec.path / "adapter_model.safetensors"),
            "role": rec.role,
            "domain": rec.domain,
        }
        atomic_write_text(tmp / "rolora_model.json", json.dumps(meta, indent=2) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
