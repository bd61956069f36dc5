"""Fused multi-LoRA for mixed batches: one pair of dense matmuls per LoRA layer for every row of a batch.

PEFT serves a batch whose rows use different adapters (``adapter_names``) by looping, in every LoRA layer and at
every decoding step, over the batch's adapters: index the rows of one adapter, two small matmuls, scatter back. On
CPU that is Python and kernel-launch overhead times layers times adapters, and a mixed batch decodes at ~0.77x of a
base-only one. Here the loaded adapters' weights are stacked once per set of adapters in a batch (the idea of
Punica/S-LoRA's BGMV, done with dense matmuls): in a layer with input ``x`` (rows ``b``),

    h = x @ A_all.T           A_all: the adapters' A matrices stacked along the rank   [R, in]
    h *= mask[b]              each row keeps only the rank columns of its own adapter (base rows: none)
    out += h @ B_all.T        B_all: the adapters' B matrices (times their scaling) side by side  [out, R]

two matmuls and one multiply per layer whatever the number of adapters (R is the sum of their ranks, small next
to the layer's width), no per-adapter loop, no gather. A_all and B_all are kept transposed (``[in, R]`` and ``[R,
out]``, each contiguous), so both products read their weight row by row (MKL's plain NN kernel), which in a decoding
step, where the base layers' own products have pushed them out of the caches, took ~31-34 us a layer against ~43-51
for the untransposed pair (2-core Intel Xeon, 2026-12-05, 16 rows between oneDNN products); a mixed step of 16 rows
on three adapters on all seven layers of a block, 78.8 ms against 82.0 (median of 6 interleaved runs of 64 tokens,
base-only 65.2; the same replies). It covers plain LoRA on ``nn.Linear`` layers (what
``rolora train`` makes); a batch with anything else (DoRA or other variants, LoRA on embeddings or convolutions,
``lora_bias``) is served by PEFT's own mixed-batch path. Greedy outputs equal PEFT's (tests).

In a decoding step (one position a row, float32) the pair, the mask and the add are one call of :mod:`.lora_rows`'
compiled kernel where it could be built (``backend.lora_kernel``, on by default): it computes only each row's own
adapter's rank columns and adds into the base product in place; every adapter's rank is padded with zero columns to
a multiple of :data:`.lora_rows.RANK_STEP` in the stacks, which adds exactly nothing on either path. With the
kernel, A is kept as PEFT stacks it (``[R, in]``, what the kernel reads) and the torch products (prefills) read it
transposed, a view; the layers sharing an input (:class:`.few_rows.SharedInputProducts`) get one
:class:`.lora_rows.ColumnPlan` for the duration of :meth:`FusedLoRA.rows` (``beside_all``). With adapters on
all seven layers of a block, a mixed batch of 16 decoded 0.90-0.95x base-only's tokens a second (best of each, three
runs of ``bench/serving.py --targets all``; 2-core Intel Xeon, 2026-12-06; README "Mixed batches of adapters on every
layer") against 0.81-0.86x on the torch products, the same replies.

Without the kernel, in a decoding step of several rows (up to ``ONE_THREAD_ROWS``) these small products run on one
MKL thread (:mod:`.blas_threads`; the layers' own matmuls keep every thread): split over two cores, the pair cost
~200 us a layer inside a 16-row step instead of ~45 us. A one-row product is not split; a prefill's products are
large enough to gain from every thread.
"""

from __future__ import annotations

import contextlib
import functools
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .lora_rows import RANK_STEP, ColumnPlan, KernelLayer, LoraRowsKernel, RowGroups

__all__ = ["ONE_THREAD_ROWS", "FusedLoRA"]

ONE_THREAD_ROWS = 64  # products of 2..64 rows (a decoding step of as many requests) run on one MKL thread


class _Stack:
    """One layer's adapters for one adapter set: ``a_t`` = A_all.T [in, R] (contiguous; with the kernel, a view of its
    [R, in] stack), ``b_t`` = B_all.T [R, out] (contiguous); ``slots``: the slot of each rank column; ``ranges``: slot
    -> (first column, width); ``layer``: the stacks described for :mod:`.lora_rows`' kernel (None without it)."""

    __slots__ = ("a_t", "b_t", "layer", "ranges", "slots")

    def __init__(
        self, a_t: Any, b_t: Any, slots: Any, ranges: dict[int, tuple[int, int]], layer: KernelLayer | None
    ) -> None:
        self.a_t, self.b_t, self.slots, self.ranges, self.layer = a_t, b_t, slots, ranges, layer


def _rows_view(output: Any) -> Any:
    """``output`` as a 2-D view of its rows (the same memory) when it has one, else None: contiguous, or a view of a
    wider product's columns (a layer of :class:`.few_rows.SharedInputProducts`), whose rows BLAS writes in place."""
    if output.stride(-1) != 1:
        return None
    try:
        return output.view(-1, output.shape[-1])
    except RuntimeError:  # rows not evenly strided: no view of them
        return None


class FusedLoRA:
    """Fused mixed-adapter forward for the LoRA layers of one ``PeftModel`` (see the module docstring).

    >>> fused = FusedLoRA(peft_model)  # doctest: +SKIP
    >>> if fused.supports(names):  # doctest: +SKIP
    ...     with fused.rows(names):
    ...         peft_model.generate(...)
    """

    def __init__(self, peft_model: Any, cache_size: int = 8, kernel: LoraRowsKernel | None = None) -> None:
        self._peft = peft_model
        self.kernel = kernel  # .lora_rows' compiled kernel for decoding steps (None: torch's products)
        self._stacks: OrderedDict[tuple[str, ...], dict[int, _Stack | None]] = OrderedDict()
        self.cache_size = cache_size
        self._hooked: set[int] = set()
        # layer id -> (stack, row mask, the kernel's row groups) while serving
        self._active: dict[int, tuple[_Stack, Any, RowGroups | None]] | None = None
        self._layer_list: list[Any] | None = None
        self._place_list: list[tuple[Any, str, Any]] | None = None
        self._plain: dict[str, bool] = {}  # adapter -> plain LoRA on nn.Linear only (fusable)
        self._one_thread: Any = None  # MKL's per-thread count setter (blas_threads.py) while serving, if any
        self._merged: set[int] = set()  # ids of the LoRA layers whose base layers run on merged weights while serving
        self._swapped: set[int] = set()  # ids of the LoRA layers taken out (their base layers in place) while serving

    # -- which batches ---------------------------------------------------------------------------------------
    def _layers(self) -> list[Any]:
        from peft.tuners.lora.layer import LoraLayer

        if self._layer_list is None:
            self._layer_list = [m for m in self._peft.modules() if isinstance(m, LoraLayer)]
        return self._layer_list

    def lora_layers(self) -> list[Any]:
        """The model's LoRA layers (PEFT's ``LoraLayer`` modules), in module order."""
        return self._layers()

    def supports(self, names: Sequence[str]) -> bool:
        """Whether every adapter of ``names`` (a row each; ``"__base__"`` for the base model) is plain LoRA on
        ``nn.Linear`` layers, so the fused path serves the batch exactly."""
        from peft.tuners.lora.layer import Linear

        for name in {n for n in names if n != "__base__"}:
            plain = self._plain.get(name)
            if plain is None:  # read once per loaded adapter, not per batch
                plain = self._plain[name] = all(
                    type(m) is Linear
                    and name not in m.lora_variant
                    and not m.lora_bias.get(name)
                    and m.lora_B[name].bias is None
                    for m in self._layers()
                    if name in m.lora_A
                )
            if not plain:
                return False
        return True

    def clear(self) -> None:
        """Forget the stacked weights, the layer list and which adapters are fusable (after an adapter is loaded or
        evicted)."""
        self._stacks.clear()
        self._layer_list = None
        self._place_list = None
        self._plain.clear()

    # -- serving ---------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def rows(self, names: Sequence[str], merged: Mapping[int, Any] | None = None) -> Iterator[None]:
        """Inside: the model's forward applies each row's adapter (``names[i]`` for row ``i``) through the fused
        layers, with PEFT's own LoRA path switched off. Each LoRA layer whose base layer is a
        :class:`.few_rows.FewRowsLinear` (``backend.few_rows_onednn``) is taken out of the model for the duration, its
        base layer in its place, which adds the rows' fused LoRA to its products itself (``beside``; PEFT's wrapper
        and the hook cost a decoding step ~5 ms on 2 cores, measured 2026-12-05), so the model's layers are plain
        again (:mod:`.llama_step` runs them in fewer operations). ``merged`` (from
        :meth:`.merged_lora.MergedLoRA.weights`: layer id, or the id of a layer's group of siblings sharing an input,
        -> a packed weight with the rows' one adapter merged in): those base layers run their products of a few rows
        on the merged weight, with nothing added, and add the LoRA to any other product (a prefill)."""
        import torch

        slots = tuple(sorted({n for n in names if n != "__base__"}))
        stacks = self._stacks_for(slots)
        row_slot = torch.tensor([slots.index(n) if n != "__base__" else -1 for n in names], dtype=torch.long)
        # one row mask (and one set of the kernel's row groups) per rank layout, shared by the layers that have it
        masks: dict[int, tuple[Any, RowGroups | None]] = {}
        active: dict[int, tuple[_Stack, Any, RowGroups | None]] = {}
        for layer_id, stack in stacks.items():
            if stack is None:
                continue
            key = id(stack.slots)
            if key not in masks:
                mask = (stack.slots.unsqueeze(0) == row_slot.unsqueeze(1)).to(stack.a_t.dtype).unsqueeze(1)
                groups = RowGroups(row_slot.tolist(), stack.ranges) if stack.layer is not None else None
                masks[key] = (mask, groups)
            active[layer_id] = (stack, *masks[key])
        layers = self._layers()
        before = [m._disable_adapters for m in layers]
        for m in layers:
            m._disable_adapters = True  # the layer computes base_layer(x) only; the hook adds the fused LoRA
        from .few_rows import FewRowsLinear

        swapped, merged_ids = [], set()
        for parent, attr, m in self._places():
            base = m.base_layer
            if not isinstance(base, FewRowsLinear):
                continue  # backend.few_rows_onednn off: PEFT's layer stays, the hook adds the LoRA
            group = base.group  # siblings sharing an input: one stacked weight (few_rows.py)
            weight = merged.get(id(group) if group is not None else id(m)) if merged else None
            if weight is not None:
                if group is not None:
                    group.substitute = weight
                else:
                    base.substitute = weight
                merged_ids.add(id(m))
            if weight is not None or id(m) in active:  # the rows' LoRA, added to the base layer's products
                base.beside = functools.partial(self._beside, m)
            setattr(parent, attr, base)
            swapped.append((parent, attr, m))
        planned = self._plan_groups(swapped, active, merged_ids)
        self._active = active
        self._merged = merged_ids
        self._swapped = {id(m) for _, _, m in swapped}
        from .blas_threads import mkl_thread_local

        self._one_thread = mkl_thread_local()
        try:
            yield
        finally:
            self._active = None
            self._merged = set()
            self._swapped = set()
            self._one_thread = None
            for group in planned:
                group.beside_all = None
            for parent, attr, m in swapped:
                setattr(parent, attr, m)
                m.base_layer.substitute = m.base_layer.beside = None
                if getattr(m.base_layer, "group", None) is not None:
                    m.base_layer.group.substitute = None
            for m, was in zip(layers, before, strict=True):
                m._disable_adapters = was

    def _plan_groups(self, swapped: list[tuple[Any, str, Any]], active: dict[int, Any], merged: set[int]) -> list[Any]:
        """Give each group of swapped-in base layers sharing an input (:class:`.few_rows.SharedInputProducts`) a
        ``beside_all`` that adds all its members' LoRA into the group's product in one kernel pass per member (no view
        of each member's columns, one check for the group), where the kernel serves every member with a LoRA and none
        runs on merged weights; the groups given one."""
        kernel = self.kernel
        if kernel is None:
            return []
        by_base = {id(m.base_layer): m for _, _, m in swapped}
        groups = {id(g): g for g in (m.base_layer.group for _, _, m in swapped) if g is not None}
        planned = []
        for group in groups.values():
            plan = self._column_plan(group, by_base, active, merged)
            if plan is not None:
                group.beside_all = functools.partial(kernel.add_columns, plan)
                planned.append(group)
        return planned

    @staticmethod
    def _column_plan(
        group: Any, by_base: dict[int, Any], active: dict[int, Any], merged: set[int]
    ) -> ColumnPlan | None:
        """``group``'s members with a LoRA on the kernel, at their first columns of its product, or None where a
        member runs on merged weights or on torch's products (each member's own ``beside`` then decides) or none has
        a LoRA."""
        parts: list[tuple[KernelLayer, RowGroups, int]] = []
        first = 0
        for member, width in zip(group.members, group.widths, strict=True):
            m = by_base.get(id(member))
            if m is not None and id(m) in merged:
                return None
            entry = active.get(id(m)) if m is not None else None
            if entry is not None:
                stack, _, row_groups = entry
                if stack.layer is None or row_groups is None:
                    return None
                parts.append((stack.layer, row_groups, first))
            first += width
        return ColumnPlan(parts, first) if parts else None

    def _places(self) -> list[tuple[Any, str, Any]]:
        """(parent module, attribute, LoRA layer) of every LoRA layer of the model."""
        if self._place_list is None:
            from peft.tuners.lora.layer import LoraLayer

            self._place_list = [
                (parent, attr, child)
                for parent in self._peft.modules()
                for attr, child in parent.named_children()
                if isinstance(child, LoraLayer)
            ]
        return self._place_list

    def _beside(self, layer: Any, x: Any, output: Any) -> Any:
        """``output`` (the base product of ``x``) with ``layer``'s fused LoRA added, as the hook adds it."""
        added = self._add_lora(layer, x, output)
        return output if added is None else added

    def _stacks_for(self, slots: tuple[str, ...]) -> dict[int, _Stack | None]:
        import torch

        cached = self._stacks.get(slots)
        if cached is not None:
            self._stacks.move_to_end(slots)
            return cached
        out: dict[int, _Stack | None] = {}
        # identical rank layouts share one slots tensor and ranges (and one mask)
        layouts: dict[tuple[int, ...], tuple[Any, dict[int, tuple[int, int]]]] = {}
        kernel = self.kernel
        with torch.no_grad():
            for m in self._layers():
                a_parts: list[Any] = []
                b_parts: list[Any] = []
                layout: list[int] = []
                ranges: dict[int, tuple[int, int]] = {}
                for s, name in enumerate(slots):
                    if name not in m.lora_A:
                        continue
                    a = m.lora_A[name].weight  # [r, in]
                    b = m.lora_B[name].weight * m.scaling[name]  # [out, r]
                    pad = -a.shape[0] % RANK_STEP  # zero columns up to the kernel's width: they add exactly nothing
                    if pad:
                        a = torch.cat([a, a.new_zeros(pad, a.shape[1])])
                        b = torch.cat([b, b.new_zeros(b.shape[0], pad)], dim=1)
                    ranges[s] = (len(layout), a.shape[0])
                    a_parts.append(a)
                    b_parts.append(b)
                    layout += [s] * a.shape[0]
                self._hook(m)
                if not a_parts:
                    out[id(m)] = None
                    continue
                key = tuple(layout)
                if key not in layouts:
                    layouts[key] = (torch.tensor(layout, dtype=torch.long), ranges)
                a, b_t = torch.cat(a_parts), torch.cat(b_parts, dim=1).T.contiguous()  # [R, in], [R, out]
                described = None  # the stacks as the compiled kernel reads them (float32, ranks it holds)
                widest = max(w for _, w in ranges.values())
                if kernel is not None and a.dtype == torch.float32 and widest <= kernel.max_rank:
                    described = kernel.layer(a, b_t)  # A as stacked: each rank column's weights side by side
                    a_t = a.T  # the torch products (prefills) read the same memory, transposed
                else:
                    a_t = a.T.contiguous()
                out[id(m)] = _Stack(a_t, b_t, *layouts[key], described)
        self._stacks[slots] = out
        while len(self._stacks) > self.cache_size:
            self._stacks.popitem(last=False)
        return out

    def _hook(self, layer: Any) -> None:
        if id(layer) in self._hooked:
            return
        self._hooked.add(id(layer))
        layer.register_forward_hook(self._forward_hook)

    def _forward_hook(self, layer: Any, args: tuple[Any, ...], output: Any) -> Any:
        if id(layer) in self._swapped:
            return None  # taken out of the model: its base layer adds the LoRA (``beside``), not this call
        return self._add_lora(layer, args[0], output)

    def _add_lora(self, layer: Any, x: Any, output: Any) -> Any:
        """``output`` (``layer``'s base product of ``x``) with the rows' fused LoRA of ``layer`` added (in place where
        it can), or None where there is none to add."""
        active = self._active
        if active is None:
            return None  # PEFT's own path ran: leave its output as it is
        entry = active.get(id(layer))
        if entry is None:
            return None
        import torch

        stack, mask, groups = entry
        if id(layer) in self._merged:
            from .few_rows import few_rows

            if few_rows(x, layer.base_layer.weight):
                return None  # the base layer multiplied by the weight with this LoRA merged in
        kernel = self.kernel
        if (
            kernel is not None
            and groups is not None
            and stack.layer is not None
            and not torch.is_autocast_enabled("cpu")
            and kernel.add_if_fits(stack.layer, x, output, groups)  # a float32 decoding step: one position a row
        ):
            return output  # every row's LoRA added in place (.lora_rows)
        one_thread = self._one_thread if 2 <= x.numel() // x.shape[-1] <= ONE_THREAD_ROWS else None
        before = one_thread(1) if one_thread is not None else 0  # this thread's MKL calls on one core (see above)
        try:
            if not torch.is_autocast_enabled("cpu"):  # under bf16 autocast (backend.quantize: bf16) it casts, cheaper
                x = x.to(stack.a_t.dtype)
            h = x @ stack.a_t  # [b, seq, R]
            h.mul_(mask if h.dim() == 3 else mask.squeeze(1))  # each row keeps its own adapter's rank columns
            rows_view = _rows_view(output) if output.dtype == h.dtype == stack.b_t.dtype else None  # not under bf16
            if rows_view is not None:
                # out += h @ B_all.T in one kernel, in place (inference only: nothing keeps the base output)
                rows_view.addmm_(h.reshape(-1, h.shape[-1]), stack.b_t)
                return output
            return output + (h @ stack.b_t).to(output.dtype)
        finally:
            if one_thread is not None:
                one_thread(before)
