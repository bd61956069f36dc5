"""oneDNN's float32 kernel, on weights packed once, for linear products of a few rows (``backend.few_rows_onednn``, on
in ``rolora.yaml``).

A decoding step multiplies every weight matrix by a short activation: one row for a plain step, 2 to ~11 for a pass
verifying drafts (``backend.prompt_lookup``, ``backend.grammar_drafts``), up to the batch size for a step of a small
batch. torch's x86 builds run these products in MKL, which on these 2-core machines read SmolLM2's weights far below
the memory's bandwidth (2026-12-05, 2-core AMD EPYC, the 211 linear weights of SmolLM2-135M, 538 MB, in a loop of
their own: ``bench/decoding.py``'s "linear products alone"): 45.8 ms for 1 row, 77.8 for 2, 77.6 for 11, while
reading them once took 9.6 ms. oneDNN's kernel (``torch.ops.mkldnn._linear_pointwise``, what Inductor emits for
float32 linear layers) on the plain weights took 30.4, 31.9 and 44.5 ms; on weights reordered once into its own
blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, as Inductor does when it freezes a model) 25.3, 28.4 and
27.9 ms — the reorder it otherwise redoes on every call is what made more rows cost more.

So every float32 product of :data:`MIN_ROWS` to :data:`MAX_ROWS` rows runs on oneDNN with a packed copy of the weight,
made when the layer is swapped in (:func:`few_rows_onednn`) and again whenever the weight is changed in place (its
version counter moves). The copy is the memory this costs: as much again as the float32 linear weights (SmolLM2: +538
MB). A prompt's prefill (more rows) and any product under bf16 autocast (the bf16 prefill) stay on ``F.linear`` and
the plain weights, which every other reader (PEFT, the tied input embedding, a state dict) keeps seeing.

The swap happens before PEFT wraps the layers, so LoRA adapters wrap :class:`FewRowsLinear` like any ``nn.Linear`` and
their own small products stay on their path. The two kernels add in different orders: logits moved by ~5e-5, which
can flip a near tie between two tokens (measured in the README: ``bench/analyst_calls.py`` and ``bench/latency.py``,
replies and answers compared with MKL's; ``rolora eval`` fingerprints runs with the setting).

Sibling layers that multiply the same input (a Llama-style attention's q, k and v projections, its MLP's gate and up
projections: :data:`SHARED_INPUT`) run their few-row products as one, on their weights stacked and packed once
(:class:`SharedInputProducts`, as vLLM's fused QKV and gate-up layers): SmolLM2's 211 products a step become 121, and
each column of the stacked product is bit for bit the member's own. Measured 2026-12-05 on 2 cores (the shipped
analyst's replies, ``bench/analyst_calls.py --modes bf16+drafts+separate,bf16+drafts``): 14.73 -> 13.62 ms a token,
every reply identical. The members' own packed copies are dropped, so this costs no memory.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from .linear_swap import linear_shell, swap_linear

__all__ = [
    "MAX_ROWS",
    "MIN_ROWS",
    "PADDED_ROWS",
    "SHARED_INPUT",
    "FewRowsLinear",
    "SharedInputProducts",
    "few_rows",
    "few_rows_onednn",
    "onednn_linear_available",
    "onednn_product",
    "pack_weight",
    "padded_product",
    "separate_inputs",
    "share_inputs",
]

MIN_ROWS, MAX_ROWS = 1, 64  # products of this many rows run on oneDNN
# the row count oneDNN's layout is chosen for: 1-64 rows were measured as fast on it as on their own
PACKED_FOR_ROWS = 16
# products of these row counts run on one row more (zeros, its output dropped) where that gives the same sums
# (:func:`padded_product`): oneDNN's kernel for two rows reads the packed weights slower than its three-row one
PADDED_ROWS: frozenset[int] = frozenset({2})
# sibling layers that multiply the same input, by their attribute names (Llama, Mistral, Qwen, Gemma...): their few-row
# products run as one product over their weights stacked (vLLM's QKVParallelLinear and MergedColumnParallelLinear)
SHARED_INPUT = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch build has oneDNN's float32 linear kernel and its weight packing (x86 builds do)."""
    ops = torch.ops.mkldnn
    return bool(
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_linear_pointwise")
        and hasattr(ops, "_reorder_linear_weight")
    )


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` (out x in, float32) reordered once into oneDNN's layout for products of a few rows."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKED_FOR_ROWS)


def onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ weight.T + bias`` (``x`` 2-D, float32) on oneDNN's kernel; ``weight`` plain or from :func:`pack_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


# (rows, out, in, bias, threads) -> whether that product's rows equal its padded product's bit for bit
_PADS_EXACTLY: dict[tuple[int, int, int, bool, int], bool] = {}


def padded_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """:func:`onednn_product` of ``x`` (2-D, contiguous) on a packed ``weight``; a product of :data:`PADDED_ROWS`
    rows runs on one row more (of zeros, its output dropped) when the padded product's rows are bit for bit the plain
    one's.

    Why (2-core AMD EPYC, 2026-12-05): SmolLM2's 121 products of a step, stacked as served, took 23.7 ms for 1 row,
    25.7 for 2, 21.3 for 3 and 20.6-21.0 for 4-6 (best of 7; oneDNN picks its kernel by the row count); in the served
    analyst's passes (40 train-split questions) a two-row pass took 3-4 ms longer than a four-row one, 1-2 ms once its
    products were padded. One-row products are not padded: in whole passes that was slower. Whether a padded product
    adds in the same order depends on the shape, so the first product of each shape and row count runs both ways and
    compares them on its real input; the answer is kept for the process (oneDNN chooses by shape and thread count)."""
    rows = x.shape[0]
    if rows not in PADDED_ROWS:
        return onednn_product(x, weight, bias)
    key = (rows, weight.shape[0], weight.shape[1], bias is not None, torch.get_num_threads())
    exact = _PADS_EXACTLY.get(key)
    if exact is False:
        return onednn_product(x, weight, bias)
    out = onednn_product(torch.cat([x, x.new_zeros(1, x.shape[1])]), weight, bias)[:rows]
    if exact is None:
        plain = onednn_product(x, weight, bias)
        _PADS_EXACTLY[key] = exact = torch.equal(out, plain)
        if not exact:
            return plain
    return out


def few_rows(x: torch.Tensor, weight: torch.Tensor) -> int:
    """The rows of ``x`` when ``x @ weight.T`` is a product :class:`FewRowsLinear` runs on its packed weight (float32,
    :data:`MIN_ROWS`-:data:`MAX_ROWS` rows, on CPU, not under autocast); else 0."""
    rows = x.numel() // max(1, x.shape[-1])
    if (
        MIN_ROWS <= rows <= MAX_ROWS
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and x.device.type == "cpu"
    ):
        return rows
    return 0


class FewRowsLinear(nn.Linear):
    """An ``nn.Linear`` whose float32 products of :data:`MIN_ROWS`-:data:`MAX_ROWS` rows run on oneDNN's kernel with
    a packed copy of its weight (:func:`pack_weight`), repacked when the weight changes in place."""

    packed: torch.Tensor | None = None
    packed_version = -1
    # set when this layer and its siblings (SHARED_INPUT) run their few-row products as one: the group's stacked weight
    group: SharedInputProducts | None = None
    # while set (.fused_lora's rows with a merged adapter, .merged_lora): a packed weight used instead of ``packed``,
    # the weight with a LoRA merged in; and, while .fused_lora's rows have this layer in its LoRA layer's place, what
    # adds the rows' LoRA to its products (to a product on the merged weight: nothing)
    substitute: torch.Tensor | None = None
    beside: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def repack(self) -> torch.Tensor:
        self.packed = pack_weight(self.weight)
        self.packed_version = self.weight._version
        return self.packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = few_rows(x, self.weight)
        if rows and self.group is not None:
            return self.group.product(self, x, rows)
        if rows:
            packed = self.substitute if self.substitute is not None else self.packed
            if packed is None or (packed is self.packed and self.packed_version != self.weight._version):
                packed = self.repack()
            out = padded_product(x.reshape(rows, x.shape[-1]).contiguous(), packed, self.bias)
            out = out.reshape(*x.shape[:-1], out.shape[-1])
        else:
            out = nn.functional.linear(x, self.weight, self.bias)
        return out if self.beside is None else self.beside(x, out)


class SharedInputProducts:
    """Sibling :class:`FewRowsLinear` layers that multiply the same input (a Llama attention's q, k and v projections;
    its MLP's gate and up projections) running their few-row products as one, on their weights stacked and packed once.

    On two cores every product of a decoding step pays a fixed cost (its Python, oneDNN's dispatch, an OpenMP region)
    and small weights read below the memory's bandwidth: SmolLM2's k and v weights are 576 x 192. The first member
    called with an input runs the whole group's product and keeps it; each sibling called with that same tensor (the
    model's forward hands them the one ``hidden_states``) takes its columns, a view, with no product of its own. The
    stacked product's columns are bit for bit the members' own products (oneDNN adds each column over the input in the
    same order). A member called with another input runs the group's product again (correct, only slower). The
    stacked weight is repacked when a member's weight changes in place, and while ``substitute`` is set (an adapter's
    LoRA merged into the members' weights, :mod:`.merged_lora`) that one is used instead.
    """

    def __init__(self, members: list[FewRowsLinear]) -> None:
        self.members = members
        self.index = {id(m): i for i, m in enumerate(members)}
        self.widths = [m.out_features for m in members]
        self.packed: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None
        self.versions: tuple[int, ...] = ()
        self.substitute: torch.Tensor | None = None
        # while set (.fused_lora's rows, on its compiled kernel): adds every member's LoRA of the rows to the group's
        # product of an input in place, where it can, and says whether it did (else each member's ``beside`` does)
        self.beside_all: Callable[[torch.Tensor, torch.Tensor], bool] | None = None
        # the input whose product is kept, the weight it was made with, and the members that have not taken theirs
        self._input: torch.Tensor | None = None
        self._product_weight: torch.Tensor | None = None
        self._parts: tuple[torch.Tensor, ...] = ()
        self._left: set[int] = set()

    def stacked_weight(self, weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The members' weights (or ``weights``, one per member) stacked and packed (:func:`pack_weight`)."""
        return pack_weight(torch.cat(weights if weights is not None else [m.weight.detach() for m in self.members]))

    def _versions(self) -> tuple[int, ...]:
        return tuple(t._version for m in self.members for t in (m.weight, m.bias) if t is not None)

    def repack(self) -> None:
        """Stack and pack the members' weights (and their biases) as they are now."""
        self.packed, self.versions = self.stacked_weight(), self._versions()
        if any(m.bias is not None for m in self.members):
            self.bias = torch.cat(
                [m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features) for m in self.members]
            )

    def weight(self) -> torch.Tensor:
        """The packed weight the group's products run on now: ``substitute`` while set, else the members' stacked
        weight (repacked first when a member's weight or bias changed in place)."""
        if self.packed is None or self._versions() != self.versions:
            self.repack()  # a member's weight or bias changed in place
        return self.substitute if self.substitute is not None else self.packed  # type: ignore[return-value]

    def stacked_product(self, x: torch.Tensor, rows: int, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The group's product of ``x`` (``rows`` rows): every member's columns side by side, ``rows x sum(widths)``,
        on ``weight`` (default: :meth:`weight`)."""
        weight = self.weight() if weight is None else weight
        return padded_product(x.reshape(rows, x.shape[-1]).contiguous(), weight, self.bias)

    def product(self, member: FewRowsLinear, x: torch.Tensor, rows: int) -> torch.Tensor:
        """``member``'s product of ``x`` (``rows`` rows), from the group's product of ``x``."""
        i = self.index[id(member)]
        weight = self.weight()
        if x is not self._input or weight is not self._product_weight or i not in self._left:
            out = self.stacked_product(x, rows, weight)
            self._input, self._parts, self._left = x, out.split(self.widths, dim=-1), set(range(len(self.members)))
            self._product_weight = weight
        part = self._parts[i]
        self._left.discard(i)
        if not self._left:  # every member has its columns: let the input and the product go
            self._input, self._parts, self._product_weight = None, (), None
        part = part.reshape(*x.shape[:-1], part.shape[-1])
        return part if member.beside is None else member.beside(x, part)


def share_inputs(model: nn.Module) -> int:
    """Group the :class:`FewRowsLinear` siblings of ``model`` that multiply the same input (:data:`SHARED_INPUT`:
    same parent, all present, float32, the same input width) into :class:`SharedInputProducts`, whose stacked weight
    replaces the members' own packed copies; returns how many groups."""
    groups = 0
    for parent in model.modules():
        for names in SHARED_INPUT:
            members = [getattr(parent, n, None) for n in names]
            if not all(
                type(m) is FewRowsLinear
                and m.group is None
                and m.weight.dtype == torch.float32
                and m.in_features == members[0].in_features  # type: ignore[union-attr]
                for m in members
            ):
                continue
            group = SharedInputProducts(members)  # type: ignore[arg-type]
            for m in members:
                m.group, m.packed = group, None  # type: ignore[union-attr]
            group.repack()
            groups += 1
    return groups


def separate_inputs(model: nn.Module) -> int:
    """Undo :func:`share_inputs`: every grouped layer of ``model`` runs its own products again, on a packed copy of its
    own weight (``bench/analyst_calls.py``'s ``+separate``); returns how many layers."""
    layers = [m for m in model.modules() if type(m) is FewRowsLinear and m.group is not None]
    for m in layers:
        m.group = None
        m.repack()
    return len(layers)


def few_rows_onednn(model: nn.Module) -> int:
    """Swap every plain ``nn.Linear`` under ``model`` for :class:`FewRowsLinear` in place (the weights shared,
    ties kept), pack each one's weight, and group siblings that share an input (:func:`share_inputs`); returns how many
    layers, 0 where torch lacks the kernel. Layers already swapped by ``backend.quantize`` (int8, bf16 weights) keep
    their own kernels."""
    if not onednn_linear_available():
        return 0

    swapped = swap_linear(model, functools.partial(linear_shell, FewRowsLinear))
    share_inputs(model)
    for layer in model.modules():
        if type(layer) is FewRowsLinear and layer.group is None and layer.packed is None:
            layer.repack()
    return swapped
