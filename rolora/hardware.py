"""What this machine's CPU can do fast, read once from ``/proc/cpuinfo`` (no torch import)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["cpu_has_bf16_units"]


def cpu_has_bf16_units(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU advertises bf16 matrix or dot-product units (``amx_bf16`` or ``avx512_bf16``). Without them
    torch emulates bf16 matmuls: on a 2-core AMD EPYC without AVX-512 the MiniLM embedder in bf16 ran at 0.16x its
    fp32 speed (README, "Speed on 2 cores")."""
    try:
        text = cpuinfo.read_text(errors="ignore")
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "amx_bf16" in flags or "avx512_bf16" in flags
