"""Swapping a model's plain ``nn.Linear`` layers for a faster subclass in place (``backend.quantize``: :mod:`.int8`,
:mod:`.bf16_weights`).

The replacement is built by :func:`linear_shell`: an instance of the subclass that shares the original's weight and
bias *Parameters* (ties such as output layer = embedding stay intact; PEFT reads their dtype and device and wraps the
subclass like any ``nn.Linear``), without running ``nn.Linear.__init__`` (no new weights are allocated).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import nn

__all__ = ["linear_shell", "swap_linear"]

L = TypeVar("L", bound=nn.Linear)


def linear_shell(cls: type[L], linear: nn.Linear) -> L:
    """An uninitialised ``cls`` (a subclass of ``nn.Linear``) holding ``linear``'s shape, weight and bias."""
    new = cls.__new__(cls)
    nn.Module.__init__(new)
    new.in_features, new.out_features = linear.in_features, linear.out_features
    new.weight = linear.weight  # the same Parameter
    new.bias = linear.bias
    return new


def swap_linear(
    model: nn.Module, replace: Callable[[nn.Linear], nn.Linear], keep: tuple[str, ...] = (), workers: int = 1
) -> int:
    """Swap every plain ``nn.Linear`` under ``model`` (not a subclass, not one named in ``keep``) for
    ``replace(linear)`` in place; returns how many. ``workers`` > 1 builds the replacements in that many threads
    (for ``replace`` functions whose kernels release the GIL, such as int8 packing); the swap itself is serial."""
    swaps = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Linear and name not in keep
    ]
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rolora-swap") as pool:
            built = list(pool.map(replace, [child for _, _, child in swaps]))
    else:
        built = [replace(child) for _, _, child in swaps]
    for (parent, name, _), new in zip(swaps, built, strict=True):
        setattr(parent, name, new)
    return len(swaps)
