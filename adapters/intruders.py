"""Intruder dimensions, after Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence"
(arXiv:2410.21228), with PEFT's conventions (``peft.tuners.lora.intruders``): a top-k left singular vector of the
merged W' = W + ΔW (or of a full fine-tune's W_full) whose largest absolute cosine similarity with every singular
vector of the base W is below ε is an intruder. ``lora_intruders`` and ``weight_intruders`` count them per matrix into
an ``IntruderReport`` (gate 3 of ``rolora.adapters.gates``); ``mitigate_intruders`` applies PEFT's
``reduce_intruder_dimension`` and saves the mitigated adapter.

Importing this module is light: torch, transformers and PEFT load inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolora.errors import RoloraRuntimeError, UserError

from .base_models import base_model_info, check_base_compatible, check_model_folder
from .serving.base import verify_adapter_files

__all__ = ["IntruderReport", "count_intruders", "lora_intruders", "mitigate_intruders", "weight_intruders"]

log = logging.getLogger("rolora.adapters")


@dataclass(frozen=True)
class IntruderReport:
    """Intruder counts per adapted matrix; ``min_cos``: the smallest max-|cos| among each matrix's top-k."""

    top_k: int
    epsilon: float
    per_layer: dict[str, int]
    min_cos: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.per_layer.values())

    @property
    def layers(self) -> int:
        return len(self.per_layer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "top_k": self.top_k,
            "epsilon": self.epsilon,
            "total": self.total,
            "layers": self.layers,
            "layers_with_intruders": sum(1 for v in self.per_layer.values() if v),
            "per_layer": dict(self.per_layer),
            "min_cos": dict(self.min_cos),
        }


def count_intruders(weight: Any, merged: Any, top_k: int = 10, epsilon: float = 0.5) -> tuple[int, float]:
    """(intruders, smallest max-|cos|) among the top-k left singular vectors of ``merged`` vs all of ``weight``.

    PEFT's convention: ``cos = |U'ᵀ U|.max(dim=1)``, intruder when ``cos[:top_k] < epsilon``.
    """
    import torch

    if weight.shape != merged.shape:
        raise RoloraRuntimeError(f"weight shapes differ: {tuple(weight.shape)} vs {tuple(merged.shape)}")
    if torch.equal(weight, merged):
        return 0, 1.0  # identical matrices have identical singular vectors
    u_base = _left_singular_vectors(weight)
    u_new = _left_singular_vectors(merged)[:, :top_k]
    cos = (u_new.T @ u_base).abs().max(dim=1).values
    return int((cos < epsilon).sum()), float(cos.min())


def _left_singular_vectors(matrix: Any) -> Any:
    """U of the thin SVD, singular values descending. For a wide matrix (a ``down_proj``: 576 x 1536) U is V of its
    transpose, which LAPACK computes 1.75x faster on one thread: the same vectors up to sign, and the cosines are
    absolute."""
    import torch

    m = matrix.detach().float()
    if m.shape[0] < m.shape[1]:
        return torch.linalg.svd(m.T, full_matrices=False).Vh.T
    return torch.linalg.svd(m, full_matrices=False).U


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run LAPACK on one thread: these SVDs are small, and extra threads make them slower (8x on a busy 2-core box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _short(name: str) -> str:
    return name.removeprefix("base_model.model.")


def _matches(name: str, modules: Sequence[str] | None) -> bool:
    return modules is None or any(name == m or name.endswith("." + m) for m in modules)


def lora_intruders(
    peft_model: Any,
    top_k: int = 10,
    epsilon: float = 0.5,
    adapter_name: str = "default",
    modules: Sequence[str] | None = None,
) -> IntruderReport:
    """Intruder dimensions of every LoRA-adapted matrix of a PEFT model (W vs W + ΔW)."""
    from peft.tuners.lora import LoraLayer

    per_layer: dict[str, int] = {}
    min_cos: dict[str, float] = {}
    with _one_thread():
        for name, module in peft_model.named_modules():
            if not isinstance(module, LoraLayer) or not _matches(name, modules):
                continue
            layer: Any = module
            if adapter_name not in layer.lora_A and adapter_name not in layer.lora_embedding_A:
                continue
            weight = layer.get_base_layer().weight
            if weight.dim() != 2:
                continue
            delta = layer.get_delta_weight(adapter_name)
            n, c = count_intruders(weight, weight + delta, top_k, epsilon)
            per_layer[_short(name)], min_cos[_short(name)] = n, c
    if not per_layer:
        raise UserError(f"no LoRA-adapted matrix found for adapter '{adapter_name}' (modules filter: {modules})")
    return IntruderReport(top_k, epsilon, per_layer, min_cos)


def weight_intruders(
    base_model: Any, new_model: Any, top_k: int = 10, epsilon: float = 0.5, modules: Sequence[str] | None = None
) -> IntruderReport:
    """Intruder dimensions of a full fine-tune: W_full vs W for the same ``nn.Linear`` layers (``lm_head`` aside).

    ``modules``: name suffixes to keep (e.g. ``["q_proj", "v_proj"]`` to compare with a LoRA on those).
    """
    from torch import nn

    new_modules = dict(new_model.named_modules())
    per_layer: dict[str, int] = {}
    min_cos: dict[str, float] = {}
    with _one_thread():
        for name, module in base_model.named_modules():
            if not isinstance(module, nn.Linear) or name.rpartition(".")[2] == "lm_head" or not _matches(name, modules):
                continue
            other = new_modules.get(name)
            if not isinstance(other, nn.Linear):
                raise RoloraRuntimeError(f"layer {name} of the base is missing from the fine-tuned model")
            n, c = count_intruders(module.weight, other.weight, top_k, epsilon)
            per_layer[name], min_cos[name] = n, c
    if not per_layer:
        raise UserError(f"no linear layer of the base matches {modules}; use names such as q_proj, v_proj")
    return IntruderReport(top_k, epsilon, per_layer, min_cos)


def mitigate_intruders(
    base_dir: Path | str,
    adapter_dir: Path | str,
    out_dir: Path | str,
    *,
    top_k: int = 10,
    epsilon: float = 0.5,
    mitigation_lambda: float = 0.75,
) -> Path:
    """Write a copy of a LoRA adapter with its intruder dimensions damped (PEFT's ``reduce_intruder_dimension``).

    Trades some task accuracy for less forgetting (Shuttleworth et al. 2024, Fig. 8); register the result as a new
    version and gate it like any other. Written atomically; ``out_dir`` must not exist.
    """
    import torch
    from peft import PeftModel
    from peft.tuners.lora.intruders import reduce_intruder_dimension
    from transformers import AutoModelForCausalLM

    folder, out = Path(adapter_dir), Path(out_dir)
    if check_model_folder(folder) != "lora":
        raise UserError(f"{folder} is a full model; intruder mitigation applies to LoRA adapters only")
    check_base_compatible(folder, base_dir)
    if out.exists():
        raise UserError(f"{out} exists; choose a new folder for the mitigated adapter")
    info = base_model_info(base_dir)
    base = AutoModelForCausalLM.from_pretrained(info.path, dtype=torch.float32)
    verify_adapter_files(folder.name, folder)
    model = PeftModel.from_pretrained(base, str(folder))
    new_name = "intruder_reduced"
    with _one_thread():
        reduce_intruder_dimension(
            model,
            old_adapter_name="default",
            new_adapter_name=new_name,
            top_k=top_k,
            threshold_epsilon=epsilon,
            mitigation_lambda=mitigation_lambda,
            logging_sink=log.debug,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), selected_adapters=[new_name], safe_serialization=True)
        saved = tmp / new_name if (tmp / new_name / "adapter_config.json").is_file() else tmp
        os.rename(saved, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
