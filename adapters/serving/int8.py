"""int8 weights for the in-process backend on CPUs without bf16 units (``backend.quantize: int8``).

Every ``nn.Linear`` of the base model (the tied output layer included) but the MLP down projections is swapped for
:class:`Int8Linear`: the same module type to PEFT (a subclass of ``nn.Linear``, so LoRA still wraps it and adapters
load as before, in fp32), whose forward runs PyTorch's dynamic-quantized kernel (``torch.ao``/fbgemm: weights int8
per output channel, activations quantized per call over their full 8-bit range, fp32 out) on a packed copy of the
weights. The fp32 weight stays (PEFT reads its dtype and device, the output layer's is tied to the embedding); only
the matmuls change, and memory grows by the int8 copy (a quarter of the swapped weights): a speed option, not a
memory one. Inference only: the packed copy is made once and does not follow later writes to ``weight``.

Why the exceptions (SmolLM2-135M, last-token logits against fp32 on four contract sentences): every layer int8 with
torch's default 7-bit activation range, correlation 0.71-0.89; full 8-bit range, 0.88-0.91; full range with the
down projections (whose inputs carry the MLP's activation outliers) left fp32, 0.97-0.99.

>>> n = quantize_linear_int8(model)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .linear_swap import linear_shell, swap_linear

__all__ = ["Int8Linear", "quantize_linear_int8"]


class Int8Linear(nn.Linear):
    """An ``nn.Linear`` whose forward is the int8 dynamic-quantized matmul of its (frozen) weights."""

    _q: Any

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        new = linear_shell(cls, linear)
        linear.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
        # kept out of the module tree (no state_dict entry, nothing for PEFT's target matching to see)
        object.__setattr__(new, "_q", DynamicLinear.from_float(linear))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._q._packed_params._packed_params
        return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False)


KEEP_FP32 = ("down_proj",)  # Llama-family MLP output projections (see the module docstring)


def quantize_linear_int8(model: nn.Module, keep_fp32: tuple[str, ...] = KEEP_FP32) -> int:
    """Swap every plain ``nn.Linear`` under ``model`` (but those named in ``keep_fp32``) for :class:`Int8Linear`
    in place; returns how many."""
    return swap_linear(model, Int8Linear.from_linear, keep=keep_fp32)
