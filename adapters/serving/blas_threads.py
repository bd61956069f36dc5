"""MKL's thread count for the calling thread only: small matmuls kept on one core while the rest of a step is not.

torch's x86 builds run fp32 matmuls in MKL, which splits a product over every intra-op thread when it judges it
large enough. For the fused LoRA's products in a decoding step of a mixed batch (16 rows: ``[16, 576] @ [576, 24]``
then ``[16, 24] @ [24, 576]``) that split is a loss on a 2-core machine: inside the model (measured on a 2-core AMD
EPYC, between the int8 or fp32 layers of a step) the pair took ~200 us on two threads and ~45 us on one, though
either takes ~20 us in a loop of its own. torch only has a process-wide setting (``torch.set_num_threads``, which
would also slow the other threads' work); MKL has a per-thread one, ``mkl_set_num_threads_local``, which torch's
library exports. :func:`mkl_thread_local` finds it; where torch has no MKL (ARM, macOS builds) it is ``None`` and
nothing changes.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from pathlib import Path

__all__ = ["mkl_function", "mkl_max_threads", "mkl_thread_local"]


def mkl_thread_local() -> Callable[[int], int] | None:
    """MKL's ``mkl_set_num_threads_local(n) -> previous`` from torch's own library, or ``None`` without MKL.

    ``n`` threads for MKL calls on the calling thread from now on (``0``: back to the process-wide count); it
    returns the thread's previous setting (``0`` when it had none), so ``prev = f(1); ...; f(prev)`` restores it.
    """
    return mkl_function("MKL_Set_Num_Threads_Local")  # the C interface (int by value), not the Fortran one


def mkl_max_threads() -> int | None:
    """How many threads MKL would use for a call made now on the calling thread (``None`` without MKL)."""
    fn = mkl_function("MKL_Get_Max_Threads")
    return None if fn is None else int(fn())


@functools.cache
def mkl_function(name: str) -> Callable[..., int] | None:
    """An ``int``-returning MKL service function exported by torch's library, or ``None`` (no MKL, or no such name)."""
    import torch

    if not torch.backends.mkl.is_available():
        return None
    for lib in sorted((Path(torch.__file__).parent / "lib").glob("libtorch_cpu.*")):
        try:
            fn = getattr(ctypes.CDLL(str(lib)), name)  # already loaded by torch: the same handle, nothing loaded twice
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_int] if name.startswith("MKL_Set") else []
        fn.restype = ctypes.c_int
        return fn
    return None
