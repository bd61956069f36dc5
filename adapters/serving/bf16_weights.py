"""bfloat16 weights for the base model's linear layers (``backend.quantize: bf16-weights``; see :mod:`.bf16`).

Every ``nn.Linear`` of the base model (the tied output layer included) is swapped for :class:`Bf16Linear`: the same
module type to PEFT (a subclass of ``nn.Linear``, so LoRA still wraps it and adapters load as before, in float32),
whose forward rounds its input to bfloat16, multiplies by a bfloat16 copy of the weights and hands back float32. The
rest of the model (embedding, norms, attention, key/value cache, logits) stays float32. A decoding step reads half the
bytes; on a CPU with bf16 dot-product units the matmul itself runs on them. The float32 weight stays (PEFT reads its
dtype and device; the output layer's is tied to the embedding): a speed option, not a memory one. Inference only: the
copy is made once and does not follow later writes to ``weight``.

>>> n = bf16_linear_weights(model)  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn

from .linear_swap import linear_shell, swap_linear

__all__ = ["Bf16Linear", "bf16_linear_weights"]


class Bf16Linear(nn.Linear):
    """An ``nn.Linear`` whose forward multiplies by a bfloat16 copy of its (frozen) weights, float32 in and out."""

    _w: torch.Tensor
    _b: torch.Tensor | None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Bf16Linear:
        new = linear_shell(cls, linear)
        # kept out of the module tree (no state_dict entry, nothing for PEFT's target matching to see)
        object.__setattr__(new, "_w", linear.weight.detach().to(torch.bfloat16).contiguous())
        object.__setattr__(new, "_b", None if linear.bias is None else linear.bias.detach().to(torch.bfloat16))
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = nn.functional.linear(x.to(torch.bfloat16), self._w, self._b)
        return out if x.dtype == torch.bfloat16 else out.to(x.dtype)


def bf16_linear_weights(model: nn.Module) -> int:
    """Swap every plain ``nn.Linear`` under ``model`` for :class:`Bf16Linear` in place; returns how many."""
    return swap_linear(model, Bf16Linear.from_linear)
