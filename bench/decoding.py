"""Decoding against the memory-bandwidth bound: how close one-row greedy decoding of the base model comes to the time it
takes just to read its weights once per token, and what int8 or bf16 weights or a static KV cache change; and what a
bf16 prefill (``backend.quantize: bf16``) saves on an analyst-sized prompt.

    .venv/bin/python bench/decoding.py [--tokens 96] [--repeats 3] [--threads 0]

The machine's read bandwidth is measured in the same run (a large fp32 tensor summed, best of 5); the bound is the bytes
of every weight a decoding step reads (all linear layers and the tied output embedding; the input embedding reads one
row) divided by that bandwidth. Rows: fp32 (the backend's default), fp32 with a static KV cache, int8 dynamic
quantization of the linear layers (torch.ao, weights int8, activations fp32; the LoRA adapters of a served model would
stay fp32 beside them), and what ``backend.quantize: int8`` serves (``adapters/serving/int8.py``: the full 8-bit
activation range, the MLP down projections kept fp32), bf16 weights (a copy of the model in bfloat16), what
``backend.quantize: bf16-weights`` serves (bf16 copies of the linear layers' weights, the rest fp32;
``adapters/serving/bf16_weights.py``), fp32 on oneDNN's linear kernel instead of torch's BLAS (MKL on x86) on the plain
weights (not shipped: see :func:`onednn_linear`) and on weights packed once (``backend.few_rows_onednn``), and fp32 with
a static KV cache and the decoding step compiled by ``torch.compile`` (inductor; its compile time printed apart). For
each: ms per decoded token (prefill subtracted), its ratio to the bound, and whether its greedy text equals fp32's on
the same prompts. Goal: within 1.5x of the bound. Then the linear products alone (every weight times 1, 2 and 11 rows:
one decoding step, a pass verifying drafts) on MKL and on oneDNN with plain and packed weights. Then the prefill of a
~800-token prompt (a real example contract's clauses and a question) in fp32 and under bfloat16 autocast
(``adapters/serving/bf16.py``), best of ``--repeats``: on CPUs with bf16 matrix units (AMX) the prefill is where bf16
pays.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

PROMPTS = [
    "Explain what an indemnification clause does in a supply agreement.",
    "Summarise the purpose of a mutual non-disclosure agreement in two sentences.",
]


def onednn_linear(model: Any) -> int:
    """Swap ``model``'s plain ``nn.Linear`` layers for the backend's :class:`FewRowsLinear` with one difference: the
    "packed" weight is the plain one, so oneDNN's kernel (``torch.ops.mkldnn._linear_pointwise``) reorders it on every
    call, as ``backend.few_rows_onednn`` did before it packed; 0 where this torch build lacks the kernel. Not what the
    backend serves (2026-12-04: one-row decoding steps in the served path 0.90-0.96x MKL's, but 1.15-1.25x when torch
    had just run on another thread, as ``ask`` embeds the question before the analyst's call); the row
    "backend.few_rows_onednn" is, and :func:`products_ms` times the products alone."""
    from rolora.adapters.serving.few_rows import FewRowsLinear, onednn_linear_available
    from rolora.adapters.serving.linear_swap import linear_shell, swap_linear

    if not onednn_linear_available():
        return 0

    class PlainWeightLinear(FewRowsLinear):
        def repack(self) -> Any:  # no packed copy: the kernel gets the plain weight
            self.packed, self.packed_version = self.weight.detach(), self.weight._version
            return self.packed

    return swap_linear(model, lambda linear: linear_shell(PlainWeightLinear, linear))


def read_bandwidth_gbs(mb: int = 512, rounds: int = 5) -> float:
    """The machine's read bandwidth in GB/s: the best of ``rounds`` sums of a ``mb`` MB float32 tensor, each right
    after ~0.1 s of matrix products on every thread. On these 2-core VMs the reading depends on the machine's state
    more than on anything else (2026-12-05, in one process on one tensor): a sum after the machine had idled read
    16-33 GB/s, back-to-back sums 32-37, and sums right after heavy matrix products anywhere from 33 to 61. The
    highest reading is what the memory can deliver, so benches take the best of several (``bench/analyst_calls.py``
    reads it before every call); before 2026-12-05 this function took the best of 5 back-to-back sums (34-37 GB/s
    in the runs the README quotes), so bounds quoted before then may be up to ~1.7x too long."""
    import torch

    a = torch.ones(mb * 2**20 // 4, dtype=torch.float32)
    x = torch.randn(1024, 1024)
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        while time.perf_counter() - t < 0.1:
            x @ x
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    return a.numel() * 4 / best / 1e9


def products_ms(model: Any, rows: int, repeats: int = 5) -> dict[str, float]:
    """Best ms of multiplying every linear weight of ``model`` (538 MB for SmolLM2) by ``rows`` rows, the products
    alone, in a decoding step's order: on MKL (``F.linear``), on oneDNN with the plain weights, and on oneDNN with
    the weights packed once (what ``backend.few_rows_onednn`` serves); empty where torch lacks oneDNN's kernel."""
    import torch

    from rolora.adapters.serving.few_rows import onednn_linear_available, onednn_product, pack_weight

    if not onednn_linear_available():
        return {}
    weights = [m.weight.detach() for m in model.modules() if type(m) is torch.nn.Linear]
    packed = [pack_weight(w) for w in weights]
    xs = {w.shape[1]: torch.randn(rows, w.shape[1]) for w in weights}
    kinds = {
        "MKL": lambda: [torch.nn.functional.linear(xs[w.shape[1]], w) for w in weights],
        "oneDNN, plain weights": lambda: [onednn_product(xs[w.shape[1]], w, None) for w in weights],
        "oneDNN, packed weights": lambda: [
            onednn_product(xs[w.shape[1]], p, None) for w, p in zip(weights, packed, strict=True)
        ],
    }
    best = dict.fromkeys(kinds, float("inf"))
    with torch.inference_mode():
        for _ in range(repeats):  # the kinds interleaved, so noise moves them alike
            for name, run in kinds.items():
                t = time.perf_counter()
                run()
                best[name] = min(best[name], (time.perf_counter() - t) * 1000)
    return best


def weight_bytes_per_token(model: Any, linear_bytes: int = 4) -> int:
    """Bytes of weights a decoding step reads: every linear layer (``linear_bytes`` per weight: 4 for fp32, 1 for
    int8), the output layer included even when it is tied to the input embedding (it reads the whole matrix), the
    norms, and one row of the input embedding."""
    import torch

    emb = model.get_input_embeddings()
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    if linear == 0:  # quantized modules are not nn.Linear: count them by their shapes
        linear = sum(
            m.in_features * m.out_features
            for m in model.modules()
            if type(m).__name__ == "Linear" and hasattr(m, "in_features")
        )
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name and p.dim() == 1)
    return int(linear * linear_bytes + norms * 4 + emb.embedding_dim * 4)


def served_weight_bytes(model: Any, lora: bool = True) -> int:
    """Bytes of weights a decoding step of a served model reads (``model``: the backend's causal LM, with the LoRA
    layers PEFT put in it): every linear layer at the bytes its forward multiplies by (an ``Int8Linear`` 1 per weight,
    a ``Bf16Linear`` 2, any other ``nn.Linear`` 4: the base layers in fp32 and, unless ``lora`` is false (an adapter
    merged into the weights, ``backend.merged_adapters``), the adapters' A and B), the norms, and one row of the input
    embedding. The tied output layer is a linear layer here too: it reads the whole matrix."""
    import torch

    from rolora.adapters.serving.bf16_weights import Bf16Linear
    from rolora.adapters.serving.int8 import Int8Linear

    total = 0
    for name, m in model.named_modules():
        if not lora and (".lora_A." in name or ".lora_B." in name):
            continue
        if isinstance(m, Int8Linear):
            total += m.in_features * m.out_features
        elif isinstance(m, Bf16Linear):
            total += 2 * m.in_features * m.out_features
        elif isinstance(m, torch.nn.Linear):
            total += 4 * m.in_features * m.out_features
    norms = sum(p.numel() for name, p in model.named_parameters() if "norm" in name and p.dim() == 1)
    return int(total + norms * 4 + model.get_input_embeddings().embedding_dim * 4)


def decode_ms(model: Any, tok: Any, tokens: int, repeats: int, **gen: Any) -> tuple[float, list[str]]:
    """Best ms per decoded token over ``repeats`` (prefill timed apart and subtracted), and the greedy texts."""
    import torch

    best = float("inf")
    texts: list[str] = []
    for _ in range(repeats):
        texts = []
        per_token = []
        for prompt in PROMPTS:
            chat = tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
            )
            ids = tok(chat, add_special_tokens=False, return_tensors="pt")["input_ids"]
            args = {"do_sample": False, "pad_token_id": tok.eos_token_id, **gen}
            with torch.inference_mode():
                t = time.perf_counter()
                model.generate(ids, max_new_tokens=1, min_new_tokens=1, **args)
                prefill = time.perf_counter() - t
                t = time.perf_counter()
                out = model.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, **args)
                wall = time.perf_counter() - t
            n = out.shape[1] - ids.shape[1]
            per_token.append((wall - prefill) / max(1, n - 1) * 1000)
            texts.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        best = min(best, sum(per_token) / len(per_token))
    return best, texts


def prefill_ms(model: Any, tok: Any, repeats: int) -> dict[str, tuple[int, float]]:
    """Best ms of one forward pass over an analyst-sized prompt (~800 tokens of a real example contract), in fp32
    and under bfloat16 autocast (what ``backend.quantize: bf16`` runs): mode -> (prompt tokens, ms)."""
    import torch

    from rolora.adapters.serving.bf16 import bf16_prefill

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import EXAMPLES

    text = (EXAMPLES / "msa_services.txt").read_text(encoding="utf-8")[:3200]
    chat = tok.apply_chat_template(
        [{"role": "user", "content": f"{text}\n\nWhich law governs this agreement?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    ids = tok(chat, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out: dict[str, tuple[int, float]] = {}
    for mode in ("fp32", "bf16"):
        ctx = bf16_prefill(model) if mode == "bf16" else contextlib.nullcontext()
        best = float("inf")
        with torch.inference_mode(), ctx:
            model(ids)  # warm-up
            for _ in range(repeats):
                t = time.perf_counter()
                model(ids)
                best = min(best, time.perf_counter() - t)
        out[mode] = (int(ids.shape[1]), best * 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rolora.models import prepare_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = prepare_generator("smollm2-135m-instruct", None)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    bw = read_bandwidth_gbs()
    rows: dict[str, tuple[float, int, bool]] = {}
    fp32_bytes = weight_bytes_per_token(model)
    ms, ref = decode_ms(model, tok, args.tokens, args.repeats)
    rows["fp32"] = (ms, fp32_bytes, True)
    ms, texts = decode_ms(model, tok, args.tokens, args.repeats, cache_implementation="static")
    rows["fp32, static KV cache"] = (ms, fp32_bytes, texts == ref)
    q8 = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)  # a copy
    q8_bytes = weight_bytes_per_token(model, linear_bytes=1)  # int8 linear weights; norms, embedding row fp32
    ms, texts = decode_ms(q8, tok, args.tokens, args.repeats)
    rows["int8 dynamic (linear)"] = (ms, q8_bytes, texts == ref)
    import copy

    from rolora.adapters.serving.int8 import quantize_linear_int8

    served = copy.deepcopy(model)
    quantize_linear_int8(served)  # what backend.quantize: int8 serves on this CPU (int8.py: VNNI or not)
    ms, texts = decode_ms(served, tok, args.tokens, args.repeats)
    rows["backend.quantize: int8"] = (ms, served_weight_bytes(served), texts == ref)  # the fp32 layers it keeps too

    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    ms, texts = decode_ms(bf16, tok, args.tokens, args.repeats)
    rows["bf16 weights"] = (ms, weight_bytes_per_token(model, linear_bytes=2), texts == ref)
    del bf16
    from rolora.adapters.serving.bf16_weights import bf16_linear_weights

    served = copy.deepcopy(model)
    bf16_linear_weights(served)  # what backend.quantize: bf16-weights serves (the rest of the model fp32)
    ms, texts = decode_ms(served, tok, args.tokens, args.repeats)
    rows["backend.quantize: bf16-weights"] = (ms, served_weight_bytes(served), texts == ref)
    served = copy.deepcopy(model)
    if onednn_linear(served):
        ms, texts = decode_ms(served, tok, args.tokens, args.repeats)
        rows["fp32, oneDNN linear"] = (ms, fp32_bytes, texts == ref)
    from rolora.adapters.serving.few_rows import few_rows_onednn

    served = copy.deepcopy(model)
    if few_rows_onednn(served):  # what the backend serves: oneDNN on weights packed once
        ms, texts = decode_ms(served, tok, args.tokens, args.repeats)
        rows["backend.few_rows_onednn"] = (ms, fp32_bytes, texts == ref)
    del served
    products = {n: products_ms(model, n, args.repeats + 2) for n in (1, 2, 11)}
    prefill = prefill_ms(model, tok, args.repeats)
    # last: the compiled forward stays attached to the model. transformers compiles generate's decoding step only on
    # CUDA unless its CompileConfig's (private, transformers 5.x) _compile_all_devices is set; dynamic=False: one graph
    # per static-cache length, so each prompt compiles once (timed apart: what a served request would wait for).
    from transformers import CompileConfig

    compiled = CompileConfig(fullgraph=False, dynamic=False)
    compiled._compile_all_devices = True
    t = time.perf_counter()
    decode_ms(model, tok, args.tokens, 1, cache_implementation="static", compile_config=compiled)
    compile_s = time.perf_counter() - t
    ms, texts = decode_ms(model, tok, args.tokens, args.repeats, cache_implementation="static", compile_config=compiled)
    rows["static KV + torch.compile"] = (ms, fp32_bytes, texts == ref)

    print(f"== one-row greedy decoding, SmolLM2-135M, {torch.get_num_threads()} threads, {args.tokens} tokens")
    print(f"  read bandwidth (fp32 sum, best of 5 after a load)  {bw:6.1f} GB/s")
    print(f"  {'row':<24} {'ms/token':>9} {'MB/token':>9} {'bound ms':>9} {'x bound':>8}  same text as fp32")
    for name, (ms, nbytes, same) in rows.items():
        bound = nbytes / (bw * 1e9) * 1000
        print(f"  {name:<24} {ms:9.2f} {nbytes / 1e6:9.1f} {bound:9.2f} {ms / bound:8.2f}  {same}")
    base = rows["fp32"][0]
    for name, (ms, _, _) in rows.items():
        if name != "fp32":
            print(f"  fp32 / {name:<24} {base / ms:5.2f}x faster")
    print("  goal: ms/token within 1.5x of the bound of the weights it reads")
    if products[1]:
        print(f"== the linear products alone: every weight ({fp32_bytes / 1e6:.0f} MB) times N rows, best ms "
              f"(reading them once: {fp32_bytes / (bw * 1e9) * 1000:.1f} ms)")  # fmt: skip
        print(f"  {'kernel':<24} " + " ".join(f"{f'{n} rows':>9}" for n in products))
        for kind in products[1]:
            print(f"  {kind:<24} " + " ".join(f"{products[n][kind]:9.1f}" for n in products))
    print(f"  torch.compile (static KV): {compile_s:.0f} s to compile the decoding step for the {len(PROMPTS)} prompts")
    from rolora.adapters.serving.bf16 import cpu_has_bf16_units

    (n, fp32_ms), (_, bf16_ms) = prefill["fp32"], prefill["bf16"]
    print(f"== prefill of a {n}-token prompt (bf16 matrix units on this CPU: {cpu_has_bf16_units()})")
    print(f"  fp32 {fp32_ms:8.1f} ms   bf16 autocast {bf16_ms:8.1f} ms   ratio bf16/fp32 {bf16_ms / fp32_ms:5.2f}x")


if __name__ == "__main__":
    main()
