"""What this machine's CPU can do fast, read once from ``/proc/cpuinfo`` (no torch import)."""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from functools import cache
from pathlib import Path

__all__ = ["OPENMP_SPIN", "cpu_flags", "cpu_has_bf16_units", "cpu_has_int8_dot_units", "spin_openmp_between_ops"]

# libgomp (torch's OpenMP): spin-wait a bounded 30,000 rounds after a parallel region before sleeping
OPENMP_SPIN = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "30000"}


@cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The feature flags of this CPU's first core as ``/proc/cpuinfo`` lists them (empty where it cannot be read);
    read once per file."""
    try:
        text = cpuinfo.read_text(errors="ignore")
    except OSError:
        return frozenset()
    return frozenset(
        next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    )


def cpu_has_bf16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU advertises bf16 matrix or dot-product units (``amx_bf16`` or ``avx512_bf16``). Without them
    torch emulates bf16 matmuls: on a 2-core AMD EPYC without AVX-512 the MiniLM embedder in bf16 ran at 0.16x its
    fp32 speed (README, "Speed on 2 cores")."""
    return bool(cpu_flags(cpuinfo) & {"amx_bf16", "avx512_bf16"})


def cpu_has_int8_dot_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU advertises int8 dot-product units that sum u8 x s8 products into int32 (``avx512_vnni``,
    ``avx_vnni`` or ``amx_int8``). Without them PyTorch's fbgemm int8 kernel adds pairs of products in int16, which
    saturates unless activations keep to 7 bits: on a 2-core AMD EPYC with AVX2 only, full-range int8 turned
    SmolLM2's logits to a 0.50-0.56 correlation with fp32's (``adapters/serving/int8.py``)."""
    return bool(cpu_flags(cpuinfo) & {"avx512_vnni", "avx_vnni", "amx_int8"})


def spin_openmp_between_ops(environ: MutableMapping[str, str] = os.environ) -> bool:
    """Set :data:`OPENMP_SPIN` in ``environ`` for torch to read when it loads; only when neither variable is set and
    torch is not loaded yet (libgomp reads them once, at load). Returns whether it set them.

    Why (2-core AMD EPYC VMs, 2026-12-05): a decoding step is ~200 small parallel regions (one per linear product)
    with Python in between. libgomp's threads spin a while after a region, then sleep; but once a second thread owns an
    OpenMP team — ``ask`` embeds the question on the main thread and decodes on the backend's worker — there are
    more OpenMP threads than cores and libgomp spins only ~1,000 rounds, so the second core sleeps between products
    and every product waits for it to wake (a VM's idle vCPU wakes slowly). The linear products of a decoding step on
    the worker thread took 32-35 ms after the main thread had run torch, 23-27 ms on the main thread; with these
    settings 27 ms on both. ``bench/latency.py`` (16 example test questions, four runs alternating): ``ask`` p50
    1.71 and 1.84 s without, 1.57 and 1.53 s with, every answer identical. ``OMP_WAIT_POLICY=ACTIVE`` alone spins
    forever (a step took 1.6x as long: the idle team's threads took the cores), hence the bounded spin count.
    ``rolora ask`` calls this first; a long-running process serving concurrent work (``rolora serve``, ``rolora
    eval``) does not, as spinning threads of one team would take cycles from the other's."""
    if "torch" in sys.modules or any(k in environ for k in OPENMP_SPIN):
        return False
    environ.update(OPENMP_SPIN)
    return True
