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
   ``mitigate_intruders`` applies PEFT's ``reduce_intruder_dimension`` and saves the mitigated adapter.
4. **Role metric** vs base (answer F1, verdict accuracy, recall@5…), computed elsewhere and passed in as numbers.

A full fine-tuned model folder (kind "full") is gated the same way: it is compared directly with the base, and its
intruders are computed on W_full vs W for the same linear layers.

>>> report = run_gates(base_dir, adapter_dir, val_examples, None, ("answer_f1", 0.61, 0.48))  # doctest: +SKIP
>>> report.passed, report.failed_gates  # (False, ['forgetting'])  # doctest: +SKIP
>>> Registry.from_config(cfg).record_gates("contracts-analyst@2", report)  # doctest: +SKIP

Importing this module is light: torch, transformers and PEFT load inside the functions that use them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rolora.errors import RoloraRuntimeError, UserError

from .base_models import base_model_info, check_base_compatible, check_model_folder
from .serving.base import verify_adapter_files

__all__ = [
    "GateReport",
    "GateResult",
    "GateThresholds",
    "IntruderReport",
    "LossStats",
    "completion_perplexity",
    "count_intruders",
    "encode_chat_example",
    "gate_forgetting",
    "gate_intruders",
    "gate_role_metric",
    "gate_val_perplexity",
    "load_probe_texts",
    "lora_intruders",
    "mitigate_intruders",
    "run_gates",
    "score_completions",
    "score_texts",
    "text_perplexity",
    "weight_intruders",
]

log = logging.getLogger("rolora.adapters")

PROBE_FILE = "general_prose.jsonl"
ChatExample = Sequence[Mapping[str, str]] | Mapping[str, Any]  # messages, or {"messages": [...], ...}
GateStatus = Literal["passed", "failed", "skipped"]


class GateThresholds(BaseModel):
    """Pass thresholds of the gates (the ``gates:`` block of ``rolora.yaml``)."""

    model_config = ConfigDict(extra="forbid")

    max_val_ppl_ratio: float = Field(1.0, gt=0, description="adapter/base validation perplexity must be below this")
    max_forgetting_pct: float = Field(5.0, ge=0, description="largest allowed % rise of the probe-set perplexity")
    intruder_top_k: int = Field(10, ge=1, description="top-k singular vectors of W' examined (PEFT default)")
    intruder_epsilon: float = Field(0.5, gt=0, le=1, description="cosine below which a vector is an intruder")
    max_intruders: int | None = Field(None, ge=0, description="fail above this many intruders; None = report only")
    min_role_metric_delta: float = Field(0.0, description="adapter - base role metric must be at least this")


# -- perplexity ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LossStats:
    """Summed negative log-likelihood (nats) over the scored tokens."""

    nll_sum: float
    tokens: int

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.tokens if self.tokens else math.nan

    @property
    def perplexity(self) -> float:
        return math.exp(self.mean_nll) if self.tokens else math.nan


def _messages(example: ChatExample, index: int = 0) -> list[dict[str, str]]:
    msgs = example.get("messages") if isinstance(example, Mapping) else example
    if not isinstance(msgs, Sequence) or isinstance(msgs, str) or len(msgs) < 2:
        raise UserError(
            f"example {index}: expected chat messages (a prompt, then the assistant answer) or {{'messages': [...]}}"
        )
    out = []
    for m in msgs:
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise UserError(f"example {index}: each chat message must be {{'role': ..., 'content': ...}}")
        out.append({"role": str(m["role"]), "content": str(m["content"])})
    if out[-1]["role"] != "assistant":
        raise UserError(f"example {index}: the last message must be the assistant answer (got {out[-1]['role']!r})")
    return out


def encode_chat_example(
    tokenizer: Any, example: ChatExample, max_length: int = 1024, index: int = 0
) -> tuple[list[int], list[int]]:
    """(prompt ids, completion ids) of one chat example with the tokenizer's chat template.

    The prompt is every message but the last, rendered with the generation prompt; the completion is the rest of the
    rendered conversation (the answer and its end-of-turn tokens). Too long: the prompt loses tokens on the left,
    then the completion on the right.
    """
    msgs = _messages(example, index)
    prompt = tokenizer.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(msgs, tokenize=False)
    if not full.startswith(prompt):
        raise RoloraRuntimeError(
            "the tokenizer's chat template does not render the prompt as a prefix of the conversation, so the "
            "completion cannot be isolated; use a model whose template does"
        )
    p_ids = list(tokenizer(prompt, add_special_tokens=False).input_ids)
    c_ids = list(tokenizer(full[len(prompt) :], add_special_tokens=False).input_ids)
    if len(c_ids) >= max_length:
        p_ids, c_ids = p_ids[-1:], c_ids[: max_length - 1]
    elif len(p_ids) + len(c_ids) > max_length:
        p_ids = p_ids[len(p_ids) + len(c_ids) - max_length :]
    return p_ids, c_ids


def _pad_id(tokenizer: Any) -> int:
    for attr in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            return v
    return 0


def _score(model: Any, rows: Sequence[tuple[Sequence[int], int]], pad_id: int, batch_tokens: int) -> LossStats:
    """Sum the NLL of ``ids[start:]`` (each token given the ones before it) over rows ``(ids, start)``.

    Rows are sorted by length and batched up to ``batch_tokens`` padded tokens, right-padded, without gradients.
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    device = next(model.parameters()).device
    nll, count = 0.0, 0

    def flush(batch: list[int]) -> None:
        nonlocal nll, count
        width = max(len(rows[i][0]) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, -100)
        for r, i in enumerate(batch):
            seq, start = rows[i]
            n, s = len(seq), max(start, 1)
            ids[r, :n] = torch.tensor(list(seq), dtype=torch.long)
            mask[r, :n] = 1
            labels[r, s:n] = ids[r, s:n]
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            target = labels[:, 1:].to(device)
            keep = target != -100
            loss = F.cross_entropy(logits[:, :-1][keep].float(), target[keep], reduction="sum")
        nll += float(loss)
        count += int(keep.sum())

    batch: list[int] = []
    for i in sorted(range(len(rows)), key=lambda j: len(rows[j][0])):
        if batch and (len(batch) + 1) * len(rows[i][0]) > batch_tokens:
            flush(batch)
            batch = []
        batch.append(i)
    if batch:
        flush(batch)
    return LossStats(nll, count)


def score_completions(
    model: Any, tokenizer: Any, examples: Sequence[ChatExample], max_length: int = 1024, batch_tokens: int = 2048
) -> LossStats:
    """NLL of the assistant completions of chat examples, the prompt masked (see ``encode_chat_example``)."""
    if not examples:
        raise UserError("no validation examples to score; pass the role's validation split")
    rows = []
    for i, ex in enumerate(examples):
        p, c = encode_chat_example(tokenizer, ex, max_length, i)
        rows.append((p + c, len(p)))
    return _score(model, rows, _pad_id(tokenizer), batch_tokens)


def completion_perplexity(
    model: Any, tokenizer: Any, examples: Sequence[ChatExample], max_length: int = 1024, batch_tokens: int = 2048
) -> float:
    """Perplexity of the assistant completions (loss on the completion only), batched, without gradients.

    Each example is a list of chat messages ending with the assistant answer (or ``{"messages": [...]}``).
    """
    return score_completions(model, tokenizer, examples, max_length, batch_tokens).perplexity


def score_texts(
    model: Any, tokenizer: Any, texts: Sequence[str], max_length: int = 512, batch_tokens: int = 2048
) -> LossStats:
    """NLL of plain texts, each truncated to ``max_length`` tokens; every token but the first is scored."""
    if not texts:
        raise UserError("no texts to score; pass at least one paragraph")
    rows = []
    for t in texts:
        ids = list(tokenizer(t, truncation=True, max_length=max_length).input_ids)
        if len(ids) >= 2:
            rows.append((ids, 1))
    return _score(model, rows, _pad_id(tokenizer), batch_tokens)


def text_perplexity(
    model: Any, tokenizer: Any, texts: Sequence[str], max_length: int = 512, batch_tokens: int = 2048
) -> float:
    """Perplexity of plain prose (e.g. the general probe set), batched, without gradients."""
    return score_texts(model, tokenizer, texts, max_length, batch_tokens).perplexity


def load_probe_texts(limit: int | None = None) -> list[str]:
    """The shipped general-prose probe set (original text written for rolora, CC0), in file order."""
    ref = resources.files(__package__ or "rolora.adapters").joinpath("probe").joinpath(PROBE_FILE)
    texts = []
    for n, line in enumerate(ref.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            texts.append(str(json.loads(line)["text"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise RoloraRuntimeError(f"probe set {PROBE_FILE} line {n} is not {{'id', 'text'}} JSON; reinstall") from e
    return texts[:limit] if limit is not None else texts


# -- intruder dimensions ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IntruderReport:
    """Intruder counts per adapted matrix; ``min_cos``: the smallest max-|cos| among each matrix's top-k."""

    top_k: int
    epsilon: float
    per_layer: dict[str, int]
    min_cos: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.per_layer.values())

    @property
    def layers(self) -> int:
        return len(self.per_layer)

    def to_dict(self) -> dict[str, Any]:
        return {
            "top_k": self.top_k,
            "epsilon": self.epsilon,
            "total": self.total,
            "layers": self.layers,
            "layers_with_intruders": sum(1 for v in self.per_layer.values() if v),
            "per_layer": dict(self.per_layer),
            "min_cos": dict(self.min_cos),
        }


def count_intruders(weight: Any, merged: Any, top_k: int = 10, epsilon: float = 0.5) -> tuple[int, float]:
    """(intruders, smallest max-|cos|) among the top-k left singular vectors of ``merged`` vs all of ``weight``.

    PEFT's convention: ``cos = |U'ᵀ U|.max(dim=1)``, intruder when ``cos[:top_k] < epsilon``.
    """
    import torch

    if weight.shape != merged.shape:
        raise RoloraRuntimeError(f"weight shapes differ: {tuple(weight.shape)} vs {tuple(merged.shape)}")
    if torch.equal(weight, merged):
        return 0, 1.0  # identical matrices have identical singular vectors
    u_base = torch.linalg.svd(weight.detach().float(), full_matrices=False).U
    u_new = torch.linalg.svd(merged.detach().float(), full_matrices=False).U[:, :top_k]
    cos = (u_new.T @ u_base).abs().max(dim=1).values
    return int((cos < epsilon).sum()), float(cos.min())


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run LAPACK on one thread: these SVDs are small, and extra threads make them slower (8x on a busy 2-core box)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _short(name: str) -> str:
    return name.removeprefix("base_model.model.")


def _matches(name: str, modules: Sequence[str] | None) -> bool:
    return modules is None or any(name == m or name.endswith("." + m) for m in modules)


def lora_intruders(
    peft_model: Any,
    top_k: int = 10,
    epsilon: float = 0.5,
    adapter_name: str = "default",
    modules: Sequence[str] | None = None,
) -> IntruderReport:
    """Intruder dimensions of every LoRA-adapted matrix of a PEFT model (W vs W + ΔW)."""
    from peft.tuners.lora import LoraLayer

    per_layer: dict[str, int] = {}
    min_cos: dict[str, float] = {}
    with _one_thread():
        for name, module in peft_model.named_modules():
            if not isinstance(module, LoraLayer) or not _matches(name, modules):
                continue
            layer: Any = module
            if adapter_name not in layer.lora_A and adapter_name not in layer.lora_embedding_A:
                continue
            weight = layer.get_base_layer().weight
            if weight.dim() != 2:
                continue
            delta = layer.get_delta_weight(adapter_name)
            n, c = count_intruders(weight, weight + delta, top_k, epsilon)
            per_layer[_short(name)], min_cos[_short(name)] = n, c
    if not per_layer:
        raise UserError(f"no LoRA-adapted matrix found for adapter '{adapter_name}' (modules filter: {modules})")
    return IntruderReport(top_k, epsilon, per_layer, min_cos)


def weight_intruders(
    base_model: Any, new_model: Any, top_k: int = 10, epsilon: float = 0.5, modules: Sequence[str] | None = None
) -> IntruderReport:
    """Intruder dimensions of a full fine-tune: W_full vs W for the same ``nn.Linear`` layers (``lm_head`` aside).

    ``modules``: name suffixes to keep (e.g. ``["q_proj", "v_proj"]`` to compare with a LoRA on those).
    """
    from torch import nn

    new_modules = dict(new_model.named_modules())
    per_layer: dict[str, int] = {}
    min_cos: dict[str, float] = {}
    with _one_thread():
        for name, module in base_model.named_modules():
            if not isinstance(module, nn.Linear) or name.rpartition(".")[2] == "lm_head" or not _matches(name, modules):
                continue
            other = new_modules.get(name)
            if not isinstance(other, nn.Linear):
                raise RoloraRuntimeError(f"layer {name} of the base is missing from the fine-tuned model")
            n, c = count_intruders(module.weight, other.weight, top_k, epsilon)
            per_layer[name], min_cos[name] = n, c
    if not per_layer:
        raise UserError(f"no linear layer of the base matches {modules}; use names such as q_proj, v_proj")
    return IntruderReport(top_k, epsilon, per_layer, min_cos)


# -- gates --------------------------------------------------------------------------------------------------------


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
    rise = (adapter_ppl / base_ppl - 1.0) * 100.0 if base_ppl > 0 else math.nan
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
    better, or several such (each its own role-metric gate, e.g. the analyst's answer F1 and citation correctness);
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
    role_gates: list[GateResult] = []
    metrics = [role_metric] if isinstance(role_metric, tuple) else list(role_metric or [])
    for i, (name, adapter_value, base_value) in enumerate(metrics):
        g = gate_role_metric(name, float(adapter_value), float(base_value), thr.min_role_metric_delta)
        if i:  # the first keeps the name "role_metric"; the others are named for their metric
            g = GateResult(f"role_metric:{name}", g.status, g.figures, g.summary)
        role_gates.append(g)
    if not role_gates:
        role_gates.append(_skipped("role_metric", "no role metric given (the eval suite computes it)"))
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


def mitigate_intruders(
    base_dir: Path | str,
    adapter_dir: Path | str,
    out_dir: Path | str,
    *,
    top_k: int = 10,
    epsilon: float = 0.5,
    mitigation_lambda: float = 0.75,
) -> Path:
    """Write a copy of a LoRA adapter with its intruder dimensions damped (PEFT's ``reduce_intruder_dimension``).

    Trades some task accuracy for less forgetting (Shuttleworth et al. 2024, Fig. 8); register the result as a new
    version and gate it like any other. Written atomically; ``out_dir`` must not exist.
    """
    import torch
    from peft import PeftModel
    from peft.tuners.lora.intruders import reduce_intruder_dimension
    from transformers import AutoModelForCausalLM

    folder, out = Path(adapter_dir), Path(out_dir)
    if check_model_folder(folder) != "lora":
        raise UserError(f"{folder} is a full model; intruder mitigation applies to LoRA adapters only")
    check_base_compatible(folder, base_dir)
    if out.exists():
        raise UserError(f"{out} exists; choose a new folder for the mitigated adapter")
    info = base_model_info(base_dir)
    base = AutoModelForCausalLM.from_pretrained(info.path, dtype=torch.float32)
    verify_adapter_files(folder.name, folder)
    model = PeftModel.from_pretrained(base, str(folder))
    new_name = "intruder_reduced"
    with _one_thread():
        reduce_intruder_dimension(
            model,
            old_adapter_name="default",
            new_adapter_name=new_name,
            top_k=top_k,
            threshold_epsilon=epsilon,
            mitigation_lambda=mitigation_lambda,
            logging_sink=log.debug,
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model.save_pretrained(str(tmp), selected_adapters=[new_name], safe_serialization=True)
        saved = tmp / new_name if (tmp / new_name / "adapter_config.json").is_file() else tmp
        os.rename(saved, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
