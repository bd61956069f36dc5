"""A Llama decoder layer's pass over a few rows in fewer operations, with the same sums (part of
``backend.few_rows_onednn``).

A decoding pass of SmolLM2 (one row a step, 2 to ~11 rows verifying drafts) spends, besides its products and its
attention, ~9 ms in ~1,300 small operations and Python calls (2026-12-05, 2-core AMD EPYC, a 900-token cache, the
products and attention stubbed out): per layer a dozen module calls (attention, four projections, two norms, the MLP,
three projections, the activation), the hub-kernel and deprecation wrappers around them, the rotary embedding applied
to the queries and the keys one after the other (7 operations each), and :class:`.few_rows.SharedInputProducts`'s
book-keeping for every member of a group. :class:`FewRowLlamaLayer` runs the same arithmetic in one function:
the norms' operations inline, one product for q, k and v and one for gate and up (the groups' stacked weights, as
served, with an adapter's merged LoRA where one is swapped in), the rotary embedding on the queries and keys at once
(they sit side by side in that product), then transformers' own SDPA attention function, and the output and down
projections as module calls. Every operation adds the same numbers in the same order as transformers' code, so the
logits are bit for bit those of the stock layer (tests: one-row steps, two- and eleven-row passes, the analyst's
replies with drafts and merged adapters).

Measured (2-core AMD EPYC, the base model, a 900-token cache, median of 15 passes, stock -> this): one row 40.9-43.7
-> 35.7-36.1 ms, six rows 44.3-45.2 -> 37.9-39.2 ms, eleven rows 54.7-55.3 -> 49.6-50.1 ms. In the served path see
``bench/analyst_calls.py``'s ``+stock`` rows (README).

Adapters: inside :meth:`.fused_lora.FusedLoRA.rows` (every batch of the backend's fused path: one adapter, mixed, or
the base model) PEFT's LoRA layers are out of the model and their base layers add the batch's LoRA themselves
(``beside``), which this pass does on each member's columns of a group's product; on an adapter's merged weights
(:mod:`.merged_lora`) nothing is added. The layer falls back to the stock forward for anything else: more than
:data:`.few_rows.MAX_ROWS` rows (a prefill), another dtype or autocast (the bf16 prefill), training, an attention
implementation other than SDPA, q/k/v or gate/up not grouped :class:`.few_rows.FewRowsLinear` layers (PEFT's own
LoRA layers in place: its mixed batches of adapter kinds the fused path does not cover), or a forward hook on any
module it would skip (output capture's, a user's). Only transformers' ``LlamaDecoderLayer`` with its own attention,
MLP and RMSNorm classes is swapped (SmolLM2 and other Llama models).
"""

from __future__ import annotations

from typing import Any

import torch

from .few_rows import FewRowsLinear, SharedInputProducts, few_rows

__all__ = ["FewRowLlamaLayer", "few_row_llama_layers", "stock_llama_layers"]


def _layer_classes() -> tuple[Any, Any, Any, Any]:
    from transformers.models.llama import modeling_llama as llama

    return llama.LlamaDecoderLayer, llama.LlamaAttention, llama.LlamaMLP, llama.LlamaRMSNorm


def _group(layers: tuple[Any, ...]) -> SharedInputProducts | None:
    """The group that ``layers`` (in this order) form, when each is a plain :class:`.few_rows.FewRowsLinear` of it."""
    group = getattr(layers[0], "group", None)
    if group is None or len(group.members) != len(layers):
        return None
    ok = all(type(m) is FewRowsLinear and m is g for m, g in zip(layers, group.members, strict=True))
    return group if ok else None


def _lora_beside(group: SharedInputProducts, x: torch.Tensor, product: torch.Tensor) -> None:
    """Add to each member's columns of ``product`` (the group's product of ``x``) what its ``beside`` adds to its own
    product (.fused_lora's rows: a LoRA of the batch's adapters, nothing on a merged weight), in place: all members
    at once where the group has ``beside_all`` (the compiled kernel writing into each member's columns), else each
    member on a view of its columns."""
    if group.beside_all is not None and group.beside_all(x, product):
        return
    for member, columns in zip(group.members, product.split(group.widths, dim=-1), strict=True):
        if member.beside is not None:
            added = member.beside(x, columns)
            if added is not columns:
                columns.copy_(added)


def _norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """``LlamaRMSNorm(x)`` for a float32 ``x``, the same operations (its dtype casts are no-ops there)."""
    return norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))


def _hooked(modules: tuple[Any, ...]) -> bool:
    from torch.nn.modules import module as nn_module

    if nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in modules)


def _fewer_ops_forward(layer: Any, x: torch.Tensor, attention_mask: Any, cache: Any, cos_sin: Any) -> Any:
    """The layer's output for ``x`` on the few-row path, or None where it does not apply (the stock forward runs)."""
    attn, mlp = layer.self_attn, layer.mlp
    if x.dim() != 3 or cos_sin is None or layer.training or attn.config._attn_implementation != "sdpa":
        return None
    qkv_group = _group((attn.q_proj, attn.k_proj, attn.v_proj))
    mlp_group = _group((mlp.gate_proj, mlp.up_proj))
    if qkv_group is None or mlp_group is None:
        return None
    rows = few_rows(x, attn.q_proj.weight)  # the products FewRowsLinear runs on oneDNN: float32, 1-64 rows, no autocast
    if not rows:
        return None
    norms = (layer.input_layernorm, layer.post_attention_layernorm)
    if _hooked((attn, mlp, *norms, *qkv_group.members, *mlp_group.members, mlp.act_fn)):
        return None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, length = x.shape[:2]
    head_dim = attn.head_dim
    heads, kv_heads = qkv_group.widths[0] // head_dim, qkv_group.widths[1] // head_dim
    h = _norm(layer.input_layernorm, x)
    qkv = qkv_group.stacked_product(h, rows).view(batch, length, -1)
    _lora_beside(qkv_group, h, qkv)
    qkv = qkv.view(batch, length, heads + 2 * kv_heads, head_dim)
    cos, sin = cos_sin
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    qk = qkv[:, :, : heads + kv_heads].transpose(1, 2)  # the queries' and the keys' heads, rotated at once
    half = head_dim // 2
    qk = (qk * cos) + (torch.cat((-qk[..., half:], qk[..., :half]), dim=-1) * sin)
    query, key = qk[:, :heads], qk[:, heads:]
    value = qkv[:, :, heads + kv_heads :].transpose(1, 2)
    if cache is not None:
        key, value = cache.update(key, value, attn.layer_idx)
    out, _ = sdpa_attention_forward(attn, query, key, value, attention_mask, dropout=0.0, scaling=attn.scaling)
    x = x + attn.o_proj(out.reshape(batch, length, -1).contiguous())
    h = _norm(layer.post_attention_layernorm, x)
    gate_up = mlp_group.stacked_product(h, rows).view(batch, length, -1)
    _lora_beside(mlp_group, h, gate_up)
    inner = mlp_group.widths[0]
    product = mlp.act_fn(gate_up[..., :inner]) * gate_up[..., inner:]
    layer.few_row_passes += 1
    return x + mlp.down_proj(product)


class FewRowLlamaLayer(torch.nn.Module):
    """Stands in for transformers' ``LlamaDecoderLayer`` as the class of a layer (:func:`few_row_llama_layers`): its
    passes over a few rows run :func:`_fewer_ops_forward`, everything else the stock forward."""

    stock: Any  # the layer's own class
    few_row_passes: int  # passes that ran the few-row path (tests, benchmarks)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: Any = None,
        position_ids: Any = None,
        cache: Any = None,
        use_cache: bool | None = False,
        position_embeddings: Any = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        if "past_key_values" not in kwargs:
            out = _fewer_ops_forward(self, hidden_states, attention_mask, cache, position_embeddings)
            if out is not None:
                return out
        return self.stock.forward(
            self,
            hidden_states,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )


def few_row_llama_layers(model: torch.nn.Module) -> int:
    """Give every transformers ``LlamaDecoderLayer`` of ``model`` (with its stock attention, MLP and norms) the
    few-row pass of :class:`FewRowLlamaLayer`, in place (a subclass of the layer's class, its state untouched);
    returns how many layers. Undone by :func:`stock_llama_layers`."""
    decoder, attention, mlp, norm = _layer_classes()
    swapped = 0
    layer: Any
    for layer in model.modules():
        if type(layer) is not decoder:
            continue
        parts = (layer.self_attn, layer.mlp, layer.input_layernorm, layer.post_attention_layernorm)
        if tuple(map(type, parts)) != (attention, mlp, norm, norm):
            continue
        layer.__class__ = _few_row_class(decoder)
        layer.few_row_passes = 0
        swapped += 1
    return swapped


def stock_llama_layers(model: torch.nn.Module) -> int:
    """Undo :func:`few_row_llama_layers` (``bench/analyst_calls.py``'s ``+stock``); returns how many layers."""
    layers = [m for m in model.modules() if isinstance(m, FewRowLlamaLayer)]
    for layer in layers:
        layer.__class__ = layer.stock
    return len(layers)


_CLASSES: dict[type, type] = {}


def _few_row_class(stock: type) -> type:
    """``FewRowLlamaLayer`` mixed into ``stock`` (made once per stock class)."""
    if stock not in _CLASSES:
        _CLASSES[stock] = type(f"FewRow{stock.__name__}", (FewRowLlamaLayer, stock), {"stock": stock})
    return _CLASSES[stock]
