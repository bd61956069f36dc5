"""bfloat16 prefill for the in-process backend (``backend.quantize: bf16``).

On CPUs with bf16 matrix units (Intel AMX, AVX512-BF16) a bfloat16 matmul runs several times faster than a float32
one (``bench/decoding.py`` prints both), so the prompt's prefill, a few hundred tokens through every linear layer,
gets cheaper: the weights stay float32 and ``torch.autocast`` runs the prefill's matmuls in bfloat16. Decoding one
token at a time reads every weight per token and is bound by memory and per-call overhead, where bfloat16 kernels
were measured slower than float32 ones on such a CPU; so decoding stays float32. After the prefill the key/value
cache and the logits are cast back to float32, and generation goes on as without it. Answers are not bit-identical
to float32 prefill: the README gives the measured differences (``bench/latency.py quantize=bf16``).

``backend.quantize: bf16-weights`` goes one step further for CPUs whose float32 decoding is far from the memory
bound: every linear layer of the base model reads a bfloat16 copy of its weights (:mod:`.bf16_weights`: half the bytes
a decoding step reads), its input is rounded to bfloat16 and its output comes back float32, so the norms, the
attention, the key/value cache and the logits stay float32, and LoRA adapters stay float32 beside it. Measured on an
AMD EPYC with AVX512-BF16 (no AMX), where PyTorch's float32 matrix-vector products run at a quarter of the
bandwidth: ``bench/decoding.py`` and the README.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

from rolora.hardware import cpu_has_bf16_units

__all__ = ["bf16_prefill", "cast_cache", "cpu_has_bf16_units"]


def cast_cache(cache: Any, dtype: Any) -> None:
    """Cast every layer's keys and values of a transformers ``Cache`` to ``dtype`` in place."""
    for layer in getattr(cache, "layers", ()):
        for attr in ("keys", "values"):
            t = getattr(layer, attr, None)
            if t is not None and hasattr(t, "dtype") and t.dtype != dtype:
                setattr(layer, attr, t.to(dtype))


@contextlib.contextmanager
def bf16_prefill(model: Any, min_tokens: int = 2) -> Iterator[None]:
    """While active, a forward pass of ``model`` (a transformers causal LM) over at least ``min_tokens`` new tokens
    runs under bfloat16 autocast, and its cache and logits come back float32; one-token decoding steps run as
    before. ``generate`` calls ``model(...)``, so wrapping ``model.forward`` covers PEFT models around it too."""
    import torch

    inner = model.forward

    @functools.wraps(inner)
    def forward(*args: Any, **kwargs: Any) -> Any:
        ids = kwargs.get("input_ids")
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        if ids is None and args:
            ids = args[0]
        if ids is None or ids.dim() < 2 or ids.shape[1] < min_tokens:
            return inner(*args, **kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = inner(*args, **kwargs)
        cache = getattr(out, "past_key_values", None)
        if cache is not None:
            cast_cache(cache, torch.float32)
        logits = getattr(out, "logits", None)
        if logits is not None and logits.dtype != torch.float32:
            out.logits = logits.float()
        return out

    model.forward = forward
    try:
        yield
    finally:
        del model.forward  # the class's own forward again
