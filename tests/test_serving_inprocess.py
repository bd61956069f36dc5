"""In-process PEFT backend: mixed-adapter micro-batches equal solo runs, LRU, no-op detection, refusals."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from rolora.adapters.serving import DirectoryAdapters, GenerationRequest
from rolora.errors import UserError

from conftest import TEST_HOME, missing_real_part

PROMPTS = ["What is the capital of France?", "Name a fruit.", "Explain what a lease is.", "Write a haiku about law."]


def _req(content: str, **kw: Any) -> GenerationRequest:
    return GenerationRequest([{"role": "user", "content": content}], **kw)


def _require_onednn() -> None:
    """Skip where torch lacks oneDNN's linear kernel (``few_rows_onednn``); under CI that is a failure."""
    from rolora.adapters.serving.few_rows import onednn_linear_available

    if not onednn_linear_available():
        assert not os.environ.get("CI"), "this torch build lacks oneDNN's linear kernel"
        pytest.skip("this torch build lacks oneDNN's linear kernel")


@pytest.mark.slow
def test_mixed_batch_equals_each_request_alone(inprocess_backend: Any) -> None:
    reqs = [_req(p, adapter=a, max_tokens=24) for p in PROMPTS for a in (None, "alpha@1", "beta@1", "gamma@1")]
    before = inprocess_backend.batch_count
    mixed = inprocess_backend.generate(reqs)
    assert max(_batches_since(inprocess_backend, before)) == len(reqs), "the 16 requests were not served as one batch"
    alone = [inprocess_backend.generate([r])[0] for r in reqs]
    for m, a in zip(mixed, alone, strict=True):
        assert (m.adapter, m.text, m.completion_tokens) == (a.adapter, a.text, a.completion_tokens)
    assert len({m.text for m in mixed}) > len(PROMPTS), "adapters made no difference at all"


def test_noop_adapter_is_detected(inprocess_backend: Any) -> None:
    noop, base, gamma = inprocess_backend.generate(
        [
            _req(PROMPTS[2], adapter="noop", max_tokens=16),
            _req(PROMPTS[2], max_tokens=16),
            _req(PROMPTS[2], adapter="gamma", max_tokens=16),
        ]
    )
    assert "noop@1" in inprocess_backend.noop_adapters and "gamma@1" not in inprocess_backend.noop_adapters
    assert noop.text == base.text and gamma.text != base.text


def test_concurrent_callers_are_micro_batched(inprocess_backend: Any) -> None:
    before = inprocess_backend.batch_count
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futs = [
            pool.submit(
                inprocess_backend.generate, [_req(PROMPTS[i % 4], adapter=[None, "alpha"][i % 2], max_tokens=6)]
            )
            for i in range(8)
        ]
        results = [f.result()[0] for f in futs]
    assert all(r.text for r in results)
    assert max(_batches_since(inprocess_backend, before)) > 1


def test_lru_bound_and_reload(generator_dir: Path, lora_adapters: dict[str, Path]) -> None:
    from rolora.adapters.serving.inprocess import InProcessBackend

    backend = InProcessBackend(generator_dir, DirectoryAdapters(TEST_HOME / "test-adapters"), max_loaded=2)
    try:
        first = backend.generate([_req(PROMPTS[0], adapter="gamma", max_tokens=10)])[0].text
        for a in ("alpha", "beta", "gamma", "alpha"):
            backend.generate([_req(PROMPTS[0], adapter=a, max_tokens=4)])
            assert len(backend.loaded_adapters) <= 2
        assert backend.loaded_adapters == ["gamma@1", "alpha@1"]
        out = backend.generate([_req(PROMPTS[0], adapter=a, max_tokens=10) for a in ("alpha", "beta", "gamma")])
        assert out[2].text == first  # gamma was evicted and reloaded: same weights, same output
    finally:
        backend.close()
    with pytest.raises(UserError, match="max_loaded"):
        InProcessBackend(generator_dir, max_loaded=0)


def test_pickled_adapter_is_refused(tmp_path: Path, lora_adapters: dict[str, Path]) -> None:
    bad = tmp_path / "evil@1"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((lora_adapters["alpha@1"] / "adapter_config.json").read_text())
    (bad / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    with pytest.raises(UserError, match="pickle"):
        DirectoryAdapters(tmp_path)("evil")
    with pytest.raises(UserError, match="invalid"):
        DirectoryAdapters(tmp_path)("../evil")


def test_invalid_schema_and_request_errors(inprocess_backend: Any) -> None:
    with pytest.raises(UserError, match="json_schema"):
        inprocess_backend.generate([_req("hi", max_tokens=4, json_schema={"type": "no-such-type"})])
    with pytest.raises(UserError, match="max_tokens"):
        _req("hi", max_tokens=0)
    with pytest.raises(UserError, match="chat message"):
        GenerationRequest([])
    assert json.dumps({"ok": True})


def test_min_tokens_holds_back_the_end_of_a_reply(inprocess_backend: Any) -> None:
    """``min_tokens`` (bench/serving.py compares equal work with it): replies that end early on their own are held to
    it, in a mixed batch too, and start with the replies given without it; it is refused beyond max_tokens and
    beside a JSON schema."""
    adapters = (None, "alpha@1")
    free = inprocess_backend.generate([_req(PROMPTS[0], adapter=a, max_tokens=48) for a in adapters])
    assert all(r.completion_tokens < 48 and r.finish_reason == "stop" for r in free), [r.text for r in free]
    held = inprocess_backend.generate([_req(PROMPTS[0], adapter=a, max_tokens=48, min_tokens=48) for a in adapters])
    for f, h in zip(free, held, strict=True):
        assert (h.completion_tokens, h.finish_reason, h.adapter) == (48, "length", f.adapter)
        assert h.text.startswith(f.text) and len(h.text) > len(f.text)
    with pytest.raises(UserError, match="min_tokens"):
        _req("hi", max_tokens=4, min_tokens=5)
    with pytest.raises(UserError, match="min_tokens cannot be combined with json_schema"):
        _req("hi", max_tokens=8, min_tokens=4, json_schema={"type": "object"})


def _batches_since(backend: Any, count: int) -> list[int]:
    """Sizes of the generate calls made since ``backend.batch_count`` was ``count``."""
    made = backend.batch_count - count
    return list(backend.batches)[-made:] if made else []


def test_caches_stay_bounded_in_a_long_running_process(inprocess_backend: Any) -> None:
    """Per-request schemas (an enum of this request's quotes, say) must not grow the grammar caches forever, and
    the record of batch sizes keeps only the latest ones."""
    from rolora.adapters.serving.base import GRAMMAR_CACHE_SIZE, _grammar_of

    assert _grammar_of.cache_info().maxsize == GRAMMAR_CACHE_SIZE
    assert inprocess_backend.batches.maxlen is not None
    saved = inprocess_backend.grammar_cache_size
    inprocess_backend.grammar_cache_size = 3
    try:
        for i in range(6):
            schema = {"type": "object", "properties": {"q": {"enum": [f"quote {i}"]}}, "required": ["q"]}
            (r,) = inprocess_backend.generate([_req(PROMPTS[0], max_tokens=12, json_schema=schema)])
            assert r.json == {"q": f"quote {i}"}
        assert len(inprocess_backend._grammars) == 3
    finally:
        inprocess_backend.grammar_cache_size = saved


@pytest.mark.slow
def test_fused_mixed_batch_equals_pefts_own_mixed_batch(
    inprocess_backend: Any, generator_dir: Path, lora_adapters: dict[str, Path]
) -> None:
    """The fused path (one pair of matmuls per LoRA layer for every row) computes what PEFT's per-adapter sub-batches
    compute: the same logits for a mixed batch, and the same greedy texts through the backend."""
    import torch

    from rolora.adapters.serving.inprocess import InProcessBackend

    reqs = [_req(p, adapter=a, max_tokens=24) for p in PROMPTS for a in (None, "alpha@1", "beta@1", "gamma@1")]
    before = inprocess_backend.fused_batches
    fused = inprocess_backend.generate(reqs)
    assert inprocess_backend.fused_batches > before, "the mixed batch did not take the fused path"
    plain = InProcessBackend(
        generator_dir, DirectoryAdapters(TEST_HOME / "test-adapters"), batch_window_ms=20, fused_lora=False
    )
    try:
        peft_path = plain.generate(reqs)
        assert plain.fused_batches == 0
        for f, p in zip(fused, peft_path, strict=True):
            assert (f.adapter, f.text, f.completion_tokens) == (p.adapter, p.text, p.completion_tokens)
        # one forward pass of a mixed batch, fused vs PEFT's adapter_names path, on the same loaded model
        names = ["__base__", "alpha@1", "beta@1", "gamma@1", "alpha@1"]
        tok = inprocess_backend.tokenizer
        enc = tok([f"Clause {i}: the Supplier shall indemnify." for i in range(len(names))], return_tensors="pt")
        peft_model, fused_lora = inprocess_backend._peft, inprocess_backend._fused
        assert fused_lora.supports(names)
        with torch.inference_mode():
            want = peft_model(**enc, adapter_names=names).logits
            with fused_lora.rows(names):
                got = peft_model(**enc).logits
            after = peft_model(**enc, adapter_names=names).logits  # PEFT's own path is back afterwards
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
        assert torch.equal(after, want)
        assert not torch.allclose(want[0], want[1], atol=1e-3), "the adapters changed nothing"
    finally:
        plain.close()


@pytest.mark.slow
def test_fused_mixed_batch_of_adapters_on_every_layer_equals_pefts_on_few_row_products(generator_dir: Path) -> None:
    """Adapters with LoRA on all seven linear layers of a block (what ``rolora train`` makes), two of them and the
    base model in one batch, on ``few_rows_onednn``'s path: the fused LoRA is added by the base layers
    themselves (q, k, v and gate, up on their group's product in :mod:`.llama_step`'s pass; o and down in their own
    ``FewRowsLinear``), and the logits and greedy replies are those of PEFT's per-adapter path on the same oneDNN
    base products. A third adapter of rank 4 is padded to the compiled kernel's width of 8; a decoding step's LoRA is
    added by the kernel in every LoRA layer, with the logits of torch's products."""
    import torch

    from rolora.adapters.serving.few_rows import FewRowsLinear
    from rolora.adapters.serving.inprocess import InProcessBackend

    from conftest import ALL_TARGETS, make_lora_adapter

    _require_onednn()
    root = TEST_HOME / "test-adapters-every-layer"
    root.mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(["every@1", "layer@1"], start=11):
        make_lora_adapter(generator_dir, root / name, seed, targets=ALL_TARGETS)
    make_lora_adapter(generator_dir, root / "small@1", 13, rank=4, targets=ALL_TARGETS)
    common = {"batch_window_ms": 50, "few_rows_onednn": True, "prefix_cache": False}
    fused = InProcessBackend(generator_dir, DirectoryAdapters(root), **common)
    plain = InProcessBackend(generator_dir, DirectoryAdapters(root), **common, fused_lora=False)
    try:
        adapters = (None, "every@1", "layer@1", "small@1")
        reqs = [_req(p, adapter=a, max_tokens=16) for p in PROMPTS[2:] for a in adapters]
        layer = fused._model.model.layers[3]
        before = (fused.fused_batches, layer.few_row_passes)
        got = fused.generate(reqs)
        assert fused.fused_batches > before[0] and layer.few_row_passes > before[1]  # fused, on llama_step's pass
        want = plain.generate(reqs)
        assert plain.fused_batches == 0
        assert [(r.adapter, r.text, r.completion_tokens) for r in got] == [
            (r.adapter, r.text, r.completion_tokens) for r in want
        ]
        assert any(len({r.text for r in got[i : i + 4]}) > 1 for i in (0, 4)), "the adapters changed nothing"
        # one pass of a few rows per request (a decoding step after a one-token prompt each), fused vs PEFT's
        names = ["__base__", "every@1", "layer@1", "every@1", "small@1"]
        peft_model, fused_lora = fused._peft, fused._fused
        kernel = fused_lora.kernel
        if kernel is None:
            missing_real_part("lora_rows.c was not built (no C compiler, see the log)", "install gcc")
        calls: list[int] = []  # the compiled kernel's calls: the address of the layer's stacks' description
        grouped: list[int] = []  # the kernel's calls on a group's product (q, k, v; gate, up), the members it served
        add, add_columns = kernel._add, kernel.add_columns

        def counted(layer: int, groups: int, *args: Any) -> None:
            calls.append(layer)
            add(layer, groups, *args)

        def counted_columns(plan: Any, x: Any, product: Any) -> bool:
            added = add_columns(plan, x, product)
            if added:
                grouped.append(len(plan.calls))
            return added

        kernel._add, kernel.add_columns = counted, counted_columns
        ids = torch.tensor([[1000 + i] for i in range(len(names))])
        try:
            with torch.inference_mode():
                want_logits = peft_model(input_ids=ids, adapter_names=names).logits
                with fused_lora.rows(names):
                    attn = peft_model.base_model.model.model.layers[0].self_attn
                    assert type(attn.o_proj) is FewRowsLinear and attn.o_proj.beside is not None  # LoRA wrapper out
                    got_logits = peft_model(input_ids=ids).logits
                fused_lora.kernel = None  # torch's products, the stacks made again without the kernel's
                fused_lora.clear()
                with fused_lora.rows(names):
                    torch_logits = peft_model(input_ids=ids).logits
        finally:
            kernel._add = add
            del kernel.add_columns
            fused_lora.kernel = kernel
            fused_lora.clear()
        layers = peft_model.base_model.model.model.layers
        assert len(calls) == len(set(calls)) == len(fused_lora.lora_layers())  # every LoRA layer once, on the kernel
        assert grouped == [3, 2] * len(layers)  # q, k and v, then gate and up: one plan each, no view of the columns
        assert torch.allclose(got_logits, want_logits, atol=1e-4, rtol=1e-4)
        assert torch.allclose(got_logits, torch_logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(want_logits[0], want_logits[1], atol=1e-3)
        assert not torch.allclose(want_logits[0], want_logits[4], atol=1e-3)
    finally:
        fused.close()
        plain.close()


def test_mkl_thread_count_is_set_for_the_calling_thread_only() -> None:
    """``mkl_thread_local`` changes MKL's thread count on the thread that calls it, returns that thread's previous
    setting, and leaves the other threads (here the main one) on the process-wide count; without MKL it is None."""
    import threading

    import torch

    from rolora.adapters.serving.blas_threads import mkl_max_threads, mkl_thread_local

    one_thread = mkl_thread_local()
    if not torch.backends.mkl.is_available():  # an ARM or macOS torch: nothing to set, nothing changes
        assert one_thread is None and mkl_max_threads() is None
        return
    assert one_thread is not None
    saved = torch.get_num_threads()
    torch.set_num_threads(2)  # the process-wide count (CI's machine has 2 cores), restored below
    seen: dict[str, Any] = {}
    started, checked = threading.Event(), threading.Event()

    def worker() -> None:
        seen["before"] = one_thread(1)
        seen["inside"] = mkl_max_threads()
        started.set()
        checked.wait(10)  # the main thread reads its own count while this one is set to 1
        seen["restored_from"] = one_thread(seen["before"])
        seen["after"] = mkl_max_threads()

    t = threading.Thread(target=worker)
    try:
        t.start()
        assert started.wait(10)
        main_count = mkl_max_threads()
        checked.set()
        t.join(10)
    finally:
        torch.set_num_threads(saved)
    assert seen == {"before": 0, "inside": 1, "restored_from": 1, "after": 2}
    assert main_count == 2 == torch.get_num_threads()


@pytest.mark.slow
def test_fused_lora_runs_decoding_step_products_on_one_mkl_thread(
    inprocess_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the compiled kernel (``backend.lora_kernel`` off, or no C compiler), in a decoding step of several rows
    the fused LoRA products run on one MKL thread (the count MKL sees inside is 1, and the thread's own setting is back
    after every layer); a one-row step and a prefill keep every thread."""
    import torch

    from rolora.adapters.serving import blas_threads

    real = blas_threads.mkl_thread_local()
    if real is None:  # a torch without MKL: the fused path runs as it is
        assert not torch.backends.mkl.is_available()
        return
    calls: list[tuple[int, int, int | None]] = []

    def recording(n: int) -> int:
        prev = real(n)
        # what was set, what it replaced, what MKL would use for the next product on this thread
        calls.append((n, prev, blas_threads.mkl_max_threads()))
        return prev

    monkeypatch.setattr(blas_threads, "mkl_thread_local", lambda: recording)
    inprocess_backend.generate([_req("Name a fruit.", adapter="alpha@1", max_tokens=2)])  # adapters loaded
    peft_model, fused = inprocess_backend._peft, inprocess_backend._fused
    layers = sum(1 for m in fused._layers() if "alpha@1" in m.lora_A)
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    names = ["alpha@1", "beta@1", "__base__", "gamma@1"] * 4
    kernel, fused.kernel = fused.kernel, None  # torch's products (the stacks are made again without the kernel's)
    fused.clear()
    try:
        with torch.inference_mode():
            for rows, seq, per_layer in ((16, 1, 2), (1, 1, 0), (16, 8, 0)):  # 16 one-token rows; one row; a prefill
                calls.clear()
                ids = torch.full((rows, seq), 1000)
                with fused.rows(names[:rows]):
                    peft_model(input_ids=ids)
                assert len(calls) == per_layer * layers, (rows, seq)
                for (n, prev, inside), (back, _, after) in zip(calls[0::2], calls[1::2], strict=True):
                    assert (n, inside) == (1, 1)  # one thread inside every fused layer
                    assert (back, after) == (prev, 2)  # and the thread's own setting back after it
        assert blas_threads.mkl_max_threads() == 2
    finally:
        torch.set_num_threads(saved)
        fused.kernel = kernel
        fused.clear()


@pytest.mark.parametrize("quantize", ["int8", "bf16-weights"])
def test_quantized_backend_keeps_lora_fp32_around_its_base_layers(
    quantize: str, inprocess_backend: Any, generator_dir: Path, lora_adapters: dict[str, Path]
) -> None:
    """backend.quantize: int8 / bf16-weights swap the base model's linear layers for int8 kernels / bfloat16 weights;
    PEFT still wraps them, the LoRA weights stay fp32, a mixed batch still takes the fused path, the key/value cache
    stays fp32, and both the base model's logits and each adapter's change to them stay close to the fp32 model's."""
    import torch

    from rolora.adapters.serving.bf16_weights import Bf16Linear
    from rolora.adapters.serving.inprocess import InProcessBackend
    from rolora.adapters.serving.int8 import KEEP_FP32, KEEP_FP32_WITHOUT_VNNI, Int8Linear
    from rolora.hardware import cpu_has_int8_dot_units

    swapped, base_corr, own_corr = (Int8Linear, 0.95, 0.5) if quantize == "int8" else (Bf16Linear, 0.99, 0.9)
    with pytest.raises(UserError, match=r"backend\.quantize"):
        InProcessBackend(generator_dir, quantize="int4")
    q = InProcessBackend(generator_dir, DirectoryAdapters(TEST_HOME / "test-adapters"), quantize=quantize)
    try:
        reqs = [_req(PROMPTS[0], adapter=a, max_tokens=8) for a in (None, "alpha@1", "beta@1")]
        out = q.generate(reqs)
        assert [r.adapter for r in out] == [None, "alpha@1", "beta@1"] and all(r.text for r in out)
        assert q.fused_batches >= 1
        # int8 keeps the down projections fp32, and the value projections too on a CPU without VNNI (int8.py)
        dot = cpu_has_int8_dot_units()
        kept = (KEEP_FP32 if dot else KEEP_FP32_WITHOUT_VNNI) if quantize == "int8" else ()
        named = [(n, m) for n, m in q._peft.named_modules() if hasattr(m, "lora_A") and "alpha@1" in m.lora_A]
        lora = [m for _, m in named]  # (the test adapters: q_proj, v_proj)
        assert lora and any(isinstance(m.base_layer, swapped) for m in lora)
        assert all(
            type(m.base_layer) is (torch.nn.Linear if n.rsplit(".", 1)[-1] in kept else swapped) for n, m in named
        )
        down = type(q._model.model.layers[0].mlp.down_proj)
        assert down is (torch.nn.Linear if quantize == "int8" else Bf16Linear)
        # 7-bit activations exactly where fbgemm's int16 pair sums would saturate
        assert all(m.reduce_range is (not dot) for m in q._model.modules() if isinstance(m, Int8Linear))
        assert all(type(m.lora_A["alpha@1"]) is torch.nn.Linear for m in lora)  # the adapter itself: fp32
        assert all(m.lora_A["alpha@1"].weight.dtype == torch.float32 for m in lora)
        head = q._model.get_output_embeddings()
        assert isinstance(head, swapped) and head.weight is q._model.get_input_embeddings().weight
        # the same forward pass on the fp32 backend and the quantized one
        fp32 = inprocess_backend
        fp32.generate([_req(PROMPTS[0], adapter=a, max_tokens=1) for a in ("alpha@1", "beta@1")])  # loaded there
        enc = q.tokenizer([f"Clause {i}: the Supplier shall indemnify." for i in range(3)], return_tensors="pt")
        names = ["__base__", "alpha@1", "beta@1"]
        with torch.inference_mode():
            want = fp32._peft(**enc, adapter_names=names).logits[:, -1]
            res = q._peft(**enc, adapter_names=names, use_cache=True)
        got = res.logits[:, -1]
        assert got.dtype == torch.float32
        assert all(layer.keys.dtype == torch.float32 for layer in res.past_key_values.layers)

        def corr(a: torch.Tensor, b: torch.Tensor) -> float:
            return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

        assert corr(got[0], want[0]) > base_corr, f"{quantize} base logits drifted from fp32's"
        for i, other in ((1, 2), (2, 1)):  # each adapter's effect on the logits survives quantization: it matches
            # its own fp32 effect, and clearly better than the other adapter's
            own = corr(got[i] - got[0], want[i] - want[0])
            assert own > own_corr and own > corr(got[i] - got[0], want[other] - want[0]) + 0.2
    finally:
        q.close()


def test_int8_keeps_activations_to_7_bits_on_a_cpu_without_int8_dot_units(generator_dir: Path, tmp_path: Path) -> None:
    """Without VNNI/AMX-int8 (cpuinfo flags), backend.quantize: int8 quantizes activations to 7 bits and keeps the
    value projections fp32: the real SmolLM2's logits then stay close to fp32's on any x86 CPU. Full-range
    activations stay close only where the CPU has the units; elsewhere fbgemm's int16 pair sums saturate (CI on an
    AVX2-only AMD EPYC: correlation 0.53)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rolora.adapters.serving.int8 import Int8Linear, quantize_linear_int8
    from rolora.hardware import cpu_has_int8_dot_units

    (tmp_path / "spr").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_int8 amx_tile\n")
    (tmp_path / "adl").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx_vnni\n")
    (tmp_path / "avx2").write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert cpu_has_int8_dot_units(tmp_path / "spr") and cpu_has_int8_dot_units(tmp_path / "adl")
    assert not cpu_has_int8_dot_units(tmp_path / "avx2") and not cpu_has_int8_dot_units(tmp_path / "missing")

    tok = AutoTokenizer.from_pretrained(generator_dir)
    enc = tok([f"Clause {i}: the Supplier shall indemnify." for i in range(3)], return_tensors="pt")

    def logits(setting: bool | None) -> torch.Tensor:
        model = AutoModelForCausalLM.from_pretrained(generator_dir, dtype=torch.float32).eval()
        if setting is not None:
            n = quantize_linear_int8(model, int8_dot_units=setting, workers=2)  # layers packed in 2 threads
            layer = model.model.layers[0]
            assert n > 100 and type(layer.mlp.down_proj) is torch.nn.Linear
            assert isinstance(layer.self_attn.v_proj, Int8Linear) is setting  # fp32 with 7-bit activations
            assert all(m.reduce_range is (not setting) for m in model.modules() if isinstance(m, Int8Linear))
        with torch.inference_mode():
            return model(**enc).logits[:, -1]

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a, b]))[0, 1])

    want, seven, full = logits(None), logits(False), logits(True)
    # packing the layers in threads gives the same logits as packing them one by one
    serial = AutoModelForCausalLM.from_pretrained(generator_dir, dtype=torch.float32).eval()
    quantize_linear_int8(serial, int8_dot_units=False, workers=1)
    with torch.inference_mode():
        assert torch.equal(serial(**enc).logits[:, -1], seven)
    seven_corr = min(corr(seven[i], want[i]) for i in range(3))
    assert seven_corr > 0.93  # 7 bits: close on every CPU (0.949-0.959 on the AVX2-only EPYC)
    full_corr = min(corr(full[i], want[i]) for i in range(3))
    if cpu_has_int8_dot_units():
        assert full_corr > 0.95  # int32 sums: full range is safe here (0.97-0.99 with VNNI)
    else:
        assert full_corr < seven_corr - 0.2  # saturated (0.50-0.56): why 7 bits here


def test_bf16_prefill_runs_the_prompt_in_bf16_and_decodes_in_fp32(
    inprocess_backend: Any, generator_dir: Path, lora_adapters: dict[str, Path], tmp_path: Path
) -> None:
    """backend.quantize: bf16 runs the prompt's forward pass under bfloat16 autocast and every one-token decoding
    step in fp32 (the real SmolLM2 with real LoRA adapters); the cache and logits it hands back are fp32, the base
    logits and each adapter's change to them stay close to the fp32 prefill's, and a mixed batch still takes the
    fused path and answers."""
    import torch

    from rolora.adapters.serving.bf16 import bf16_prefill, cpu_has_bf16_units
    from rolora.adapters.serving.inprocess import InProcessBackend
    from rolora.adapters.serving.quantize import resolve_quantize

    (tmp_path / "amx").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    (tmp_path / "zen4").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    (tmp_path / "avx2").write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert cpu_has_bf16_units(tmp_path / "amx") and cpu_has_bf16_units(tmp_path / "zen4")
    assert not cpu_has_bf16_units(tmp_path / "avx2") and not cpu_has_bf16_units(tmp_path / "missing")
    (tmp_path / "icl").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    (tmp_path / "sse").write_text("processor\t: 0\nflags\t\t: fpu sse sse4_2\n")
    # backend.quantize: auto (the default) is bf16 prefill where the CPU has the units, int8 (7-bit activations) on
    # AVX2 without bf16 or int8 dot-product units, fp32 elsewhere (bf16-weights stays opt-in: it turned the demo's
    # answer wrong); other settings are themselves
    assert resolve_quantize("auto", tmp_path / "amx") == resolve_quantize("auto", tmp_path / "zen4") == "bf16"
    assert resolve_quantize("auto", tmp_path / "avx2") == "int8"
    assert resolve_quantize("auto", tmp_path / "icl") == resolve_quantize("auto", tmp_path / "sse") == "none"
    assert resolve_quantize("auto", tmp_path / "missing") == "none"
    settings = ["none", "int8", "bf16", "bf16-int8", "bf16-weights"]
    assert [resolve_quantize(q, tmp_path / "amx") for q in settings] == settings

    fp32 = inprocess_backend
    fp32.generate([_req(PROMPTS[0], adapter=a, max_tokens=1) for a in ("alpha@1", "beta@1")])  # loaded there
    model = fp32._model
    seen: list[tuple[int, bool]] = []  # (tokens in the call, under autocast) of one attention projection
    proj = model.model.layers[0].self_attn.q_proj

    def record(module: Any, args: tuple[Any, ...], output: Any) -> None:
        seen.append((args[0].shape[1], torch.is_autocast_enabled("cpu")))

    hook = proj.register_forward_hook(record)
    enc = fp32.tokenizer([f"Clause {i}: the Supplier shall pay." for i in range(3)], return_tensors="pt")
    names = ["__base__", "alpha@1", "beta@1"]
    try:
        with torch.inference_mode():
            want = fp32._peft(**enc, adapter_names=names).logits[:, -1]
            with bf16_prefill(model):
                out = fp32._peft(**enc, adapter_names=names, use_cache=True)
                step = fp32._peft(
                    input_ids=out.logits[:, -1].argmax(-1, keepdim=True),
                    attention_mask=torch.cat([enc["attention_mask"], enc["attention_mask"][:, :1]], 1),
                    past_key_values=out.past_key_values,
                    adapter_names=names,
                )
    finally:
        hook.remove()
    assert "forward" not in vars(model), "the wrapper outlived its context"
    assert seen[-2:] == [(enc["input_ids"].shape[1], True), (1, False)]  # prompt in bf16, the decoding step in fp32
    assert out.logits.dtype == step.logits.dtype == torch.float32
    assert all(layer.keys.dtype == torch.float32 for layer in out.past_key_values.layers)
    got = out.logits[:, -1]

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

    assert corr(got[0], want[0]) > 0.99, "bf16 prefill logits drifted from fp32's"
    for i, other in ((1, 2), (2, 1)):  # each adapter's own effect survives bf16, and not the other adapter's
        own = corr(got[i] - got[0], want[i] - want[0])
        assert own > 0.8 and own > corr(got[i] - got[0], want[other] - want[0]) + 0.2

    q = InProcessBackend(generator_dir, DirectoryAdapters(TEST_HOME / "test-adapters"), quantize="bf16")
    try:
        reqs = [_req(p, adapter=a, max_tokens=12) for p in PROMPTS[:2] for a in (None, "alpha@1", "beta@1")]
        res = q.generate(reqs)
        assert [r.adapter for r in res] == [r.adapter for r in reqs] and all(r.text for r in res)
        assert q.fused_batches >= 1 and "forward" not in vars(q._model)
        ref = fp32.generate(reqs)
        same = sum(a.text == b.text for a, b in zip(res, ref, strict=True))
        assert same >= len(reqs) // 2, [(a.text, b.text) for a, b in zip(res, ref, strict=True)]
    finally:
        q.close()


def test_bf16_int8_prefills_in_bf16_and_decodes_on_the_int8_layers(
    inprocess_backend: Any, generator_dir: Path, lora_adapters: dict[str, Path]
) -> None:
    """backend.quantize: bf16-int8 swaps the base model's linear layers for int8 ones (as int8 does) and runs the
    prompt's forward pass under bf16 autocast: there an int8 layer multiplies its fp32 weight in bf16, and in every
    one-token decoding step it runs the int8 kernel; a mixed batch takes the fused path, and the first decoded
    token's logits stay close to the fp32 model's."""
    import torch

    from rolora.adapters.serving.bf16 import bf16_prefill
    from rolora.adapters.serving.inprocess import InProcessBackend
    from rolora.adapters.serving.int8 import Int8Linear

    q = InProcessBackend(generator_dir, DirectoryAdapters(TEST_HOME / "test-adapters"), quantize="bf16-int8")
    try:
        layer = q._model.model.layers[0].self_attn.k_proj  # an int8 layer on every CPU (int8.py keeps others fp32)
        assert type(layer) is Int8Linear and type(q._model.model.layers[0].mlp.down_proj) is torch.nn.Linear
        seen: list[tuple[int, torch.dtype, bool]] = []  # (tokens, output dtype, output == the int8 kernel's)

        def record(module: Any, args: tuple[Any, ...], output: Any) -> None:
            x = args[0]
            int8 = torch.ops.quantized.linear_dynamic(
                x.float(), module._q._packed_params._packed_params, reduce_range=module.reduce_range
            )
            seen.append((x.shape[1], output.dtype, output.dtype == torch.float32 and torch.equal(output, int8)))

        hook = layer.register_forward_hook(record)
        try:
            reqs = [_req(p, adapter=a, max_tokens=6) for p in PROMPTS[:2] for a in (None, "alpha@1", "beta@1")]
            res = q.generate(reqs)
        finally:
            hook.remove()
        assert [r.adapter for r in res] == [r.adapter for r in reqs] and all(r.text for r in res)
        assert q.fused_batches >= 1 and "forward" not in vars(q._model)
        prompts, steps = [s for s in seen if s[0] > 1], [s for s in seen if s[0] == 1]
        assert prompts and all(dtype == torch.bfloat16 for _, dtype, _ in prompts)  # the fp32 weight in bf16
        assert len(steps) >= 5 and all(s == (1, torch.float32, True) for s in steps)  # decoding: the int8 kernel
        # the prompt's last-token logits (bf16 prefill) against the fp32 model's, base rows and an adapter's
        fp32 = inprocess_backend
        fp32.generate([_req(PROMPTS[0], adapter="alpha@1", max_tokens=1)])  # loaded there
        enc = q.tokenizer([f"Clause {i}: the Supplier shall pay." for i in range(2)], return_tensors="pt")
        names = ["__base__", "alpha@1"]
        mask = torch.cat([enc["attention_mask"], enc["attention_mask"][:, :1]], 1)  # the prompt and one more token
        with torch.inference_mode():
            want = fp32._peft(**enc, adapter_names=names).logits[:, -1]
            nxt = want.argmax(-1, keepdim=True)
            with bf16_prefill(q._model):
                out = q._peft(**enc, adapter_names=names, use_cache=True)
            step = q._peft(
                input_ids=nxt, attention_mask=mask, past_key_values=out.past_key_values, adapter_names=names
            ).logits[:, -1]
            ref = fp32._peft(
                input_ids=torch.cat([enc["input_ids"], nxt], 1), attention_mask=mask, adapter_names=names
            ).logits[:, -1]
        for got, exp in ((out.logits[:, -1], want), (step, ref)):
            for i in range(2):
                assert float(torch.corrcoef(torch.stack([got[i], exp[i]]))[0, 1]) > 0.95
    finally:
        q.close()


@pytest.mark.slow
def test_a_shared_prompt_prefix_is_prefilled_once(generator_dir: Path, lora_adapters: dict[str, Path]) -> None:
    """``prefix_cache``: a request reuses the key/value cache of the prefix its prompt shares with a recent prompt of
    the same adapter (here: the analyst's system prompt for a second question; the whole first prompt when it is asked
    again with a reviewer's feedback), never another adapter's, and answers exactly as a full prefill does (real
    SmolLM2, a real contract's clauses, greedy)."""
    from types import SimpleNamespace

    from rolora.adapters.serving.inprocess import InProcessBackend
    from rolora.roles.prompts import analyst_messages

    from conftest import EXAMPLES

    text = (EXAMPLES / "nda_mutual.txt").read_text(encoding="utf-8")
    clauses = [SimpleNamespace(text=text[i : i + 700], heading_path="") for i in (0, 700)]
    first = analyst_messages("How long do the confidentiality obligations last?", clauses)
    asks = [
        (first, None),
        (analyst_messages("Which law governs the agreement?", clauses), None),
        (analyst_messages("How long do the confidentiality obligations last?", clauses, "cite the clause"), None),
        (first, "alpha@1"),
        (analyst_messages("Which law governs the agreement?", clauses), "alpha@1"),
    ]
    roots = DirectoryAdapters(TEST_HOME / "test-adapters")
    cached = InProcessBackend(generator_dir, roots, micro_batching=False)
    plain = InProcessBackend(generator_dir, roots, micro_batching=False, prefix_cache=False)
    try:
        tok = cached.tokenizer
        prompts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m, _ in asks]
        tokens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        reused = []
        for messages, adapter in asks:
            req = GenerationRequest(messages, adapter=adapter, max_tokens=24)
            before = cached.prefix_tokens_reused
            a, b = cached.generate([req])[0], plain.generate([req])[0]
            assert a.text == b.text, (adapter, a.text, b.text)  # the same answer as a full prefill
            reused.append(cached.prefix_tokens_reused - before)
        assert plain.prefix_tokens_reused == 0
    finally:
        cached.close()
        plain.close()
    assert reused[0] == 0 and reused[3] == 0  # nothing kept yet for that adapter: the base's caches are not its own
    assert 32 <= reused[1] < tokens[1] // 2  # the system prompt and the question's lead-in, not the clauses
    assert reused[2] >= tokens[0] - 8  # the whole first prompt (up to its last tokens), only the feedback is new
    assert reused[4] == reused[1]  # the adapter's own cache of the same prefix


def test_the_agents_backend_takes_every_backend_setting(generator_dir: Path) -> None:
    """``make_backend`` (what ``rolora ask``, the service, ``rolora eval`` and ``bench/latency.py`` serve with) builds
    the in-process backend from ``backend.*``: ``quantize: int8`` and ``prefix_cache: false`` take effect (they were
    once dropped there, so a configured int8 backend ran fp32); the default ``quantize: auto`` is resolved for this
    CPU."""
    from rolora.adapters.serving.int8 import Int8Linear
    from rolora.agents import make_backend
    from rolora.config import Config

    settings = {"quantize": "int8", "prefix_cache": False, "prompt_lookup": 7, "lora_kernel": False}
    backend = make_backend(Config.model_validate({"home": str(TEST_HOME), "backend": settings}))
    try:
        assert backend.quantize == "int8" and backend.prefix_cache is False and backend.prompt_lookup == 7
        assert backend.lora_kernel is False
        assert isinstance(backend._model.model.layers[0].self_attn.q_proj, Int8Linear)
        # no drafts under int8 decoding: its kernel quantizes a pass's activations with one scale, so a pass over
        # several tokens is not several one-token steps
        schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
        reply = backend.generate([_req("Reply with JSON.", max_tokens=8, json_schema=schema)])[0]
        assert reply.completion_tokens > 0
        assert backend.grammar_drafts is True and backend.lookup_calls == 0 and backend.forced_drafts.drafts == 0
    finally:
        backend.close()
    from rolora.adapters.serving.quantize import resolve_quantize

    default = make_backend(Config.model_validate({"home": str(TEST_HOME)}))
    try:  # quantize: auto, what this CPU runs fastest at answers within the eval's CI
        assert default.quantize == resolve_quantize("auto") != "auto" and default.prefix_cache is True
        assert default.prompt_lookup == Config().backend.prompt_lookup
        assert default.lora_kernel is True  # backend.lora_kernel: on by default
        from rolora.adapters.serving.few_rows import onednn_linear_available

        assert default.few_rows_onednn is onednn_linear_available()  # backend.few_rows_onednn: on by default
    finally:
        default.close()


def test_grammar_sync_masks_every_prefix_it_is_called_with(generator_dir: Path) -> None:
    """The prompt-lookup grammar processor (real xgrammar, SmolLM2's tokenizer) masks the logits after any prefix of
    a reply exactly as a fresh matcher fed that prefix does, whatever order transformers' assisted generation calls it
    in (drafts probed, then verified, then rolled back); a drafted token the grammar refuses leaves the logits as they
    are (verification never keeps it) and the next call is masked again."""
    import random

    import torch
    import xgrammar as xgr
    from transformers import AutoTokenizer

    from rolora.adapters.serving.base import json_schema_grammar
    from rolora.adapters.serving.prompt_lookup import GrammarSync
    from rolora.roles.formats import SENTENCE_ANALYST_SCHEMA

    tok = AutoTokenizer.from_pretrained(generator_dir)
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok))
    compiled = xgr.GrammarCompiler(info).compile_grammar(json_schema_grammar(SENTENCE_ANALYST_SCHEMA))
    reply = tok.encode('{"evidence": [3, 7], "answer": "New York law", "not_found": false}', add_special_tokens=False)
    prompt = tok.encode("the prompt", add_special_tokens=False)

    def fresh_mask(prefix: list[int]) -> torch.Tensor:
        m = xgr.GrammarMatcher(compiled)
        assert all(m.accept_token(t) for t in prefix)
        scores = torch.zeros(1, info.vocab_size)
        m.fill_next_token_bitmask(bitmask := xgr.allocate_token_bitmask(1, info.vocab_size))
        xgr.apply_token_bitmask_inplace(scores, bitmask)
        return scores

    sync = GrammarSync(compiled, len(prompt))
    rng = random.Random(0)
    order = [rng.randrange(len(reply)) for _ in range(40)] + list(range(len(reply)))
    for k in order:
        got = sync(torch.tensor([prompt + reply[:k]]), torch.zeros(1, info.vocab_size))
        assert torch.equal(got, fresh_mask(reply[:k])), k
        assert sync.accepted == reply[:k]
    allowed = int(torch.isfinite(fresh_mask(reply[:1])).sum())
    assert 0 < allowed < info.vocab_size // 10  # the grammar narrows the choice: the test compares masks, not zeros

    bad = tok.encode("}", add_special_tokens=False)[0]  # a closing brace right after the opening one is refused
    untouched = torch.randn(1, info.vocab_size)
    out = sync(torch.tensor([prompt + reply[:1] + [bad] + reply[1:3]]), untouched.clone())
    assert torch.equal(out, untouched) and sync.accepted == reply[:1]
    assert torch.equal(sync(torch.tensor([prompt + reply[:2]]), torch.zeros(1, info.vocab_size)), fresh_mask(reply[:2]))


def _analyst_requests(max_tokens: int) -> list[GenerationRequest]:
    """The analyst's real request (two clauses of the example NDA, the sentence format's JSON schema) for the base
    model and the adapter alpha@1."""
    from types import SimpleNamespace

    from rolora.roles.formats import analyst_call

    from conftest import EXAMPLES

    text = (EXAMPLES / "nda_mutual.txt").read_text(encoding="utf-8")
    clauses = [SimpleNamespace(text=text[i : i + 700], heading_path="") for i in (0, 700)]
    call = analyst_call("sentence", "Which law governs the agreement?", clauses)
    return [
        GenerationRequest(call.messages, adapter=adapter, json_schema=call.schema, max_tokens=max_tokens)
        for adapter in (None, "alpha@1")
    ]


def _count_passes(**backends: Any) -> tuple[dict[str, int], list[Any]]:
    """The forward passes of each backend's model, counted by name (and the hooks, to remove)."""
    passes = dict.fromkeys(backends, 0)

    def counter(name: str) -> Any:
        def hook(module: Any, args: Any, kwargs: Any) -> None:
            passes[name] += 1

        return hook

    hooks = [b._model.register_forward_pre_hook(counter(n), with_kwargs=True) for n, b in backends.items()]
    return passes, hooks


@pytest.mark.slow
def test_prompt_lookup_decodes_the_same_replies_in_fewer_passes(
    generator_dir: Path, lora_adapters: dict[str, Path]
) -> None:
    """``prompt_lookup``: a greedy request alone is decoded with drafts copied from its prompt and verified by the
    model. On the analyst's real request (a real contract's clauses, the sentence format's JSON schema, base model and
    a LoRA adapter) and on free text, the replies are those of plain greedy decoding, in fewer forward passes of the
    model; a batch of several requests is decoded as before."""
    from rolora.adapters.serving.inprocess import InProcessBackend

    copy_me = "Repeat exactly: The Receiving Party shall hold the Confidential Information in strict confidence."
    reqs = [*_analyst_requests(64), _req(copy_me, max_tokens=32)]
    roots = DirectoryAdapters(TEST_HOME / "test-adapters")
    plain = InProcessBackend(generator_dir, roots, micro_batching=False, prefix_cache=False)
    lookup = InProcessBackend(generator_dir, roots, batch_window_ms=50, prefix_cache=False, prompt_lookup=10)
    passes, hooks = _count_passes(plain=plain, lookup=lookup)
    try:
        for req in reqs:
            before = dict(passes)
            a, b = plain.generate([req])[0], lookup.generate([req])[0]
            assert (a.text, a.completion_tokens, a.finish_reason) == (b.text, b.completion_tokens, b.finish_reason)
            steps = a.completion_tokens + (a.finish_reason == "stop")  # one pass a token (the end token too)
            assert passes["plain"] - before["plain"] == steps
            if req.json_schema is not None:
                assert json.loads(b.text)["evidence"] is not None
                assert passes["lookup"] - before["lookup"] < 0.75 * steps, (b.text, passes, before)  # 15 of 26
        assert lookup.lookup_calls == len(reqs) and plain.lookup_calls == 0
        before_batches = lookup.batch_count
        batch = lookup.generate([reqs[0], reqs[1]])
        assert _batches_since(lookup, before_batches) == [2]
        assert lookup.lookup_calls == len(reqs)  # two rows at once: plain batched decoding
        assert [r.text for r in batch] == [plain.generate([r])[0].text for r in reqs[:2]]
    finally:
        for h in hooks:
            h.remove()
        plain.close()
        lookup.close()


def test_forced_drafts_learn_the_tokens_the_model_wrote(generator_dir: Path) -> None:
    """After a reply, each string the grammar forced is remembered as the tokens the model itself wrote for it
    (SmolLM2's real tokenizer): all of them where the model's tokens end where the string ends, the ones inside it
    where its last token runs past the string, none where its first token already differs; per adapter, bounded."""
    from transformers import AutoTokenizer

    from rolora.adapters.serving.grammar_drafts import MEMORY_ENTRIES, ForcedDrafts

    tok = AutoTokenizer.from_pretrained(generator_dir)
    pieces = ["{", '"', "evidence", '"', ":", " [", "3", "],", ' "', "answer", '":', ' "', "New", " York", '",']
    ids = [tok.convert_tokens_to_ids(tok.tokenize(p))[0] for p in pieces]
    assert tok.decode(ids) == '{"evidence": [3], "answer": "New York",'
    drafts = ForcedDrafts()
    forced = [(0, '{"evidence": ['), (8, ' "answer": "N'), (7, "]")]
    drafts.learn("alpha@1", tok, ids, forced)
    assert drafts.tokens_for("alpha@1", '{"evidence": [') == tuple(ids[:6])  # the model's six, not the encoder's four
    assert len(tok.encode('{"evidence": [', add_special_tokens=False)) < 6
    assert drafts.tokens_for("alpha@1", ' "answer": "N') == tuple(ids[8:12])  # "New" runs past the forced "N"
    assert drafts.tokens_for("alpha@1", "]") is None  # the model wrote "]," : no token inside the string
    assert drafts.tokens_for("beta@1", '{"evidence": [') is None
    for i in range(MEMORY_ENTRIES + 5):
        drafts.learn("alpha@1", tok, ids, [(0, '{"evidence": [' + " " * (i % 2)), (6, "3" * (i + 1))])
    assert len(drafts.memory) <= MEMORY_ENTRIES


@pytest.mark.slow
def test_grammar_drafts_decode_the_same_replies_in_fewer_passes(
    generator_dir: Path, lora_adapters: dict[str, Path]
) -> None:
    """``grammar_drafts``: a greedy JSON request alone is drafted the tokens its grammar forces (keys, quotes) and
    the model verifies them. On the analyst's real request (a real contract's clauses, the sentence format's schema,
    base model and a LoRA adapter), asked twice so the second reuses the prompt's cached prefix and the tokens learned
    from the first reply, the replies are plain greedy decoding's, in fewer forward passes, most drafted tokens are
    accepted; prompt lookup on a reused prefix too (its first pass once prefilled the whole prompt again on top of
    its cached prefix: other replies); free text and batches are decoded as before."""
    from rolora.adapters.serving.inprocess import InProcessBackend

    reqs = _analyst_requests(48)
    roots = DirectoryAdapters(TEST_HOME / "test-adapters")
    plain = InProcessBackend(generator_dir, roots, micro_batching=False, prefix_cache=False)
    drafts = InProcessBackend(generator_dir, roots, batch_window_ms=50, grammar_drafts=True)
    lookup = InProcessBackend(generator_dir, roots, micro_batching=False, prompt_lookup=10)
    passes, hooks = _count_passes(plain=plain, drafts=drafts)
    try:
        for req in reqs:
            before = dict(passes)
            a = plain.generate([req])[0]
            steps = a.completion_tokens + (a.finish_reason == "stop")
            assert passes["plain"] - before["plain"] == steps and a.json is not None
            for round_ in (1, 2):  # the second: the prompt's prefix from the cache, the model's tokens learned
                reused = drafts.prefix_tokens_reused
                before = dict(passes)
                b = drafts.generate([req])[0]
                assert (a.text, a.completion_tokens, a.finish_reason) == (b.text, b.completion_tokens, b.finish_reason)
                assert passes["drafts"] - before["drafts"] < 0.75 * steps, (b.text, passes, before, round_)
                if round_ == 2:
                    assert drafts.prefix_tokens_reused > reused
            c = lookup.generate([req])[0], lookup.generate([req])[0]  # the second on the cached prefix
            assert [r.text for r in c] == [a.text, a.text] and lookup.prefix_tokens_reused > 0
        fd = drafts.forced_drafts
        assert fd.drafts >= 4 * len(reqs) and fd.accepted >= 0.8 * fd.tokens > 0, vars(fd)
        assert len({adapter for adapter, _ in fd.memory}) == 2  # learned per adapter: the base model's, alpha's
        before_drafts = fd.drafts
        free = drafts.generate([_req("Name one colour.", max_tokens=8)])[0]
        assert free.text == plain.generate([_req("Name one colour.", max_tokens=8)])[0].text
        before_batches = drafts.batch_count
        batch = drafts.generate(reqs)
        assert _batches_since(drafts, before_batches) == [2]
        assert [r.text for r in batch] == [plain.generate([r])[0].text for r in reqs]
        assert fd.drafts == before_drafts  # free text and a batch of two: no drafts
    finally:
        for h in hooks:
            h.remove()
        for backend in (plain, drafts, lookup):
            backend.close()


def test_few_row_products_run_on_onednn_with_the_same_greedy_replies(
    generator_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``few_rows_onednn`` (``backend.few_rows_onednn``): the base model's fp32 linear layers run products of 1-64 rows
    on oneDNN's kernel with a packed copy of the weight (repacked when the weight changes in place) and every other
    product as before (prefills bit for bit, bf16 autocast), PEFT wraps them with the LoRA kept on its own path, and on
    the analyst's real request, base model and adapter, decoded with grammar drafts and prompt lookup (passes over
    several tokens) and one token a step, the replies are those of the MKL backend. And the
    backend has SDPA read the key/value heads as groups under a mask (``TRANSFORMERS_SDPA_FORCE_GQA``): the logits of
    a padded batch are bit for bit those of transformers' repeated heads."""
    import torch

    from rolora.adapters.serving.few_rows import MAX_ROWS, FewRowsLinear
    from rolora.adapters.serving.inprocess import InProcessBackend

    _require_onednn()
    roots = DirectoryAdapters(TEST_HOME / "test-adapters")
    drafts = {"prefix_cache": False, "prompt_lookup": 10, "grammar_drafts": True}
    onednn = InProcessBackend(generator_dir, roots, batch_window_ms=50, few_rows_onednn=True, **drafts)
    mkl = InProcessBackend(generator_dir, roots, micro_batching=False, **drafts)
    passes, hooks = _count_passes(onednn=onednn, mkl=mkl)
    try:
        assert onednn.few_rows_onednn and not mkl.few_rows_onednn
        reqs = _analyst_requests(48)
        alone = []
        for req in reqs:
            before = dict(passes)
            a, b = mkl.generate([req])[0], onednn.generate([req])[0]
            assert (b.text, b.completion_tokens, b.finish_reason) == (a.text, a.completion_tokens, a.finish_reason)
            assert passes["onednn"] - before["onednn"] < b.completion_tokens  # passes over several tokens were run
            alone.append(a.text)
        for req in reqs:  # free text, one token a step (min_tokens turns drafts off): one-row products on oneDNN
            step = dataclasses.replace(req, json_schema=None, min_tokens=1, max_tokens=24)
            before = dict(passes)
            a, b = mkl.generate([step])[0], onednn.generate([step])[0]
            assert (b.text, b.completion_tokens) == (a.text, a.completion_tokens)
            assert passes["onednn"] - before["onednn"] >= b.completion_tokens > 8
        count, layer_passes = onednn.batch_count, onednn._model.model.layers[0].few_row_passes
        assert [r.text for r in onednn.generate(reqs)] == alone  # a two-row batch: every decoding step on oneDNN
        assert _batches_since(onednn, count) == [2]
        # the base model and alpha@1 in one batch: llama_step's passes, the fused LoRA added to q's and v's columns
        assert onednn._model.model.layers[0].few_row_passes > layer_passes
        q_proj = onednn._peft.base_model.model.model.layers[0].self_attn.q_proj  # the test adapters: q_proj, v_proj
        layer = q_proj.base_layer
        assert type(layer) is FewRowsLinear and type(q_proj.lora_A["alpha@1"]) is torch.nn.Linear
        assert type(mkl._peft.base_model.model.model.layers[0].self_attn.q_proj.base_layer) is torch.nn.Linear
        head = onednn._model.get_output_embeddings()
        assert type(head) is FewRowsLinear and head.weight is onednn._model.get_input_embeddings().weight
        from rolora.adapters.serving import few_rows

        on_onednn: list[int] = []

        def counted(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
            on_onednn.append(x.shape[0])
            return onednn_product(x, weight, bias)

        onednn_product = few_rows.onednn_product
        monkeypatch.setattr(few_rows, "onednn_product", counted)
        monkeypatch.setattr(few_rows, "_PADS_EXACTLY", {})  # two-row products: compared with their padded ones anew
        torch.manual_seed(0)
        with torch.inference_mode():
            for rows in (1, 2, 11, MAX_ROWS, MAX_ROWS + 1, 300):
                x = torch.randn(1, rows, layer.in_features)
                want = torch.nn.functional.linear(x, layer.weight, layer.bias)
                got = layer(x)
                assert got.shape == want.shape
                if rows > MAX_ROWS:  # MKL's product itself
                    assert torch.equal(got, want)
                else:  # oneDNN's, on the packed weight: the same sums, perhaps in another order
                    assert torch.allclose(got, want, atol=1e-4)
            assert on_onednn == [1, 3, 2, 11, MAX_ROWS]  # two rows: padded to three, and as they are once (compared)
            group = layer.group  # q, k and v: one product over their weights stacked and packed
            assert group is not None and group.packed is not None and group.packed.is_mkldnn and layer.packed is None
        x = torch.randn(3, layer.in_features)
        kept = layer.weight.detach().clone()
        with torch.no_grad():  # a weight changed in place: the packed copy follows it, and back
            layer.weight.add_(0.5)
            assert torch.allclose(layer(x), torch.nn.functional.linear(x, kept + 0.5, layer.bias), atol=1e-4)
            layer.weight.copy_(kept)
            assert torch.allclose(layer(x), torch.nn.functional.linear(x, kept, layer.bias), atol=1e-4)
        monkeypatch.setattr(few_rows, "onednn_product", onednn_product)
        with torch.inference_mode():
            with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 prefill is autocast's, untouched
                assert layer(torch.randn(4, layer.in_features)).dtype == torch.bfloat16
            assert os.environ["TRANSFORMERS_SDPA_FORCE_GQA"] == "1"
            prompts = ["The Receiving Party shall hold the information in confidence.", "Governing law: New York."]
            enc = mkl.tokenizer(prompts, return_tensors="pt", padding=True)  # left padding: a mask reaches SDPA
            assert not bool(enc["attention_mask"].all())
            grouped = mkl._model(**enc).logits
            monkeypatch.setenv("TRANSFORMERS_SDPA_FORCE_GQA", "0")
            repeated = mkl._model(**enc).logits
        assert torch.equal(grouped, repeated)
    finally:
        for h in hooks:
            h.remove()
        onednn.close()
        mkl.close()


def _few_rows_models(generator_dir: Path, count: int) -> list[Any]:
    """``count`` copies of the real SmolLM2 in float32, each with its linear layers on oneDNN's few-row products
    (``few_rows.few_rows_onednn``: 211 layers, q-k-v and gate-up grouped); skipped where torch lacks the kernel."""
    import torch
    from transformers import AutoModelForCausalLM

    from rolora.adapters.serving import few_rows

    _require_onednn()
    models = [AutoModelForCausalLM.from_pretrained(generator_dir, dtype=torch.float32).eval() for _ in range(count)]
    assert [few_rows.few_rows_onednn(m) for m in models] == [211] * count
    return models


def _counted_onednn_products(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], Any]:
    """From now on, the rows of every product on oneDNN's kernel (``few_rows.onednn_product`` counted); and the
    kernel itself, uncounted."""
    from rolora.adapters.serving import few_rows

    onednn_product = few_rows.onednn_product
    products: list[int] = []

    def counted(x: Any, weight: Any, bias: Any) -> Any:
        products.append(x.shape[0])
        return onednn_product(x, weight, bias)

    monkeypatch.setattr(few_rows, "onednn_product", counted)
    return products, onednn_product


def test_layers_sharing_an_input_run_one_product_with_the_same_logits(
    generator_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``few_rows_onednn`` groups the siblings that multiply the same input (q, k, v; gate, up: ``SHARED_INPUT``) into
    one product over their weights stacked: on the real SmolLM2, a decoding step and a pass over 11 drafted tokens run
    4 products a layer instead of 7 (and the output head's), with the logits of the separate products bit for bit; a
    member called with another input, or twice, runs the product again; a weight changed in place is repacked."""
    import torch

    from rolora.adapters.serving import few_rows

    grouped, separate = _few_rows_models(generator_dir, 2)
    assert few_rows.separate_inputs(separate) == 5 * len(separate.model.layers)  # each its own product again
    layers = len(grouped.model.layers)
    attention, mlp = grouped.model.layers[0].self_attn, grouped.model.layers[0].mlp
    assert attention.q_proj.group is attention.k_proj.group is attention.v_proj.group is not None
    assert mlp.gate_proj.group is mlp.up_proj.group is not None and mlp.down_proj.group is None
    assert separate.model.layers[0].self_attn.q_proj.group is None
    products, _ = _counted_onednn_products(monkeypatch)
    torch.manual_seed(0)
    prompt = torch.randint(100, 20000, (1, 80))
    with torch.inference_mode():
        caches = [model(prompt, use_cache=True).past_key_values for model in (grouped, separate)]
        for rows in (1, 11):  # a decoding step; a pass verifying drafts
            new = torch.randint(100, 20000, (1, rows))
            logits, counts = [], []
            for model, cache in zip((grouped, separate), caches, strict=True):
                products.clear()
                logits.append(model(new, past_key_values=cache, use_cache=True).logits)
                assert products == [rows] * len(products)
                counts.append(len(products))
            assert torch.equal(logits[0], logits[1])  # bit for bit
            assert counts == [4 * layers + 1, 7 * layers + 1]
        x = torch.randn(3, attention.k_proj.in_features)
        products.clear()
        k = attention.k_proj(x), attention.k_proj(x)  # alone, then again: a product each time
        assert len(products) == 2 and torch.equal(k[0], k[1])
        assert torch.allclose(k[0], torch.nn.functional.linear(x, attention.k_proj.weight), atol=1e-4)
    with torch.no_grad():  # a member's weight changed in place: the stacked weight follows it
        attention.v_proj.weight.mul_(2.0)
        want = torch.nn.functional.linear(x, attention.v_proj.weight)
        assert torch.allclose(attention.v_proj(x), want, atol=1e-4)


def test_two_row_products_run_on_three_rows_where_the_sums_are_the_same(
    generator_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``few_rows.padded_product``: a product of two rows (``PADDED_ROWS``) runs on three, a row of zeros added, where
    oneDNN's sums come out the same: on the real SmolLM2 a two-row pass gives the logits of unpadded products bit for
    bit, its products run on three rows after each shape's first, compared, product; a shape whose padded product
    differs (a kernel that adds in another order, stood in for here beside the real one) keeps its two rows."""
    import torch

    from rolora.adapters.serving import few_rows

    (model,) = _few_rows_models(generator_dir, 1)
    assert sorted(few_rows.PADDED_ROWS) == [2]
    products, onednn_product = _counted_onednn_products(monkeypatch)
    monkeypatch.setattr(few_rows, "_PADS_EXACTLY", {})
    torch.manual_seed(0)
    prompt, new = torch.randint(100, 20000, (1, 80)), torch.randint(100, 20000, (1, 2))
    logits, rows = [], []
    with torch.inference_mode():
        for padded in (frozenset(), frozenset({2}), frozenset({2})):  # unpadded; padded (shapes compared); padded
            monkeypatch.setattr(few_rows, "PADDED_ROWS", padded)
            cache = model(prompt, use_cache=True).past_key_values
            products.clear()
            logits.append(model(new, past_key_values=cache, use_cache=True).logits)
            rows.append(list(products))
    products_a_pass = 4 * len(model.model.layers) + 1
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])  # bit for bit
    assert rows[0] == [2] * products_a_pass
    exact = few_rows._PADS_EXACTLY
    assert len(exact) == 5 and all(exact.values())  # q-k-v, o, gate-up, down, head: each compared once, the same
    assert rows[1].count(3) == products_a_pass and rows[1].count(2) == 5
    assert rows[2] == [3] * products_a_pass

    def another_order(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        out = onednn_product(x, weight, bias)
        return out + 1e-6 if x.shape[0] == 3 else out  # as a kernel summing in another order would

    monkeypatch.setattr(few_rows, "onednn_product", another_order)
    monkeypatch.setattr(few_rows, "_PADS_EXACTLY", {})
    weight = torch.randn(64, 32)
    packed, x = few_rows.pack_weight(weight), torch.randn(2, 32)
    for _ in range(2):  # compared, found to differ: the two rows' own product, then without padding at all
        got = few_rows.padded_product(x, packed, None)
        assert torch.equal(got, onednn_product(x, packed, None))
    assert list(few_rows._PADS_EXACTLY.values()) == [False]


def test_a_llama_layers_few_row_passes_run_in_fewer_operations_with_the_same_logits(generator_dir: Path) -> None:
    """``llama_step.few_row_llama_layers`` (with ``backend.few_rows_onednn``): on the real SmolLM2, a one-row step and
    passes over 2 and 11 rows run the few-row path with the logits of transformers' own layers bit for bit; a
    prefill, bf16 autocast, a forward hook on a projection it would skip, and layers whose q, k and v are not one
    group run the stock forward; ``stock_llama_layers`` undoes the swap."""
    import torch
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from rolora.adapters.serving import few_rows
    from rolora.adapters.serving.llama_step import few_row_llama_layers, stock_llama_layers

    fewer, stock = _few_rows_models(generator_dir, 2)
    layers = len(fewer.model.layers)
    assert few_row_llama_layers(fewer) == layers and few_row_llama_layers(torch.nn.Linear(2, 2)) == 0
    first = fewer.model.layers[0]
    assert isinstance(first, LlamaDecoderLayer) and type(stock.model.layers[0]) is LlamaDecoderLayer

    def passes() -> list[int]:
        return [layer.few_row_passes for layer in fewer.model.layers]

    def both(new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # each model's logits, on its own cache
        pairs = zip((fewer, stock), caches, strict=True)
        got, want = (m(new, past_key_values=c, use_cache=True).logits for m, c in pairs)
        return got, want

    torch.manual_seed(0)
    prompt = torch.randint(100, 20000, (1, 80))
    with torch.inference_mode():
        caches = [model(prompt, use_cache=True).past_key_values for model in (fewer, stock)]
        assert passes() == [0] * layers  # a prefill: the stock forward
        for count, rows in enumerate((1, 2, 11), start=1):  # a decoding step; passes verifying drafts
            got, want = both(torch.randint(100, 20000, (1, rows)))
            assert torch.equal(got, want) and passes() == [count] * layers  # bit for bit
        new = torch.randint(100, 20000, (1, 3))
        calls: list[int] = []
        hook = first.self_attn.k_proj.register_forward_hook(lambda m, a, out: calls.append(out.shape[1]))
        try:  # a hook on k_proj: that layer runs the stock forward (and k_proj with it), the others their own
            got, want = both(new)
        finally:
            hook.remove()
        assert torch.equal(got, want) and calls == [3] and passes() == [3] + [4] * (layers - 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the bf16 prefill's autocast: the stock forward
            fewer(torch.randint(100, 20000, (1, 2)), past_key_values=caches[0], use_cache=True)
        caches[0].crop(-2)
        assert passes() == [3] + [4] * (layers - 1)
        few_rows.separate_inputs(fewer)  # q, k and v not one group any more: the stock forward
        got, want = both(new)
        assert torch.equal(got, want) and passes() == [3] + [4] * (layers - 1)
    assert stock_llama_layers(fewer) == layers and type(first) is LlamaDecoderLayer


def test_one_adapters_decoding_steps_run_on_weights_with_its_lora_merged_in(
    generator_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``merged_adapters`` (``backend.merged_adapters``): a batch whose rows all use one adapter decodes on packed
    weights with that adapter's LoRA merged in (its products of a few rows; the LoRA beside them skipped), and the
    analyst's real requests, decoded with drafts (passes over several tokens) and one token a step, get the replies
    of the backend that applies the LoRA beside each product. A prefill keeps the LoRA path bit for bit; a mixed batch
    and the base model never see a merged weight; the slots go to the first adapters, and to another only when it has
    decoded far more; an adapter is merged only once it has decoded what merging costs (``MERGE_AFTER_TOKENS``, the
    default); a copy follows a replaced A or B, and goes with its eviction."""
    import torch

    from rolora.adapters.serving import few_rows
    from rolora.adapters.serving.inprocess import InProcessBackend
    from rolora.adapters.serving.merged_lora import MERGE_AFTER_TOKENS, SWAP_TOKENS

    _require_onednn()
    roots = DirectoryAdapters(TEST_HOME / "test-adapters")
    common = {"few_rows_onednn": True, "prefix_cache": False, "prompt_lookup": 10, "grammar_drafts": True}
    common |= {"batch_window_ms": 50}  # generate(two requests): one batch of two rows
    merged = InProcessBackend(generator_dir, roots, merged_adapters=1, merge_after_tokens=0, max_loaded=2, **common)
    beside = InProcessBackend(generator_dir, roots, **common)
    on_weights: list[tuple[int, bool]] = []  # (rows, whether the weight was a merged copy) of every oneDNN product
    onednn_product = few_rows.onednn_product

    def counted(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        on_weights.append((x.shape[0], any(weight is w for w in copies())))
        return onednn_product(x, weight, bias)

    def copies() -> list[torch.Tensor]:
        return [w for held in merged._merged._held.values() for w, _ in held.values()]

    monkeypatch.setattr(few_rows, "onednn_product", counted)
    try:
        assert merged._merged is not None and beside._merged is None  # the class's default: 0, off
        reqs = _analyst_requests(48)  # the base model's, then alpha@1's
        for req in reqs:
            on_weights.clear()
            a, b = beside.generate([req])[0], merged.generate([req])[0]
            alone_text = a.text
            assert (b.text, b.completion_tokens, b.finish_reason) == (a.text, a.completion_tokens, a.finish_reason)
            used = {on for _, on in on_weights}
            assert used == ({False, True} if req.adapter else {False})  # the base model: never a merged weight
        assert merged._merged.held() == ["alpha@1"] and merged.merged_batches == 1 and merged._merged.merges == 1
        assert any(rows > 1 for rows, on in on_weights if on)  # passes verifying drafts on the merged weights
        assert merged._model.model.layers[0].few_row_passes > 0  # llama_step's passes, on the merged weights
        step = dataclasses.replace(reqs[1], json_schema=None, min_tokens=1, max_tokens=24)  # one token a step
        on_weights.clear()
        a, b = beside.generate([step])[0], merged.generate([step])[0]
        assert (b.text, b.completion_tokens) == (a.text, a.completion_tokens)
        one_row_steps = sum(1 for rows, on in on_weights if on and rows == 1)
        # a layer's q, k and v: one product a step, on the stacked weight with the LoRA merged into q and v
        assert one_row_steps >= len(merged._model.model.layers) * (b.completion_tokens - 1)
        assert merged._merged.merges == 1  # the copy made once is reused

        # one LoRA layer: a few rows on the merged copy, a prefill on the plain weight and the LoRA beside it; inside,
        # the model holds the base layer in the LoRA layer's place (PEFT's wrapper and the hook skipped)
        attention = merged._peft.base_model.model.model.layers[0].self_attn
        q_proj = attention.q_proj  # the test adapters: q_proj, v_proj
        fused = merged._fused
        weights = merged._merged.weights("alpha@1", fused.lora_layers())
        group = q_proj.base_layer.group  # q, k and v share an input: one stacked weight, LoRA merged into q and v
        assert group is not None and attention.v_proj.base_layer.group is group
        assert weights is not None and id(group) in weights and len(weights) == len(merged._model.model.layers)
        torch.manual_seed(0)
        with torch.inference_mode():
            for rows in (1, 11, few_rows.MAX_ROWS + 1, 300):
                x = torch.randn(1, rows, q_proj.in_features)
                with fused.rows(["alpha@1"]):
                    want = q_proj(x), attention.v_proj(x)  # the LoRA beside the base product
                on_weights.clear()
                with fused.rows(["alpha@1"], weights):
                    assert attention.q_proj is q_proj.base_layer and attention.k_proj is not None
                    got = attention.q_proj(x), attention.v_proj(x)  # v: its columns of q's product, none of its own
                if rows > few_rows.MAX_ROWS:
                    assert all(map(torch.equal, got, want)) and not on_weights
                else:
                    assert all(torch.allclose(g, w, atol=1e-4) for g, w in zip(got, want, strict=True))
                    assert on_weights == [(rows, True)]
            assert attention.q_proj is q_proj and group.substitute is None  # only inside the context
            assert q_proj.base_layer.beside is None
        kept = q_proj.lora_B["alpha@1"].weight
        with torch.inference_mode():  # the adapter's B replaced: the copy is made again from the new one
            q_proj.lora_B["alpha@1"].weight = torch.nn.Parameter(kept * 2.0, requires_grad=False)
            again = merged._merged.weights("alpha@1", fused.lora_layers())
            assert again is not None and merged._merged.merges == 2 and again[id(group)] is not weights[id(group)]
            x = torch.randn(2, q_proj.in_features)
            lora_a, lora_b, scaling = q_proj.lora_A["alpha@1"], q_proj.lora_B["alpha@1"], q_proj.scaling["alpha@1"]
            want = q_proj.base_layer(x) + lora_b(lora_a(x)) * scaling
            with fused.rows(["alpha@1"], again):
                assert torch.allclose(attention.q_proj(x), want, atol=1e-4)
            assert not torch.allclose(want, q_proj.base_layer(x), atol=1e-3)  # the LoRA does change the product
            q_proj.lora_B["alpha@1"].weight = kept

        # the one slot: beta@1 decodes beside its LoRA until it has decoded far more than alpha@1
        count = merged.merged_batches
        beta = dataclasses.replace(reqs[1], adapter="beta@1")
        a, b = beside.generate([beta])[0], merged.generate([beta])[0]
        assert b.text == a.text and merged.merged_batches == count and merged._merged.held() == ["alpha@1"]
        merged._merged.count("beta@1", 2 * merged._merged.decoded["alpha@1"] + SWAP_TOKENS + 1)
        a, b = beside.generate([beta])[0], merged.generate([beta])[0]
        assert b.text == a.text and merged.merged_batches == count + 1 and merged._merged.held() == ["beta@1"]
        mixed = [reqs[1], beta]  # a batch of two adapters: the fused LoRA beside the products, no merged weight
        on_weights.clear()
        batches = merged.batch_count
        assert [r.text for r in merged.generate(mixed)] == [r.text for r in beside.generate(mixed)]
        assert _batches_since(merged, batches) == [2]
        assert merged.merged_batches == count + 1 and on_weights and not any(on for _, on in on_weights)
        merged.generate([dataclasses.replace(reqs[1], max_tokens=4)])  # alpha@1 the latest used, beta@1 the oldest
        merged.generate([dataclasses.replace(reqs[1], adapter="gamma@1", max_tokens=4)])  # max_loaded=2: evicts beta@1
        assert sorted(merged.loaded_adapters) == ["alpha@1", "gamma@1"] and "beta@1" not in merged._merged.decoded
        assert merged._merged.held() == ["gamma@1"]  # the slot freed with beta@1, taken by the next adapter served

        # the default: an adapter decodes beside its LoRA until it has decoded MERGE_AFTER_TOKENS, then is merged
        later = InProcessBackend(generator_dir, roots, merged_adapters=1, **common)
        try:
            assert later._merged.after_tokens == MERGE_AFTER_TOKENS > 0
            first = later.generate([reqs[1]])[0]
            assert first.text == alone_text and later.merged_batches == 0 and later._merged.held() == []
            later._merged.count("alpha@1", MERGE_AFTER_TOKENS - first.completion_tokens)
            assert later.generate([reqs[1]])[0].text == alone_text
            assert later.merged_batches == 1 and later._merged.held() == ["alpha@1"]
        finally:
            later.close()
    finally:
        monkeypatch.setattr(few_rows, "onednn_product", onednn_product)
        merged.close()
        beside.close()
