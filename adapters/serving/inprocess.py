"""In-process backend (the embedded default): transformers + PEFT, one base model, many LoRA adapters.

Concurrent requests that arrive within ``batch_window_ms`` are micro-batched into one ``generate`` call whatever
their adapters (``fused_lora``: every row's LoRA in one pair of matmuls per layer, :mod:`.fused_lora`; otherwise, or
for adapter kinds it does not cover, PEFT's mixed-adapter batches through ``adapter_names``; ``"__base__"`` for the
base model), with left padding and per-request max tokens and stop strings. Adapters load on demand from an
``AdapterResolver`` and an LRU bound (``max_loaded``) evicts the least recently used. JSON-schema constrained
decoding uses xgrammar. ``quantize="int8"`` (``backend.quantize``) runs the base model's linear layers on int8
kernels with the adapters in fp32 (:mod:`.int8`); ``quantize="bf16"`` runs the prompt's prefill in bfloat16 under
autocast and decodes in fp32 (:mod:`.bf16`: prefill ~2x as fast on CPUs with bf16 matrix units, AMX);
``quantize="bf16-int8"`` prefills so and decodes on the int8 layers (an int8 layer under bf16 autocast multiplies
its fp32 weight in bf16);
``quantize="bf16-weights"`` keeps bfloat16 copies of the linear layers' weights for prefill and decoding
(:mod:`.bf16_weights`; the rest of the model and the adapters fp32); ``quantize="auto"`` (``rolora.yaml``'s
default; the class's is ``"none"``) picks by CPU (:func:`.quantize.resolve_quantize`). ``prompt_lookup``
(``backend.prompt_lookup``, 10 in ``rolora.yaml``, 0 = off in the class) decodes a greedy request alone with drafts
copied from its prompt (:mod:`.prompt_lookup`); ``grammar_drafts`` (``backend.grammar_drafts``, on in
``rolora.yaml``, off in the class) drafts a greedy JSON request alone the tokens its grammar forces, keys and quotes
(:mod:`.grammar_drafts`); both verify drafts with transformers' assisted generation, whose first pass is sliced after
a reused prefix (:func:`.prompt_lookup.assisted_prefill_after`), and neither runs under int8 decoding
(:func:`.quantize.drafts_allowed`). ``few_rows_onednn`` (``backend.few_rows_onednn``, on in ``rolora.yaml``, off
in the class) runs the float32 linear products of 1-64 rows, every decoding step's, on oneDNN's kernel with each
weight packed once (:mod:`.few_rows`); with it, ``merged_adapters`` (``backend.merged_adapters``, 1 in ``rolora.yaml``,
0 = off in the class) decodes a batch of one adapter, once that adapter has decoded ``merge_after_tokens``, on packed
weights with its LoRA merged in (:mod:`.merged_lora`). All model work happens on one worker thread, so the backend is
thread-safe.

``prefix_cache`` (``backend.prefix_cache``, on by default): a request generated alone reuses the key/value cache of
the longest token prefix its prompt shares with one of the latest prompts of the same adapter (the system prompt and
the question's lead-in for every question; a whole earlier prompt when a role is asked again with feedback), so only
the rest is prefilled. The cache of a prefix is the same numbers the model computes for it in a full prefill (the
attention is causal), kept per adapter because a LoRA on the key/value projections changes them.

>>> backend = InProcessBackend.from_config(load_config(), adapters=DirectoryAdapters(root))  # doctest: +SKIP
>>> backend.generate([GenerationRequest([{"role": "user", "content": "Hi"}], adapter="contracts-analyst")])
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import json
import logging
import os
import queue
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rolora.config import QUANTIZE_CHOICES
from rolora.errors import RoloraRuntimeError, UserError

from .base import (
    BASE,
    GRAMMAR_CACHE_SIZE,
    AdapterResolver,
    BackendBase,
    GenerationRequest,
    GenerationResult,
    json_schema_grammar,
    verify_adapter_files,
)
from .grammar_drafts import MAX_FORCED_DRAFT
from .quantize import BF16_PREFILL, INT8_LAYERS, drafts_allowed, resolve_quantize

if TYPE_CHECKING:
    from rolora.config import Config

__all__ = ["InProcessBackend"]

log = logging.getLogger("rolora.serving")

PREFIX_MIN_TOKENS = 32  # a shorter shared prefix is prefilled again (copying its cache costs about as much)
PREFIX_ENTRIES = 4  # prompts whose caches are kept (~36 MB each at 780 tokens for SmolLM2-135M)


def _cache_kwarg() -> str:
    """The name ``generate`` takes a prefilled cache by: ``cache`` in recent transformers (where ``past_key_values``
    is deprecated), ``past_key_values`` before."""
    from transformers.generation import utils

    return "cache" if "cache" in getattr(utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


def shared_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens ``a`` and ``b`` have in common."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


@dataclass
class _Job:
    request: GenerationRequest
    future: concurrent.futures.Future[GenerationResult]
    submitted: float
    on_text: Any = None  # streaming callback(text | None)
    adapter: str | None = field(default=None)  # canonical name@version once resolved
    folder: Path | None = None


def _adapter_is_noop(folder: Path) -> bool:
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        keys = [k for k in f.keys() if "lora_B" in k]  # noqa: SIM118 - safe_open has keys(), not iteration
        return bool(keys) and all(float(f.get_tensor(k).abs().max()) == 0.0 for k in keys)


class InProcessBackend(BackendBase):
    """transformers + PEFT multi-adapter backend with micro-batching; see the module docstring."""

    name = "inprocess"

    def __init__(
        self,
        model: str | Path = "smollm2-135m-instruct",
        adapters: AdapterResolver | None = None,
        *,
        home: Path | None = None,
        max_loaded: int = 8,
        batch_window_ms: float = 5.0,
        max_batch_size: int = 16,
        torch_threads: int = 0,
        micro_batching: bool = True,
        fused_lora: bool = True,
        quantize: str = "none",
        prefix_cache: bool = True,
        prompt_lookup: int = 0,
        grammar_drafts: bool = False,
        few_rows_onednn: bool = False,
        merged_adapters: int = 0,
        merge_after_tokens: int | None = None,
        lora_kernel: bool = True,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rolora.models import resolve_generator

        if max_loaded < 1:
            raise UserError(f"max_loaded must be >= 1, got {max_loaded}")
        if merged_adapters < 0:
            raise UserError(f"backend.merged_adapters must be >= 0 (0 = off), got {merged_adapters}")
        if prompt_lookup < 0:
            raise UserError(f"backend.prompt_lookup must be >= 0 (0 = off), got {prompt_lookup}")
        if quantize not in QUANTIZE_CHOICES:
            raise UserError(f"backend.quantize: {quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        # transformers' SDPA attention copies the key/value heads up to the query heads' count in every layer
        # whenever a mask is passed (a pass over several tokens: drafts, batches); its own switch lets SDPA read them
        # as groups instead. The same logits bit for bit (tests), a pass verifying 11 drafted tokens over a
        # 1,000-token cache 0.89x the time on 2 cores. setdefault: TRANSFORMERS_SDPA_FORCE_GQA=0 keeps the copies.
        os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
        folder = Path(model) if Path(str(model)).is_dir() else resolve_generator(str(model), home)
        self.model_folder = folder
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        self._model.eval()
        from .bf16 import cpu_has_bf16_units

        self.quantize = quantize = resolve_quantize(quantize)  # auto: bf16 / int8 / none by the CPU's units
        if quantize in INT8_LAYERS:
            from .int8 import quantize_linear_int8

            quantize_linear_int8(self._model)  # before PEFT wraps them: LoRA layers stay fp32 around the int8 ones
        elif quantize == "bf16-weights":
            from .bf16_weights import bf16_linear_weights

            bf16_linear_weights(self._model)  # likewise: LoRA stays fp32 around the bf16 ones
        self.few_rows_onednn = False
        if few_rows_onednn:  # the fp32 layers left: products of 1-64 rows on oneDNN (.few_rows); LoRA wraps them
            from .few_rows import few_rows_onednn as swap_few_rows

            self.few_rows_onednn = swap_few_rows(self._model) > 0
            if self.few_rows_onednn:  # a Llama layer's few-row passes in fewer operations, the same sums
                from .llama_step import few_row_llama_layers

                few_row_llama_layers(self._model)
        if quantize in BF16_PREFILL and not cpu_has_bf16_units():
            log.warning("backend.quantize: %s on a CPU without bf16 units (amx_bf16/avx512_bf16): it is likely "
                        "slower than fp32 here; set backend.quantize: none or auto", quantize)  # fmt: skip
        self._peft: Any = None
        self._fused: Any = None  # FusedLoRA over self._peft (mixed batches in one pass per layer)
        self.fused_lora = fused_lora
        self.lora_kernel = lora_kernel  # fused mixed decoding steps on .lora_rows' compiled kernel (where it builds)
        self._home = home
        self._merged: Any = None  # MergedLoRA: packed weights with an adapter merged in (few rows, one adapter)
        if merged_adapters and self.few_rows_onednn and fused_lora:
            from .merged_lora import MERGE_AFTER_TOKENS, MergedLoRA

            after = MERGE_AFTER_TOKENS if merge_after_tokens is None else merge_after_tokens
            self._merged = MergedLoRA(merged_adapters, after)
        self.fused_batches = 0  # generate calls served by the fused path (tests, benchmarks)
        self.merged_batches = 0  # generate calls decoded on merged weights (tests, benchmarks)
        self.prefix_cache = prefix_cache
        # (adapter or BASE, prompt token ids) -> key/value cache of those ids, least recently used first
        self._prefixes: OrderedDict[tuple[str, tuple[int, ...]], Any] = OrderedDict()
        self.prefix_tokens_reused = 0  # prompt tokens not prefilled again (tests, benchmarks)
        self.prompt_lookup = prompt_lookup
        self.lookup_calls = 0  # generate calls decoded with prompt-lookup drafts (tests, benchmarks)
        from .grammar_drafts import ForcedDrafts

        self.grammar_drafts = grammar_drafts
        self.forced_drafts = ForcedDrafts()  # the model's tokens for forced strings; counts (tests, benchmarks)
        self._resolver = adapters
        self.max_loaded = max_loaded
        self.window = batch_window_ms / 1000.0 if micro_batching else 0.0
        self.max_batch_size = max_batch_size if micro_batching else 1
        self._loaded: OrderedDict[str, Path] = OrderedDict()
        self.noop_adapters: set[str] = set()
        self._grammars: OrderedDict[str, Any] = OrderedDict()  # compiled, least recently used first
        self.grammar_cache_size = GRAMMAR_CACHE_SIZE
        self._compiler: Any = None
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending: list[_Job] = []
        self._closed = False
        self._worker = threading.Thread(target=self._run, name="rolora-inprocess", daemon=True)
        self._worker.start()
        self.batches: deque[int] = deque(maxlen=1024)  # sizes of the latest generate calls (tests, benchmarks)
        self.batch_count = 0  # generate calls made so far

    @classmethod
    def from_config(cls, config: Config, adapters: AdapterResolver | None = None, **kwargs: Any) -> InProcessBackend:
        return cls(
            config.models.generator,
            adapters,
            home=config.home_dir,
            torch_threads=config.backend.torch_threads,
            quantize=config.backend.quantize,
            prefix_cache=config.backend.prefix_cache,
            prompt_lookup=config.backend.prompt_lookup,
            grammar_drafts=config.backend.grammar_drafts,
            few_rows_onednn=config.backend.few_rows_onednn,
            merged_adapters=config.backend.merged_adapters,
            lora_kernel=config.backend.lora_kernel,
            **kwargs,
        )

    # -- public API -------------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, on_text: Any = None) -> concurrent.futures.Future[GenerationResult]:
        """Queue one request; the future resolves to its result (or raises its error)."""
        if self._closed:
            raise RoloraRuntimeError("the in-process backend is closed")
        fut: concurrent.futures.Future[GenerationResult] = concurrent.futures.Future()
        self._queue.put(_Job(request, fut, time.perf_counter(), on_text))
        return fut

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        futures = [self.submit(r) for r in requests]
        return [await asyncio.wrap_future(f) for f in futures]

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        """Yield text deltas of one request as they are generated (it runs alone, not micro-batched)."""
        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[str | None] = asyncio.Queue()

        def on_text(text: str | None) -> None:
            loop.call_soon_threadsafe(deltas.put_nowait, text)

        fut = self.submit(request, on_text=on_text)
        while True:
            item = await deltas.get()
            if item is None:
                break
            if item:
                yield item
        await asyncio.wrap_future(fut)  # surface errors

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._worker.join(timeout=60)

    @property
    def loaded_adapters(self) -> list[str]:
        return list(self._loaded)

    # -- worker -----------------------------------------------------------------------------------------
    def _next_batch(self) -> list[_Job] | None:
        job = self._pending.pop(0) if self._pending else self._queue.get()
        if job is None:
            return None
        batch = [job]
        if job.on_text is not None:
            return batch
        deadline = time.monotonic() + self.window
        while len(batch) < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)
                break
            if nxt.on_text is not None:
                self._pending.append(nxt)
                break
            batch.append(nxt)
        return batch

    def _run(self) -> None:
        import torch

        with torch.inference_mode():
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                try:
                    self._serve(batch)
                except BaseException as e:  # never let the worker die with requests waiting
                    log.exception("in-process backend batch failed")
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(RoloraRuntimeError(f"in-process generation failed: {e}"))
                        if job.on_text is not None:
                            job.on_text(None)

    def _serve(self, batch: list[_Job]) -> None:
        ready: list[_Job] = []
        for job in batch:
            try:
                self._resolve(job)
                ready.append(job)
            except Exception as e:
                job.future.set_exception(e)
                if job.on_text is not None:
                    job.on_text(None)
        groups: dict[tuple[Any, ...], list[_Job]] = {}
        for job in ready:
            r = job.request
            key = (r.temperature > 0, r.temperature, r.top_p, r.json_schema is not None, r.seed, r.min_tokens)
            groups.setdefault(key, []).append(job)
        for jobs in groups.values():
            # at most max_loaded distinct adapters can be resident during one generate call
            while jobs:
                part: list[_Job] = []
                names: set[str] = set()
                for job in list(jobs):
                    if job.adapter is not None and job.adapter not in names and len(names) >= self.max_loaded:
                        continue
                    if job.adapter is not None:
                        names.add(job.adapter)
                    part.append(job)
                    jobs.remove(job)
                self._generate(part)

    def _resolve(self, job: _Job) -> None:
        ref = job.request.adapter
        if ref is None:
            return
        if self._resolver is None:
            raise UserError(f"request asks for adapter '{ref}' but the backend has no adapter source configured")
        job.adapter, job.folder = self._resolver(ref)

    def _ensure_adapters(self, jobs: list[_Job]) -> None:
        from peft import PeftModel

        wanted = {j.adapter: j.folder for j in jobs if j.adapter is not None}
        for name, folder in wanted.items():
            assert folder is not None
            if name in self._loaded:
                self._loaded.move_to_end(name)
                continue
            while len(self._loaded) >= self.max_loaded:
                victim = next(n for n in self._loaded if n not in wanted)
                with warnings.catch_warnings():  # PEFT warns that the active adapter moves; it is irrelevant here
                    warnings.simplefilter("ignore", UserWarning)
                    self._peft.delete_adapter(victim)
                del self._loaded[victim]
                if self._merged is not None:
                    self._merged.forget(victim)
                for key in [k for k in self._prefixes if k[0] == victim]:
                    del self._prefixes[key]
                if self._fused is not None:
                    self._fused.clear()
                log.info("evicted adapter %s (max_loaded=%d)", victim, self.max_loaded)
            verify_adapter_files(name, folder)  # the bytes registered, checked right before they are read
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(self._model, str(folder), adapter_name=name)
                else:
                    self._peft.load_adapter(str(folder), adapter_name=name)
            except Exception as e:
                raise RoloraRuntimeError(f"adapter '{name}' at {folder} could not be loaded: {e}") from e
            self._peft.eval()
            self._loaded[name] = folder
            if self._merged is not None:
                self._merged.forget(name)
            if self.fused_lora:
                from .fused_lora import FusedLoRA

                if self._fused is None:
                    kernel = None
                    if self.lora_kernel:
                        from rolora.models import default_home

                        from .lora_rows import load_kernel

                        kernel = load_kernel((self._home or default_home()) / "kernels")
                    self._fused = FusedLoRA(self._peft, kernel=kernel)
                self._fused.clear()
            if _adapter_is_noop(folder):
                self.noop_adapters.add(name)
                log.warning("adapter %s has all-zero lora_B weights: it changes nothing", name)

    def _grammar(self, schema: dict[str, Any]) -> Any:
        import xgrammar as xgr

        ebnf = json_schema_grammar(schema)  # the grammar the vLLM backend sends: one format on every backend
        if ebnf in self._grammars:
            self._grammars.move_to_end(ebnf)
            return self._grammars[ebnf]
        if self._compiler is None:
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self._model.config.vocab_size)
            # xgrammar's own cache of compiled grammars, bounded too
            self._compiler = xgr.GrammarCompiler(info, cache_limit_bytes=64 * 2**20)
        compiled = self._grammars[ebnf] = self._compiler.compile_grammar(ebnf)
        while len(self._grammars) > self.grammar_cache_size:
            self._grammars.popitem(last=False)
        return compiled

    def _reuse_prefix(self, adapter: str, ids: tuple[int, ...]) -> Any:
        """A copy of the cache of the longest prefix ``ids`` shares with a kept prompt of ``adapter`` (at least one
        token is left to prefill), or None when none shares ``PREFIX_MIN_TOKENS``."""
        best, best_key = 0, None
        for key in self._prefixes:
            if key[0] == adapter:
                n = min(shared_prefix_len(ids, key[1]), len(ids) - 1)
                if n > best:
                    best, best_key = n, key
        if best_key is None or best < PREFIX_MIN_TOKENS:
            return None
        self._prefixes.move_to_end(best_key)
        cache = copy.deepcopy(self._prefixes[best_key])
        cache.crop(best - cache.get_seq_length())
        self.prefix_tokens_reused += best
        return cache

    def _generate(self, jobs: list[_Job]) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        schema_jobs: list[_Job] = []
        for job in jobs:
            if job.request.json_schema is not None:
                try:
                    self._grammar(job.request.json_schema)
                    schema_jobs.append(job)
                except UserError as e:
                    job.future.set_exception(e)
        jobs = [j for j in jobs if j.request.json_schema is None] + schema_jobs
        if not jobs:
            return
        self._ensure_adapters(jobs)
        tok = self.tokenizer
        prompts = [
            tok.apply_chat_template(list(j.request.messages), add_generation_prompt=True, tokenize=False) for j in jobs
        ]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_len = enc["input_ids"].shape[1]
        limits = [j.request.max_tokens for j in jobs]
        eos_ids = {tok.eos_token_id}
        gen_eos = self._model.generation_config.eos_token_id
        if isinstance(gen_eos, int):
            eos_ids.add(gen_eos)
        elif isinstance(gen_eos, list):
            eos_ids.update(gen_eos)
        ended: list[tuple[int, str] | None] = [None] * len(jobs)  # (generated tokens, reason)
        streams = [j.on_text for j in jobs]
        sent = [0] * len(jobs)

        class RowStops(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> torch.Tensor:
                gen = input_ids[:, prompt_len:]
                n = gen.shape[1]
                flags = []
                for i, job in enumerate(jobs):
                    if ended[i] is None:
                        last = int(gen[i, -1])
                        if last in eos_ids:
                            ended[i] = (n - 1, "stop")
                        else:
                            stops = job.request.stop
                            if stops or streams[i] is not None:
                                text = tok.decode(gen[i], skip_special_tokens=True)
                                if streams[i] is not None and len(text) > sent[i]:
                                    streams[i](text[sent[i] :])
                                    sent[i] = len(text)
                                if stops and any(s in text for s in stops):
                                    ended[i] = (n, "stop")
                            if ended[i] is None and n >= limits[i]:
                                ended[i] = (n, "length")
                    flags.append(ended[i] is not None)
                return torch.tensor(flags, dtype=torch.bool, device=input_ids.device)

        req = jobs[0].request
        kwargs: dict[str, Any] = {
            "max_new_tokens": max(limits),
            "pad_token_id": tok.pad_token_id,
            "stopping_criteria": StoppingCriteriaList([RowStops()]),
        }
        if req.min_tokens:  # a batch's requests share it (_serve groups by it); every end token is held back
            kwargs.update(min_new_tokens=req.min_tokens, eos_token_id=sorted(eos_ids))
        if req.temperature > 0:
            kwargs.update(do_sample=True, temperature=req.temperature, top_p=req.top_p)
            if req.seed is not None:
                torch.manual_seed(req.seed)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        # a greedy request alone is decoded with drafts copied from its prompt, verified by the model
        alone = len(jobs) == 1 and req.temperature <= 0 and not req.min_tokens and drafts_allowed(self.quantize)
        lookup = self.prompt_lookup if alone else 0
        # a greedy JSON request alone is drafted the tokens its grammar forces (keys, quotes), verified in one pass
        forced = self.grammar_drafts and alone and req.json_schema is not None
        sync: Any = None
        if req.json_schema is not None:
            import xgrammar as xgr

            grammars = [self._grammar(j.request.json_schema or {}) for j in jobs]
            if lookup or forced:
                from .prompt_lookup import GrammarSync

                sync = GrammarSync(grammars[0], prompt_len)
                kwargs["logits_processor"] = [sync]
            else:
                kwargs["logits_processor"] = [xgr.contrib.hf.LogitsProcessor(grammars)]
        drafting: Any = contextlib.nullcontext()
        draft_len = max(lookup, MAX_FORCED_DRAFT if forced else 0)
        adapter_of = jobs[0].adapter or BASE
        if draft_len:  # transformers' assisted generation, with the drafts of .grammar_drafts
            from .grammar_drafts import grammar_drafts

            kwargs["prompt_lookup_num_tokens"] = draft_len
            self.lookup_calls += bool(lookup)
            drafting = grammar_drafts(
                self._model,
                self.forced_drafts if forced else None,
                adapter_of,
                sync,
                lookup,
                prompt_len,
                not_in_prefill=self.quantize in BF16_PREFILL,
            )
        model: Any = self._model
        rows: Any = contextlib.nullcontext()
        if self._peft is not None:
            model = self._peft
            names = [j.adapter or BASE for j in jobs]
            if self._fused is not None and self._fused.supports(names):
                merged = None
                if self._merged is not None and len(set(names)) == 1 and names[0] != BASE:
                    # one adapter for every row: its decoding steps on weights with it merged in (merged_lora.py)
                    merged = self._merged.weights(names[0], self._fused.lora_layers())
                    self.merged_batches += merged is not None
                rows = self._fused.rows(names, merged)  # every row's adapter in one pass per layer (fused_lora.py)
                self.fused_batches += 1
            else:
                kwargs["adapter_names"] = names  # PEFT's mixed batch: a sub-batch per adapter per layer
        # a request generated alone (every `ask` call) starts from the cache of a prefix it shares, and leaves its own
        prefix_of = (jobs[0].adapter or BASE) if self.prefix_cache and len(jobs) == 1 else None
        assisted: Any = contextlib.nullcontext()
        if prefix_of is not None:
            kwargs["return_dict_in_generate"] = True
            ids = tuple(int(t) for t in enc["input_ids"][0])
            reused = self._reuse_prefix(prefix_of, ids)
            if reused is not None:
                kwargs[_cache_kwarg()] = reused
                if "prompt_lookup_num_tokens" in kwargs:  # assisted decoding: its first pass prefills the rest only
                    from .prompt_lookup import assisted_prefill_after

                    assisted = assisted_prefill_after(self._model)
        t0 = time.perf_counter()
        prefill: Any = contextlib.nullcontext()
        if self.quantize in BF16_PREFILL:
            from .bf16 import bf16_prefill

            # the causal LM under PEFT: generate calls it for every step; a pass verifying a draft stays fp32 as
            # one-token steps do (bf16 there would flip far more near ties than the order of additions does)
            prefill = bf16_prefill(self._model, min_tokens=draft_len + 2)
        with rows, prefill, assisted, drafting as forced_seen:
            out = model.generate(**enc, **kwargs)
        if prefix_of is not None:
            cache = getattr(out, "cache", None)  # the prompt's and the generated tokens'
            if cache is None:
                cache = getattr(out, "past_key_values", None)  # its name in older transformers
            if cache is not None:
                cache.crop(prompt_len - cache.get_seq_length())
                self._prefixes[(prefix_of, ids)] = cache
                while len(self._prefixes) > PREFIX_ENTRIES:
                    self._prefixes.popitem(last=False)
            out = out.sequences
        if forced_seen:  # the tokens the model wrote for each forced string: the next such draft
            self.forced_drafts.learn(adapter_of, tok, out[0, prompt_len:].tolist(), forced_seen)
        self.batches.append(len(jobs))
        self.batch_count += 1
        elapsed = time.perf_counter() - t0
        for i, job in enumerate(jobs):
            gen = out[i, prompt_len:]
            count, reason = ended[i] or (min(len(gen), limits[i]), "length")
            ids = gen[:count]
            text = str(tok.decode(ids, skip_special_tokens=True))
            if job.request.stop:
                cut = min((text.find(s) for s in job.request.stop if s in text), default=-1)
                if cut >= 0:
                    text, reason = text[:cut], "stop"
            parsed = None
            if job.request.json_schema is not None:
                try:
                    parsed = json.loads(text)
                except json.JSONDecodeError:
                    parsed = None  # cut by max_tokens before the JSON closed
            if streams[i] is not None:
                if len(text) > sent[i]:
                    streams[i](text[sent[i] :])
                streams[i](None)
            if self._merged is not None and job.adapter is not None:
                self._merged.count(job.adapter, int(count))  # which adapters hold merged weights
            job.future.set_result(
                GenerationResult(
                    text=text,
                    json=parsed,
                    prompt_tokens=int(enc["attention_mask"][i].sum()),
                    completion_tokens=int(count),
                    finish_reason=reason,  # type: ignore[arg-type]
                    latency_s=time.perf_counter() - job.submitted,
                    adapter=job.adapter,
                    backend=self.name,
                    request_id=job.request.request_id,
                )
            )
        log.debug("generated %d requests in %.2fs", len(jobs), elapsed)
