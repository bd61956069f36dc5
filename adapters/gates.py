"""Quality gates, run after training and before promotion. ``promote`` refuses a candidate that failed one.

1. **Validation perplexity** of the adapted model vs the base on the role's validation split: loss on the assistant
   completion only (chat template applied, prompt masked). The ratio adapter/base must be below
   ``max_val_ppl_ratio`` (1.0: it must improve).
2. **Forgetting**: perplexity on a general-text probe set (``probe/general_prose.jsonl``, original prose shipped
   with rolora) before and after the adapter; the % rise must stay at or below ``max_forgetting_pct`` (5 %). Method
   after Biderman et al. 2024, "LoRA Learns Less and Forgets Less": source-domain performance measured before and
   after fine-tuning.
3. **Intruder dimensions**, after Shuttleworth et al. 2024, "LoRA vs Full Fine-tuning: An Illusion of Equivalence"
   (arXiv:2410.21228), with PEFT's conventions (``peft.tuners.lora.intruders``): for each adapted matrix, U of the
   SVD of the base weight W and of the merged W' = W + ΔW; a top-k left singular vector of W' whose largest absolute
   cosine similarity with every singular vector of W is below ε is an intruder. Counts per layer and in total are
   reported with k and ε; the gate only fails when ``max_intruders`` is set and exceeded.
   The counting and ``mitigate_intruders`` (PEFT's ``reduce_intruder_dimension``) live in ``intruders.py``.
4. **Role metric** vs base (answer F1, verdict accuracy, recall@5…), computed elsewhere and passed in as numbers.

A full fine-tuned model folder (kind "full") is gated the same way: it is compared directly with the base, and its
intruders are computed on W_full vs W for the same linear layers. Loss and perplexity scoring and the probe set
live in ``scoring.py``.

>>> report = run_gates(base_dir, adapter_dir, val_examples, None, ("answer_f1", 0.61, 0.48))  # doctest: +SKIP
>>> report.passed, report.failed_gates  # (False, ['forgetting'])  # doctest: +SKIP
>>> Registry.from_config(cfg).record_gates("contracts-analyst@2", report)  # doctest: +SKIP

Importing this module is light: torch, transformers and PEFT load inside the functions that use them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rolora.errors import UserError

from .base_models import base_model_info, check_base_compatible, check_model_folder
from .intruders import IntruderReport, lora_intruders, weight_intruders
from .scoring import (
    ChatExample,
    LossStats,
    _messages,
    load_probe_texts,
    perplexity_rise_pct,
    score_completions,
    score_texts,
)
from .serving.base import verify_adapter_files

__all__ = [
    "GateReport",
    "GateResult",
    "GateThresholds",
    "gate_forgetting",
    "gate_intruders",
    "gate_role_metric",
    "gate_role_metrics",
    "gate_val_perplexity",
    "run_gates",
]

log = logging.getLogger("rolora.adapters")

GateStatus = Literal["passed", "failed", "skipped"]


# role metrics where lower is better (gated against the base with their own allowance, not min_role_metric_delta)
LOWER_IS_BETTER = frozenset({"false_rejection"})


class GateThresholds(BaseModel):
    """Pass thresholds of the gates (the ``gates:`` block of ``rolora.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    max_val_ppl_ratio: float = Field(1.0, gt=0, description="adapter/base validation perplexity must be below this")
    max_forgetting_pct: float = Field(5.0, ge=0, description="largest allowed % rise of the probe-set perplexity")
    intruder_top_k: int = Field(10, ge=1, description="top-k singular vectors of W' examined (PEFT default)")
    intruder_epsilon: float = Field(0.5, gt=0, le=1, description="cosine below which a vector is an intruder")
    max_intruders: int | None = Field(None, ge=0, description="fail above this many intruders; None = report only")
    min_role_metric_delta: float = Field(0.0, description="adapter - base role metric must be at least this")
    max_false_rejection_rise: float = Field(
        0.10, ge=0, le=1, description="a critic's share of correct drafts rejected may exceed the base's by this much"
    )


@dataclass(frozen=True)
class GateResult:
    name: str
    status: GateStatus
    figures: dict[str, Any]
    summary: str

    @property
    def passed(self) -> bool:
        return self.status != "failed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "passed": self.passed,
            "summary": self.summary,
            "figures": self.figures,
        }


def gate_val_perplexity(base_ppl: float, adapter_ppl: float, max_ratio: float = 1.0) -> GateResult:
    """Gate 1: validation perplexity adapter/base must be below ``max_ratio``."""
    ratio = adapter_ppl / base_ppl if base_ppl > 0 else math.nan
    passed = ratio < max_ratio  # NaN fails
    summary = (
        f"val ppl {adapter_ppl:.4g} vs base {base_ppl:.4g}: ratio {ratio:.4f} {'<' if passed else '>='} {max_ratio}"
    )
    figures = {"base_ppl": base_ppl, "adapter_ppl": adapter_ppl, "ratio": ratio, "max_ratio": max_ratio}
    return GateResult("val_perplexity", "passed" if passed else "failed", figures, summary)


def gate_forgetting(base_ppl: float, adapter_ppl: float, max_pct: float = 5.0) -> GateResult:
    """Gate 2: % rise of the general probe-set perplexity with the adapter must be at most ``max_pct``."""
    rise = perplexity_rise_pct(base_ppl, adapter_ppl)
    passed = rise <= max_pct
    summary = (
        f"probe ppl {adapter_ppl:.4g} vs base {base_ppl:.4g}: rise {rise:+.3f}% {'<=' if passed else '>'} {max_pct}%"
    )
    figures = {"base_ppl": base_ppl, "adapter_ppl": adapter_ppl, "rise_pct": rise, "max_pct": max_pct}
    return GateResult("forgetting", "passed" if passed else "failed", figures, summary)


def gate_intruders(report: IntruderReport, max_intruders: int | None = None) -> GateResult:
    """Gate 3: intruder dimensions; fails only above ``max_intruders`` (None: report only)."""
    passed = max_intruders is None or report.total <= max_intruders
    limit = "report only" if max_intruders is None else f"max {max_intruders}"
    summary = (
        f"{report.total} intruder dimensions in {report.layers} matrices "
        f"(top-k {report.top_k}, ε {report.epsilon}; {limit})"
    )
    figures = {**report.to_dict(), "max_intruders": max_intruders}
    return GateResult("intruder_dimensions", "passed" if passed else "failed", figures, summary)


def gate_role_metric(
    name: str, adapter_value: float, base_value: float, min_delta: float = 0.0, higher_is_better: bool = True
) -> GateResult:
    """Gate 4: the role's eval metric with the adapter vs the base; the improvement must be at least ``min_delta``."""
    delta = adapter_value - base_value if higher_is_better else base_value - adapter_value
    passed = delta >= min_delta  # NaN fails
    summary = (
        f"{name} {adapter_value:.4g} vs base {base_value:.4g}: Δ {delta:+.4g} {'>=' if passed else '<'} {min_delta}"
    )
    figures = {
        "metric": name,
        "adapter": adapter_value,
        "base": base_value,
        "delta": delta,
        "min_delta": min_delta,
        "higher_is_better": higher_is_better,
    }
    return GateResult("role_metric", "passed" if passed else "failed", figures, summary)


def gate_role_metrics(metrics: Sequence[tuple[str, float, float]], thr: GateThresholds) -> list[GateResult]:
    """Gate 4 for each ``(name, adapter_value, base_value)``: the first is named "role_metric", the others
    "role_metric:NAME". Higher is better by ``thr.min_role_metric_delta``; a share of errors (``LOWER_IS_BETTER``:
    a critic's false rejections) may exceed the base's by at most ``thr.max_false_rejection_rise``."""
    out = []
    for i, (name, adapter_value, base_value) in enumerate(metrics):
        if name in LOWER_IS_BETTER:
            g = gate_role_metric(
                name, float(adapter_value), float(base_value), -thr.max_false_rejection_rise, higher_is_better=False
            )
        else:
            g = gate_role_metric(name, float(adapter_value), float(base_value), thr.min_role_metric_delta)
        out.append(GateResult(f"role_metric:{name}", g.status, g.figures, g.summary) if i else g)
    return out


def _skipped(name: str, why: str) -> GateResult:
    return GateResult(name, "skipped", {}, why)


@dataclass
class GateReport:
    """All gates of one adapter (or full model); JSON-serialisable with ``to_dict``/``to_json``."""

    adapter: str
    base: str
    kind: str
    thresholds: dict[str, Any]
    gates: list[GateResult]
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed_gates(self) -> list[str]:
        return [g.name for g in self.gates if not g.passed]

    def gate(self, name: str) -> GateResult:
        for g in self.gates:
            if g.name == name:
                return g
        raise KeyError(f"no gate named {name!r} (have: {', '.join(g.name for g in self.gates)})")

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "base": self.base,
            "kind": self.kind,
            "passed": self.passed,
            "failed_gates": self.failed_gates,
            "thresholds": self.thresholds,
            "seconds": self.seconds,
            "gates": [g.to_dict() for g in self.gates],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GateReport:
        gates = [
            GateResult(g["name"], g["status"], dict(g.get("figures", {})), g.get("summary", "")) for g in data["gates"]
        ]
        return cls(
            data["adapter"], data["base"], data["kind"], dict(data["thresholds"]), gates, data.get("seconds", 0.0)
        )

    def to_markdown(self) -> str:
        rows = [f"| {g.name} | {g.status} | {g.summary} |" for g in self.gates]
        return "\n".join(["| gate | status | figures |", "|---|---|---|", *rows])


# Base-model figures are the same for every adapter gated in one process: cache them by weights, inputs and lengths.
_BASE_CACHE: dict[tuple[str, str, str, int, int], LossStats] = {}


def _cached(
    base_key: str, what: str, data: Any, max_length: int, batch_tokens: int, fn: Callable[[], LossStats]
) -> LossStats:
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    key = (base_key, what, digest, max_length, batch_tokens)
    if key not in _BASE_CACHE:
        if len(_BASE_CACHE) > 32:
            _BASE_CACHE.clear()
        _BASE_CACHE[key] = fn()
    return _BASE_CACHE[key]


def run_gates(
    base_dir: Path | str,
    adapter_dir: Path | str,
    val_examples: Sequence[ChatExample],
    probe_texts: Sequence[str] | None = None,
    role_metric: tuple[str, float, float] | Sequence[tuple[str, float, float]] | None = None,
    thresholds: GateThresholds | None = None,
    *,
    val_max_length: int = 1024,
    probe_max_length: int = 512,
    batch_tokens: int = 2048,
    intruder_modules: Sequence[str] | None = None,
) -> GateReport:
    """Run the four gates of a LoRA adapter folder or a full fine-tuned model folder against ``base_dir``.

    ``val_examples``: the role's validation split (chat examples ending with the answer). ``probe_texts``: general
    prose (default: the shipped probe set). ``role_metric``: ``(name, adapter_value, base_value)``, higher is
    better, or several such (each its own role-metric gate, e.g. the analyst's answer F1 and citation correctness; a
    critic's false rejections, lower is better: :func:`gate_role_metrics`);
    None skips gate 4. ``intruder_modules``: name suffixes whose matrices gate 3 examines (default: every
    LoRA-adapted matrix; for a full model every linear layer but ``lm_head``).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    thr = thresholds or GateThresholds()
    folder = Path(adapter_dir)
    kind = check_model_folder(folder)
    check_base_compatible(folder, base_dir)
    examples = list(val_examples)
    texts = list(probe_texts) if probe_texts is not None else load_probe_texts()
    if not examples:
        raise UserError("the validation-perplexity gate needs the role's validation examples (got none)")
    if not texts:
        raise UserError("the forgetting gate needs probe texts (got none); pass None for the shipped probe set")
    info = base_model_info(base_dir)
    base_key = info.weights_sha256 or str(info.path)
    tokenizer = AutoTokenizer.from_pretrained(info.path)
    base = AutoModelForCausalLM.from_pretrained(info.path, dtype=torch.float32)
    base.eval()

    def val(m: Any) -> LossStats:
        return score_completions(m, tokenizer, examples, val_max_length, batch_tokens)

    def probe(m: Any) -> LossStats:
        return score_texts(m, tokenizer, texts, probe_max_length, batch_tokens)

    msgs = [_messages(ex, i) for i, ex in enumerate(examples)]
    base_val = _cached(base_key, "val", msgs, val_max_length, batch_tokens, lambda: val(base))
    base_probe = _cached(base_key, "probe", texts, probe_max_length, batch_tokens, lambda: probe(base))
    model: Any
    if kind == "lora":
        from peft import PeftModel

        verify_adapter_files(folder.name, folder)  # a registered adapter: its recorded bytes, or refused
        model = PeftModel.from_pretrained(base, str(folder))
        model.eval()
        intruders = lora_intruders(model, thr.intruder_top_k, thr.intruder_epsilon, modules=intruder_modules)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        model.eval()
        intruders = weight_intruders(base, model, thr.intruder_top_k, thr.intruder_epsilon, intruder_modules)
    ad_val, ad_probe = val(model), probe(model)

    g1 = gate_val_perplexity(base_val.perplexity, ad_val.perplexity, thr.max_val_ppl_ratio)
    g1.figures.update(tokens=ad_val.tokens, examples=len(examples))
    g2 = gate_forgetting(base_probe.perplexity, ad_probe.perplexity, thr.max_forgetting_pct)
    g2.figures.update(tokens=ad_probe.tokens, texts=len(texts), max_length=probe_max_length)
    g3 = gate_intruders(intruders, thr.max_intruders)
    metrics = [role_metric] if isinstance(role_metric, tuple) else list(role_metric or [])
    role_gates = gate_role_metrics(metrics, thr) or [
        _skipped("role_metric", "no role metric given (the eval suite computes it)")
    ]
    report = GateReport(
        adapter=str(folder),
        base=info.model_id,
        kind=kind,
        thresholds=thr.model_dump(),
        gates=[g1, g2, g3, *role_gates],
        seconds=round(time.perf_counter() - t0, 2),
    )
    log.info("gates of %s: %s", folder, "passed" if report.passed else f"failed {report.failed_gates}")
    return report
