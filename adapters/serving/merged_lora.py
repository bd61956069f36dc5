"""LoRA merged into packed weights for the decoding steps of one adapter (``backend.merged_adapters``).

A request's LoRA costs a decoding step far more than its arithmetic: for each of SmolLM2's 210 LoRA layers PEFT (or
:mod:`.fused_lora`) runs two rank-8 products, a scaling and an addition next to the base layer's product: ~840 small
kernel calls and their Python a step. Measured on 2 cores (2026-12-05, the shipped analyst, a ~900-token cache): a
one-row step 72.9 ms with the LoRA applied beside the base products, 54.0 with each layer's weight ``W + scale * B @ A``
packed once for oneDNN; a pass verifying 11 drafted tokens 90.4 vs 68.0 ms. The logits moved by < 1e-4 (the merged
product adds in another order), the greedy tokens were the same.

So for up to ``slots`` adapters the backend keeps, per LoRA layer, a packed copy of the merged weight
(:func:`.few_rows.pack_weight`; for layers whose base layers run one product over their stacked weights,
:class:`.few_rows.SharedInputProducts`, one stacked copy per group, the LoRA merged into its members), and while a batch
whose rows all use one of them is generated (:meth:`.fused_lora.FusedLoRA.rows` with ``merged=``), each LoRA layer is
taken out of the model, its base layer in its place (PEFT's wrapper and the hook skipped: another ~5 ms a pass), whose
products of a few rows (:func:`.few_rows.few_rows`: decoding steps, passes verifying drafts) run on that copy; a prefill
(more rows, or under bf16 autocast) runs the plain weight and the LoRA beside it as before, bit for bit. The cost is
memory: a copy of every weight the adapter has a LoRA on (+425 MB for an adapter on SmolLM2's seven projections), and ~1
s to merge and pack.

When: an adapter is merged once it has decoded :data:`MERGE_AFTER_TOKENS` tokens beside its LoRA, about what the
merge costs (rent or buy: at most twice the time of the better choice made in hindsight). Merging on the first
request made the first questions of a validation eval ~0.5 s slower each and would make a one-shot ``rolora ask``
(one process, one call of ~25-75 decoded tokens) pay ~1 s to save ~0.1-0.2. Which adapters hold a copy: the first
``slots`` adapters to get there; after that, one that has decoded more than twice as many tokens as the
least-decoding holder, plus :data:`SWAP_TOKENS`, takes its place (so roles used alike never make the backend re-merge
on every call). A copy is remade when the base weight, the adapter's A or B (replaced, or changed in place where torch
counts versions: not for an adapter loaded under inference mode, as the backend's are) or its scaling changed since it
was made, and dropped when its adapter is evicted or reloaded.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Sequence
from typing import Any

__all__ = ["MERGE_AFTER_TOKENS", "SWAP_TOKENS", "MergedLoRA"]

# tokens an adapter decodes beside its LoRA before it is merged: ~1 s of merging and packing on 2 cores (SmolLM2, seven
# projections) over the ~3-5 ms a token it saves the analyst (bench/analyst_calls.py +unmerged: 19.0 vs 14.1 ms a token)
MERGE_AFTER_TOKENS = 300
SWAP_TOKENS = 256  # a holder is replaced only by an adapter that decoded 2x its tokens plus this many


def _stamp(layer: Any, name: str) -> tuple[Any, ...]:
    """What a merged copy was made from: the base weight, A and B (each tensor, and its version counter where it has
    one: an adapter loaded under inference mode has none), and the scaling."""
    tensors = (layer.base_layer.weight, layer.lora_A[name].weight, layer.lora_B[name].weight)
    return (*(_tensor_stamp(t) for t in tensors), layer.scaling[name])


def _tensor_stamp(t: Any) -> tuple[int, int]:
    return id(t), -1 if t.is_inference() else t._version


def _key(layer: Any) -> int:
    """Where a LoRA layer's merged weight is kept: its base layer's group of siblings sharing an input
    (:class:`.few_rows.SharedInputProducts`: one stacked weight for the group), else the layer itself."""
    group = getattr(layer.base_layer, "group", None)
    return id(group) if group is not None else id(layer)


def _stamps(name: str, layers: Sequence[Any]) -> dict[int, tuple[Any, ...]]:
    """Key (:func:`_key`) -> what its merged copy is made from: the stamps of its LoRA layers that have ``name``, and
    for a group, every member's weight."""
    out: dict[int, tuple[Any, ...]] = {}
    for m in layers:
        key = _key(m)
        if key not in out:
            group = getattr(m.base_layer, "group", None)
            out[key] = tuple(_tensor_stamp(b.weight) for b in group.members) if group is not None else ()
        out[key] += (_stamp(m, name),)
    return out


class MergedLoRA:
    """The packed merged weights of up to ``slots`` adapters (see the module docstring).

    >>> merged = MergedLoRA(slots=1, after_tokens=0)  # doctest: +SKIP
    >>> weights = merged.weights("contracts-analyst@1", lora_layers)  # layer (or group) id -> packed W + scale * B @ A
    >>> with fused.rows(["contracts-analyst@1"], merged=weights): ...  # doctest: +SKIP
    """

    def __init__(self, slots: int, after_tokens: int = MERGE_AFTER_TOKENS) -> None:
        self.slots = slots
        self.after_tokens = after_tokens
        self._held: OrderedDict[str, dict[int, tuple[Any, tuple[Any, ...]]]] = OrderedDict()
        self._unmergeable: set[str] = set()
        self.decoded: Counter[str] = Counter()  # tokens decoded per adapter (which adapters hold a copy)
        self.merges = 0  # copies made (tests, benchmarks)

    def held(self) -> list[str]:
        return list(self._held)

    def count(self, name: str, tokens: int) -> None:
        """``tokens`` more decoded for ``name``."""
        self.decoded[name] += tokens

    def forget(self, name: str) -> None:
        """Drop ``name``'s copy (its adapter is evicted or loaded again)."""
        self._held.pop(name, None)
        self._unmergeable.discard(name)
        self.decoded.pop(name, None)

    def weights(self, name: str, layers: Sequence[Any]) -> dict[int, Any] | None:
        """Layer id (or its group's, :func:`_key`) -> packed merged weight for every LoRA layer (of ``layers``) that has
        ``name``; made now when ``name`` may hold a copy (it has decoded ``after_tokens``, and a slot is free or it
        outdecoded a holder) and has none, or a stale one; None when it holds none."""
        if self.slots < 1 or name in self._unmergeable:
            return None
        mine = [m for m in layers if name in m.lora_A]
        held = self._held.get(name)
        if held is not None and {key: stamp for key, (_, stamp) in held.items()} == _stamps(name, mine):
            self._held.move_to_end(name)
            return {key: packed for key, (packed, _) in held.items()}
        if held is None and self.decoded[name] < self.after_tokens:
            return None  # not yet decoded what merging costs
        if held is None and len(self._held) >= self.slots:
            victim = min(self._held, key=lambda n: self.decoded[n])
            if self.decoded[name] <= 2 * self.decoded[victim] + SWAP_TOKENS:
                return None
            del self._held[victim]
        made = self._merge(name, mine)
        if made is None:
            self._unmergeable.add(name)
            self._held.pop(name, None)
            return None
        self._held[name] = made
        self.merges += 1
        return {key: packed for key, (packed, _) in made.items()}

    @staticmethod
    def _merge(name: str, layers: Sequence[Any]) -> dict[int, tuple[Any, tuple[Any, ...]]] | None:
        import torch

        from .few_rows import FewRowsLinear, pack_weight

        if not layers or any(
            not isinstance(m.base_layer, FewRowsLinear) or m.base_layer.weight.dtype != torch.float32 for m in layers
        ):
            return None  # only layers whose few-row products run on packed weights (backend.few_rows_onednn)
        stamps = _stamps(name, layers)
        parts: dict[int, list[Any]] = {}  # key -> its LoRA layers
        for m in layers:
            parts.setdefault(_key(m), []).append(m)
        out: dict[int, tuple[Any, tuple[Any, ...]]] = {}
        with torch.no_grad():
            for key, ms in parts.items():
                merged = {id(m.base_layer): m.base_layer.weight + m.get_delta_weight(name).float() for m in ms}
                group = ms[0].base_layer.group
                if group is None:
                    packed = pack_weight(merged[id(ms[0].base_layer)])
                else:  # the group's stacked weight, with the LoRA merged into the members that have one
                    packed = group.stacked_weight([merged.get(id(b), b.weight.detach()) for b in group.members])
                out[key] = (packed, stamps[key])
        return out
