"""oneDNN's float32 kernel, on weights packed once, for linear products of a few rows (``backend.few_rows_onednn``, on
in ``rolora.yaml``).

A decoding step multiplies every weight matrix by a short activation: one row for a plain step, 2 to ~11 for a pass
verifying drafts (``backend.prompt_lookup``, ``backend.grammar_drafts``), up to the batch size for a step of a small
batch. torch's x86 builds run these products in MKL, which on these 2-core machines read SmolLM2's weights far below
the memory's bandwidth (2026-12-05, 2-core AMD EPYC, the 211 linear weights of SmolLM2-135M, 538 MB, in a loop of
their own: ``bench/decoding.py``'s "linear products alone"): 45.8 ms for 1 row, 77.8 for 2, 77.6 for 11, while
reading them once took 9.6 ms. oneDNN's kernel (``torch.ops.mkldnn._linear_pointwise``, what Inductor emits for
float32 linear layers) on the plain weights took 30.4, 31.9 and 44.5 ms; on weights reordered once into its own
blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, as Inductor does when it freezes a model) 25.3, 28.4 and
27.9 ms — the reorder it otherwise redoes on every call is what made more rows cost more.

So every float32 product of :data:`MIN_ROWS` to :data:`MAX_ROWS` rows runs on oneDNN with a packed copy of the weight,
made when the layer is swapped in (:func:`few_rows_onednn`) and again whenever the weight is changed in place (its
version counter moves). The copy is the memory this costs: as much again as the float32 linear weights (SmolLM2: +538
MB). A prompt's prefill (more rows) and any product under bf16 autocast (the bf16 prefill) stay on ``F.linear`` and
the plain weights, which every other reader (PEFT, the tied input embedding, a state dict) keeps seeing.

The swap happens before PEFT wraps the layers, so LoRA adapters wrap :class:`FewRowsLinear` like any ``nn.Linear`` and
their own small products stay on their path. The two kernels add in different orders: logits moved by ~5e-5, which
can flip a near tie between two tokens (measured in the README: ``bench/analyst_calls.py`` and ``bench/latency.py``,
replies and answers compared with MKL's; ``rolora eval`` fingerprints runs with the setting).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from .linear_swap import linear_shell, swap_linear

__all__ = [
    "MAX_ROWS",
    "MIN_ROWS",
    "FewRowsLinear",
    "few_rows",
    "few_rows_onednn",
    "onednn_linear_available",
    "onednn_product",
    "pack_weight",
]

MIN_ROWS, MAX_ROWS = 1, 64  # products of this many rows run on oneDNN
# the row count oneDNN's layout is chosen for: 1-64 rows were measured as fast on it as on their own
PACKED_FOR_ROWS = 16


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's float32 linear kernel and its weight packing (x86 builds do)."""
    ops = torch.ops.mkldnn
    return bool(
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_linear_pointwise")
        and hasattr(ops, "_reorder_linear_weight")
    )


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out x in, float32) reordered once into oneDNN's layout for products of a few rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKED_FOR_ROWS)


def onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` (``x`` 2-D, float32) on oneDNN's kernel; ``weight`` plain or from :func:`pack_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def few_rows(x: torch.Tensor, weight: torch.Tensor) -> int:
    """The rows of ``x`` when ``x @ weight.T`` is a product :class:`FewRowsLinear` runs on its packed weight (float32,
    :data:`MIN_ROWS`-:data:`MAX_ROWS` rows, on CPU, not under autocast); else 0."""
    rows = x.numel() // max(1, x.shape[-1])
    if (
        MIN_ROWS <= rows <= MAX_ROWS
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and x.device.type == "cpu"
    ):
        return rows
    return 0


class FewRowsLinear(nn.Linear):
    """An ``nn.Linear`` whose float32 products of :data:`MIN_ROWS`-:data:`MAX_ROWS` rows run on oneDNN's kernel with
    a packed copy of its weight (:func:`pack_weight`), repacked when the weight changes in place."""

    packed: torch.Tensor | None = None
    packed_version = -1
    # while set (.fused_lora's rows with a merged adapter, .merged_lora): a packed weight used instead of ``packed``,
    # the weight with a LoRA merged in; and what adds that LoRA to a product not run on it (a prefill)
    substitute: torch.Tensor | None = None
    beside: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def repack(self) -> torch.Tensor:
        self.packed = pack_weight(self.weight)
        self.packed_version = self.weight._version
        return self.packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = few_rows(x, self.weight)
        if rows:
            packed = self.substitute if self.substitute is not None else self.packed
            if packed is None or (packed is self.packed and self.packed_version != self.weight._version):
                packed = self.repack()
            out = onednn_product(x.reshape(rows, x.shape[-1]).contiguous(), packed, self.bias)
            return out.reshape(*x.shape[:-1], out.shape[-1])
        out = nn.functional.linear(x, self.weight, self.bias)
        return out if self.beside is None else self.beside(x, out)


def few_rows_onednn(model: nn.Module) -> int:
    """Swap every plain ``nn.Linear`` under ``model`` for :class:`FewRowsLinear` in place (the weights shared,
    ties kept) and pack each one's weight; returns how many, 0 where torch lacks the kernel. Layers already swapped by
    ``backend.quantize`` (int8, bf16 weights) keep their own kernels."""
    if not onednn_linear_available():
        return 0

    def swap(linear: nn.Linear) -> nn.Linear:
        new = linear_shell(FewRowsLinear, linear)
        new.repack()
        return new

    return swap_linear(model, swap)
