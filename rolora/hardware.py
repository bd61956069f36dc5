"""What this machine's CPU can do fast, read once from ``/proc/cpuinfo`` (no torch import)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

__all__ = ["cpu_flags", "cpu_has_bf16_units", "cpu_has_int8_dot_units"]


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
