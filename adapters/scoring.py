"""Loss and perplexity scoring for the quality gates: completion-only NLL of chat examples (the chat template
applied, the prompt masked), NLL of plain prose, batched by padded-token budget without gradients, and the shipped
general-prose probe set (``probe/general_prose.jsonl``, package data) that the forgetting gate scores before and after
the adapter. ``rolora.adapters.gates`` turns these figures into gate results.

Importing this module is light: torch loads inside the functions that use it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from rolora.errors import RoloraRuntimeError, UserError

__all__ = [
    "ChatExample",
    "LossStats",
    "completion_perplexity",
    "encode_chat_example",
    "load_probe_texts",
    "perplexity_rise_pct",
    "score_completions",
    "score_texts",
    "text_perplexity",
]

PROBE_FILE = "general_prose.jsonl"
ChatExample = Sequence[Mapping[str, str]] | Mapping[str, Any]  # messages, or {"messages": [...], ...}


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


def perplexity_rise_pct(base_ppl: float, adapter_ppl: float) -> float:
    """% rise of a perplexity over the base model's (the forgetting gate's figure); NaN when the base is not > 0."""
    return (adapter_ppl / base_ppl - 1.0) * 100.0 if base_ppl > 0 else math.nan


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
