"""int8 weights for the in-process backend on CPUs without bf16 units (``backend.quantize: int8``).

Every ``nn.Linear`` of the base model (the tied output layer included) but the MLP down projections is swapped for
:class:`Int8Linear`: the same module type to PEFT (a subclass of ``nn.Linear``, so LoRA still wraps it and adapters
load as before, in fp32), whose forward runs PyTorch's dynamic-quantized kernel (``torch.ao``/fbgemm: weights int8
per output channel, activations quantized per call over their full 8-bit range, fp32 out) on a packed copy of the
weights. The fp32 weight stays (PEFT reads its dtype and device, the output layer's is tied to the embedding); only
the matmuls change, and memory grows by the int8 copy (a quarter of the swapped weights): a speed option, not a
memory one. Inference only: the packed copy is made once and does not follow later writes to ``weight``.

Why the exceptions (SmolLM2-135M, last-token logits against fp32 on four contract sentences, on a CPU with VNNI):
every layer int8 with torch's default 7-bit activation range, correlation 0.71-0.89; full 8-bit range, 0.88-0.91;
full range with the down projections (whose inputs carry the MLP's activation outliers) left fp32, 0.97-0.99.

On a CPU without int8 dot-product units (no ``avx512_vnni``/``avx_vnni``/``amx_int8``: AVX2 only) fbgemm adds pairs of
u8 x s8 products in int16, which saturates with full-range activations: there the same setting gave 0.50-0.56 (a
2-core AMD EPYC). So on such a CPU activations keep to 7 bits (``reduce_range``) and the value projections stay fp32
too: 7 bits with only the down projections fp32 gave 0.90-0.95 on five contract sentences, with the value projections
fp32 as well 0.96-0.97; decoding there still took 0.65-0.7x fp32's time per token.

>>> n = quantize_linear_int8(model)  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rolora.hardware import cpu_has_int8_dot_units

from .linear_swap import linear_shell, swap_linear

__all__ = ["KEEP_FP32", "KEEP_FP32_WITHOUT_VNNI", "Int8Linear", "quantize_linear_int8"]


class Int8Linear(nn.Linear):
    """An ``nn.Linear`` whose forward is the int8 dynamic-quantized matmul of its (frozen) weights; ``reduce_range``
    quantizes activations to 7 bits (for CPUs without int8 dot-product units, see the module docstring)."""

    _q: Any
    reduce_range: bool = False

    @classmethod
    def from_linear(cls, linear: nn.Linear, reduce_range: bool = False) -> Int8Linear:
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig

        new = linear_shell(cls, linear)
        linear.qconfig = per_channel_dynamic_qconfig  # type: ignore[assignment]
        # kept out of the module tree (no state_dict entry, nothing for PEFT's target matching to see)
        object.__setattr__(new, "_q", DynamicLinear.from_float(linear))
        new.reduce_range = reduce_range
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu"):  # a bf16 prefill (backend.quantize: bf16-int8): the fp32 weight, cast
            return nn.functional.linear(x, self.weight, self.bias)
        packed = self._q._packed_params._packed_params
        return torch.ops.quantized.linear_dynamic(x, packed, reduce_range=self.reduce_range)


KEEP_FP32 = ("down_proj",)  # Llama-family MLP output projections (see the module docstring)
KEEP_FP32_WITHOUT_VNNI = ("down_proj", "v_proj")  # and the attention value projections, with 7-bit activations


def quantize_linear_int8(
    model: nn.Module,
    keep_fp32: tuple[str, ...] | None = None,
    int8_dot_units: bool | None = None,
    workers: int | None = None,
) -> int:
    """Swap every plain ``nn.Linear`` under ``model`` (but those named in ``keep_fp32``) for :class:`Int8Linear`
    in place; returns how many. ``int8_dot_units`` (default: read from ``/proc/cpuinfo``) picks full-range
    activations and :data:`KEEP_FP32`, or 7-bit activations and :data:`KEEP_FP32_WITHOUT_VNNI`. The layers are
    packed in ``workers`` threads (default: torch's thread count; packing one layer is single-threaded)."""
    dot = cpu_has_int8_dot_units() if int8_dot_units is None else int8_dot_units
    keep = keep_fp32 if keep_fp32 is not None else (KEEP_FP32 if dot else KEEP_FP32_WITHOUT_VNNI)
    workers = max(1, torch.get_num_threads()) if workers is None else workers
    return swap_linear(
        model, lambda linear: Int8Linear.from_linear(linear, reduce_range=not dot), keep=keep, workers=workers
    )
