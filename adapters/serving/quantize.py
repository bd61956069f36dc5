"""Which ``backend.quantize`` the in-process backend runs on this CPU (no torch import).

The settings themselves live beside their kernels: ``int8`` in :mod:`.int8`, ``bf16`` and ``bf16-weights`` in
:mod:`.bf16` and :mod:`.bf16_weights`. ``auto``, the default of ``rolora.yaml``, is resolved here from the CPU's
feature flags (:mod:`rolora.hardware`), by what was measured on each kind of CPU.
"""

from __future__ import annotations

from pathlib import Path

from rolora.hardware import cpu_flags, cpu_has_bf16_units, cpu_has_int8_dot_units

__all__ = ["BF16_PREFILL", "INT8_LAYERS", "drafts_allowed", "resolve_quantize"]

BF16_PREFILL = ("bf16", "bf16-int8", "bf16-weights")  # settings whose prompt pass runs under bf16 autocast
INT8_LAYERS = ("int8", "bf16-int8")  # settings whose base linear layers are swapped for int8 ones (int8.py)


def drafts_allowed(quantize: str) -> bool:
    """Whether the in-process backend decodes with drafts (``backend.grammar_drafts``, ``backend.prompt_lookup``)
    under ``quantize`` (resolved, not ``auto``): not under int8 decoding, whose kernel quantizes a pass's activations
    together (one scale for the tensor), so a pass over several tokens would not compute what one-token steps do."""
    return quantize not in INT8_LAYERS


def resolve_quantize(setting: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """What ``backend.quantize`` runs; any setting but ``auto`` is itself. ``auto`` is, by what was measured on each
    kind of CPU (README, "Speed on 2 cores"):

    - ``bf16`` on a CPU with bf16 units (AMX, AVX512-BF16): the prefill ~1.5-2x as fast, answers within the eval's CI;
    - ``int8`` on an x86 CPU with AVX2 but neither bf16 nor int8 dot-product units (7-bit activations, see
      :mod:`.int8`): on a 2-core AMD EPYC, ``ask`` p50 0.72-0.88x fp32's, every answer metric equal on the
      validation splits (240 CUAD questions, 24 example ones), and within its paired CI when every question is
      asked of the model (where a third of the model's answers differ: ``none`` keeps fp32's);
    - ``none`` elsewhere (no AVX2; or int8 dot-product units without bf16 ones, where full-range int8 turned one
      answer of 16 into a refusal for a 5 % gain).

    ``bf16-weights`` stays opt-in: on an AMD EPYC with AVX512-BF16 its analyst calls took 0.79x the fp32 time, but it
    turned the demo's answer wrong. ``bf16-int8`` (bf16 prefill, int8 decoding) too: on that EPYC its analyst calls
    took 0.77x bf16's time and batched serving decoded ~1.4x as many tokens a second, but with every question asked
    of the model its answers leaned worse on both validation splits (within their paired CIs)."""
    if setting != "auto":
        return setting
    if cpu_has_bf16_units(cpuinfo):
        return "bf16"
    if "avx2" in cpu_flags(cpuinfo) and not cpu_has_int8_dot_units(cpuinfo):
        return "int8"
    return "none"
