"""A small compiled kernel for the fused LoRA of a mixed decoding step: every row's LoRA added in one call per layer.

:mod:`.fused_lora` adds a mixed batch's LoRA with two dense products per layer over the stacked adapters. In a
decoding step those are tiny (16 rows: ``[16, 576] @ [576, 24]``, then ``[16, 24] @ [24, 576]``) and MKL spends on
each far more than its arithmetic: with adapters on all seven linear layers of a block, 210 LoRA layers a step at
~45 us each took a 16-row step from 65 to ~79 ms (0.83x base-only; 2-core Intel Xeon, 2026-12-05). Punica and
S-LoRA answer this on GPUs with a gathered kernel (BGMV: each row multiplied by its own adapter's A and B in one
launch); torch ships none for CPUs, nor does vLLM's CPU backend (its LoRA ops are torch products). ``lora_rows.c`` is
that kernel for CPUs, ~110 lines of C: the rows of each adapter taken four at a time, each slice of A and B read
once for the four, only the row's own adapter's rank columns computed, the sum added in place into the base product's
columns. ``x @ A`` runs as dot products over A as PEFT stacks it (``[R, in]``), 16 inputs a step on AVX-512 (four
rows by four rank columns of partial sums in registers; 8 inputs and two columns elsewhere), ``h @ B`` 16 output
columns a step. In a loop of its own it takes 3-8 us a layer where the torch pair takes 13-24; inside a 16-row
decoding step ~17 us (its stacks come back from L3 or memory; ~20 us with 8-wide slices of A as ``[in, R]``) against
~45. The layers that multiply one input (q, k, v; gate, up) get one :class:`ColumnPlan`: the kernel writes into
each one's columns of their shared product, checked once for the group, no view of the columns made.

It is compiled once per machine at first use with the system's C compiler (``cc``, or ``$CC``; ``-O3
-march=native``, no fast-math) into ``$ROLORA_HOME/kernels/`` (a temp file renamed into place, named by a digest of
the source, the compiler's version, the flags and the CPU's feature flags), loaded with :mod:`ctypes`, and checked
once against torch's products on random weights before it is used. Without a compiler, or if the build or the check
fails, :func:`load_kernel` returns ``None`` (logged once) and the fused path keeps its torch products: the same
results, slower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RANK_STEP", "ColumnPlan", "KernelLayer", "LoraRowsKernel", "RowGroups", "c_compiler", "load_kernel"]

RANK_STEP = 8  # every adapter's rank columns are padded (zeros) to a multiple of this in the stacks: the kernel's width
SOURCE = Path(__file__).with_name("lora_rows.c")
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-fno-math-errno")

log = logging.getLogger("rolora.serving")


class _Layer(ctypes.Structure):
    _fields_ = [
        ("a", ctypes.c_void_p),
        ("b_t", ctypes.c_void_p),
        ("in_features", ctypes.c_int64),
        ("out_features", ctypes.c_int64),
    ]


class _Groups(ctypes.Structure):
    _fields_ = [
        ("count", ctypes.c_int64),
        ("lo", ctypes.c_void_p),
        ("r", ctypes.c_void_p),
        ("start", ctypes.c_void_p),
        ("order", ctypes.c_void_p),
    ]


class KernelLayer:
    """A layer's stacks described for the kernel (``a`` [R, in]: the adapters' A matrices stacked, as PEFT holds
    them; ``b_t`` [R, out]: their B matrices transposed; float32, contiguous); keeps them alive. ``address``: where
    the kernel reads the description."""

    __slots__ = ("_keep", "_struct", "address", "dtype", "in_features", "out_features")

    def __init__(self, a: Any, b_t: Any) -> None:
        import torch

        if {a.dtype, b_t.dtype} != {torch.float32} or not (a.is_contiguous() and b_t.is_contiguous()):
            raise ValueError("lora_rows: the stacks must be contiguous float32 tensors")
        if a.shape[0] != b_t.shape[0]:
            raise ValueError(f"lora_rows: A is {tuple(a.shape)}, B_t {tuple(b_t.shape)}: their ranks differ")
        self._keep = (a, b_t)
        self.in_features, self.out_features, self.dtype = int(a.shape[1]), int(b_t.shape[1]), a.dtype
        self._struct = _Layer(a.data_ptr(), b_t.data_ptr(), a.shape[1], b_t.shape[1])
        self.address = ctypes.addressof(self._struct)


class RowGroups:
    """Which rows of a batch use which adapter's rank columns of a layer's stacks, as the kernel reads them: groups of
    rows (``order[start[g]:start[g + 1]]``) with their columns ``[lo[g], lo[g] + r[g])``. Keeps its tensors alive;
    ``address``: where the kernel reads them."""

    __slots__ = ("_struct", "address", "count", "lo", "order", "r", "rows", "start")

    def __init__(self, row_slot: Sequence[int], ranges: dict[int, tuple[int, int]]) -> None:
        import torch

        self.rows = len(row_slot)  # the batch's rows: the kernel is called only on inputs of as many
        order: list[int] = []
        lo: list[int] = []
        r: list[int] = []
        start = [0]
        for slot, (first, width) in sorted(ranges.items()):
            rows = [t for t, s in enumerate(row_slot) if s == slot]
            if rows:
                order += rows
                lo.append(first)
                r.append(width)
                start.append(len(order))
        self.count = len(lo)
        self.order, self.lo, self.r, self.start = (
            torch.tensor(v or [0], dtype=torch.int32) for v in (order, lo, r, start)
        )
        self._struct = _Groups(
            self.count, self.lo.data_ptr(), self.r.data_ptr(), self.start.data_ptr(), self.order.data_ptr()
        )
        self.address = ctypes.addressof(self._struct)


class ColumnPlan:
    """Layers that multiply one input and whose products sit side by side in one wider product (a Llama attention's
    q, k and v; its MLP's gate and up: :class:`.few_rows.SharedInputProducts`): each layer's stacks, its rows' groups
    and its first column of that product, checked once here so that :meth:`LoraRowsKernel.add_columns` checks only
    the input and the product on each call. ``parts``: (layer, row groups, first column), layers without a LoRA left
    out; ``width``: the product's columns."""

    __slots__ = ("_keep", "calls", "dtype", "in_features", "rows", "width")

    def __init__(self, parts: Sequence[tuple[KernelLayer, RowGroups, int]], width: int) -> None:
        if len({layer.in_features for layer, _, _ in parts}) != 1:
            raise ValueError("lora_rows: a column plan needs layers of one input width")
        if len({groups.rows for _, groups, _ in parts}) != 1:
            raise ValueError("lora_rows: a column plan's row groups must plan the same rows")
        for layer, _, first in parts:
            if first < 0 or first + layer.out_features > width:
                raise ValueError(f"lora_rows: columns {first}..{first + layer.out_features} of a {width}-wide product")
        self._keep = tuple(parts)
        self.in_features, self.rows, self.width = parts[0][0].in_features, parts[0][1].rows, width
        self.dtype = parts[0][0].dtype  # float32 (KernelLayer)
        # (the layer's description, its row groups, the byte offset of its first column)
        self.calls = tuple((layer.address, groups.address, 4 * first) for layer, groups, first in parts)


class LoraRowsKernel:
    """``lora_rows.c`` loaded: :meth:`layer` describes a layer's stacks once, :meth:`add` adds the rows' LoRA."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._add = lib.lora_rows_add
        self._add.restype = None
        self._add.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
        self._add.argtypes += [ctypes.c_void_p, ctypes.c_int64]
        max_rank = lib.lora_rows_max_rank
        max_rank.restype = ctypes.c_int
        self.max_rank = int(max_rank())

    @staticmethod
    def layer(a: Any, b_t: Any) -> KernelLayer:
        """A layer's stacks (``a`` [R, in], ``b_t`` [R, out], float32, contiguous) described for :meth:`add`."""
        return KernelLayer(a, b_t)

    @staticmethod
    def _misfit(rows: int, in_features: int, out_features: int, dtype: Any, x: Any, out: Any) -> str | None:
        if x.shape[0] != rows or out.shape[0] != rows:
            return f"{x.shape[0]} rows of input, {out.shape[0]} of output, {rows} planned"
        if x.shape[-1] != in_features or out.shape[-1] != out_features or x.dtype != dtype:
            return (f"input {tuple(x.shape)} {x.dtype}, output {tuple(out.shape)} for a float32 layer of "
                    f"{in_features} -> {out_features} features")  # fmt: skip
        if x.numel() != rows * in_features or out.numel() != rows * out_features:
            return f"input {tuple(x.shape)}, output {tuple(out.shape)}: not one position a row"
        if out.dtype != dtype or x.stride(-1) != 1 or out.stride(-1) != 1:
            return "input and output must be float32 with contiguous rows"
        return None

    @classmethod
    def misfit(cls, layer: KernelLayer, x: Any, out: Any, groups: RowGroups) -> str | None:
        """Why :meth:`add` cannot take these inputs (it would read or write past them, or add the wrong sums), or
        None: ``x`` [rows, ..., in] and ``out`` [rows, ..., out] float32, one position a row, the last dimension
        contiguous (``out`` may be a view of a wider product's columns)."""
        return cls._misfit(groups.rows, layer.in_features, layer.out_features, layer.dtype, x, out)

    def add_if_fits(self, layer: KernelLayer, x: Any, out: Any, groups: RowGroups) -> bool:
        """:meth:`add` where the inputs fit (:meth:`misfit`), and whether it did."""
        if self.misfit(layer, x, out, groups) is not None:
            return False
        self._add(layer.address, groups.address, x.data_ptr(), x.stride(0), out.data_ptr(), out.stride(0))
        return True

    def add(self, layer: KernelLayer, x: Any, out: Any, groups: RowGroups) -> None:
        """``out[t] += x[t] @ A.T @ B_t`` with each row's own adapter's columns, in place; row ``t`` starts
        ``stride(0)`` floats after row ``t - 1``. ValueError where the inputs do not fit (:meth:`misfit`)."""
        if not self.add_if_fits(layer, x, out, groups):
            raise ValueError(f"lora_rows: {self.misfit(layer, x, out, groups)}")

    def add_columns(self, plan: ColumnPlan, x: Any, product: Any) -> bool:
        """Every layer of ``plan`` adds its rows' LoRA of ``x`` into its columns of ``product`` (in place, one call
        each, no view of the columns made), where ``x`` and ``product`` fit the plan as :meth:`misfit` checks them;
        whether it did (nothing is added otherwise)."""
        if self._misfit(plan.rows, plan.in_features, plan.width, plan.dtype, x, product) is not None:
            return False
        x_at, x_stride, at, stride = x.data_ptr(), x.stride(0), product.data_ptr(), product.stride(0)
        for layer, groups, offset in plan.calls:
            self._add(layer, groups, x_at, x_stride, at + offset, stride)
        return True

    def agrees_with_torch(self) -> bool:
        """Whether the kernel's sums match torch's products on random stacks of three adapters, odd widths included
        (a miscompiled or foreign-ABI build answers False)."""
        import torch

        gen = torch.Generator().manual_seed(0)
        for n_in, n_out in ((576, 1536), (37, 13)):
            a_t = torch.randn(n_in, 24, generator=gen)
            b_t = torch.randn(24, n_out, generator=gen)
            x = torch.randn(7, n_in, generator=gen)
            wide = torch.randn(7, n_out + 5, generator=gen)
            out = wide[:, 2 : 2 + n_out]
            row_slot = [0, -1, 2, 0, 1, 0, 0]
            ranges = {0: (0, 8), 1: (8, 8), 2: (16, 8)}
            mask = torch.tensor([[ranges[s][0] <= j < sum(ranges[s]) if s >= 0 else False for j in range(24)]
                                 for s in row_slot], dtype=torch.float32)  # fmt: skip
            expected = wide.clone()
            expected[:, 2 : 2 + n_out] += ((x @ a_t) * mask) @ b_t
            self.add(self.layer(a_t.T.contiguous(), b_t), x, out, RowGroups(row_slot, ranges))
            if not torch.allclose(wide, expected, rtol=1e-4, atol=1e-3):
                return False
        return True


def c_compiler() -> str | None:
    """``$CC``, else the first of ``cc``, ``gcc``, ``clang`` on PATH, or None."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def _cpu_features() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


@functools.cache
def load_kernel(cache_dir: Path) -> LoraRowsKernel | None:
    """The kernel, built into ``cache_dir`` on first use on this machine (see the module docstring), or ``None``."""
    cc = c_compiler()
    if not cc:
        log.info("fused LoRA: no C compiler (cc, gcc, clang or $CC) to build lora_rows.c; mixed batches use torch's "
                 "products (slower, the same results)")  # fmt: skip
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
        key = "\0".join([SOURCE.read_text(), version, *FLAGS, platform.machine(), _cpu_features()])
        target = cache_dir / f"lora_rows-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
        if not target.exists():
            cache_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
                built = Path(tmp) / target.name
                proc = subprocess.run([cc, *FLAGS, "-o", str(built), str(SOURCE)], capture_output=True, text=True,
                                      timeout=300)  # fmt: skip
                if proc.returncode != 0:
                    first = (proc.stderr.strip().splitlines() or ["(no message)"])[0]
                    log.warning("fused LoRA: building lora_rows.c with %s failed (%s); mixed batches use torch's "
                                "products (slower, the same results)", cc, first)  # fmt: skip
                    return None
                os.replace(built, target)  # whole or not at all: a second process finds the finished file
            log.info("fused LoRA: built %s with %s", target, cc)
        kernel = LoraRowsKernel(ctypes.CDLL(str(target)))
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("fused LoRA: lora_rows.c could not be built or loaded (%s); mixed batches use torch's products",
                    exc)  # fmt: skip
        return None
    if not kernel.agrees_with_torch():
        log.warning("fused LoRA: %s disagrees with torch's products on a check; mixed batches use torch's", target)
        return None
    return kernel
