"""oneDNN's float32 kernel for linear products of a few rows (``backend.few_rows_onednn``, on in ``rolora.yaml``).

A forward pass over 2 to 64 token rows — a pass verifying drafts (``backend.prompt_lookup``,
``backend.grammar_drafts``: up to ~11 rows), a decoding step of a small batch — multiplies every weight matrix by a
short, wide activation. torch's x86 builds run that product in MKL, whose small-M path on these 2-core machines took
about twice the one-row product's time (SmolLM2-135M, ~700 tokens in the cache, 2026-12-04, 2-core AMD EPYC): a
whole pass took 56 ms for 1 row, 96 ms for 2, 124 ms for 11 and 115 ms for 16, though all read the same ~540 MB of
weights. oneDNN's kernel (``torch.ops.mkldnn._linear_pointwise``, what Inductor emits for float32 linear layers)
took 55, 71 and 79 ms for 2, 11 and 16 rows (0.57-0.69x; 0.59-0.77x on a worker thread, where the backend runs). A
one-row product stays on MKL: there oneDNN was as fast on the main thread and slower on a worker thread
(``bench/decoding.py``'s "fp32, oneDNN linear" row and the README), so plain greedy decoding computes exactly what it
did. A prompt's prefill (more rows) stays on MKL too, and so does any product under bf16 autocast (the bf16 prefill).

The swap happens before PEFT wraps the layers (:func:`few_rows_onednn`), so LoRA adapters wrap
:class:`FewRowsLinear` like any ``nn.Linear`` and stay on their own path. The two kernels add in different orders:
logits of a verifying pass moved by ~5e-5, which can flip a near tie between two tokens (measured in the README:
``bench/analyst_calls.py`` and ``bench/latency.py``, replies and answers compared with MKL's).
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .linear_swap import linear_shell, swap_linear

__all__ = ["MAX_ROWS", "MIN_ROWS", "FewRowsLinear", "few_rows_onednn", "onednn_linear_available", "onednn_product"]

MIN_ROWS, MAX_ROWS = 2, 64  # products of this many rows run on oneDNN


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's float32 linear kernel (x86 and most ARM builds do)."""
    return bool(torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` (``x`` 2-D, float32) on oneDNN's kernel."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class FewRowsLinear(nn.Linear):
    """An ``nn.Linear`` whose float32 products of :data:`MIN_ROWS`-:data:`MAX_ROWS` rows run on oneDNN's kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(1, x.shape[-1])
        if (
            MIN_ROWS <= rows <= MAX_ROWS
            and x.dtype == torch.float32
            and self.weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")
            and x.device.type == "cpu"
        ):
            out = onednn_product(x.reshape(rows, x.shape[-1]).contiguous(), self.weight, self.bias)
            return out.reshape(*x.shape[:-1], out.shape[-1])
        return nn.functional.linear(x, self.weight, self.bias)


def few_rows_onednn(model: nn.Module) -> int:
    """Swap every plain ``nn.Linear`` under ``model`` for :class:`FewRowsLinear` in place (the weights shared, ties
    kept); returns how many, 0 where torch lacks the kernel. Layers already swapped by ``backend.quantize`` (int8,
    bf16 weights) keep their own kernels."""
    if not onednn_linear_available():
        return 0
    return swap_linear(model, lambda linear: linear_shell(FewRowsLinear, linear))
