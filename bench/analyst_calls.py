"""The analyst's model calls of ``rolora ask``, replayed on backends that differ only in how they compute, side by side.

    .venv/bin/python bench/analyst_calls.py --modes none,bf16,bf16-weights [--lookup 0] [--adapter contracts-analyst]
        [--split test] [--limit N] [--out DIR]

The default graph is run once over the domain's annotated questions of ``--split`` (``doc_split``, seed 0; the example
corpus's test split by default) with the first mode's backend, and every request it sends the analyst is recorded
(the real prompts: system prompt, question, numbered passages, JSON schema). Each request is then generated on each
mode's backend (``backend.quantize`` = the mode, prefix cache off so every call prefills its whole prompt), twice,
the order of the modes reversed on the second pass, so machine noise moves every side alike. Printed per mode: the
median and total seconds a call, decoded tokens, the median of the per-call time ratios against the first mode, and
how many replies are identical to the first mode's. A mode with ``+drafts`` (``bf16+drafts``) also decodes with
grammar-forced drafts (``backend.grammar_drafts``; the others without), and its drafts and accepted tokens are printed;
one with ``+blas`` runs every float32 linear product on MKL (``backend.few_rows_onednn: false``; the others run
products of 1-64 rows on oneDNN, weights packed once); one with ``+unmerged`` applies the adapter's LoRA beside each
product in decoding steps (``backend.merged_adapters: 0``; the others, on oneDNN, decode on the weights with the LoRA
merged in, as ``rolora.yaml`` does, here from the first call: the steady state of a backend that has decoded
``merged_lora.MERGE_AFTER_TOKENS``); one with ``+separate`` runs each of the layers that share an input (q, k and v;
gate and up) as its own product (the others, on oneDNN, run each group as one: ``few_rows.share_inputs``); one with
``+unpadded`` runs products of two rows as they are (the others, on oneDNN, on three rows where the sums come out the
same: ``few_rows.padded_product``); one with ``+stock`` runs transformers' own Llama decoder layer forward (the others,
on oneDNN, pass over a few rows in fewer operations: ``llama_step.FewRowLlamaLayer``); one with ``+lookupN`` drafts
up to N tokens from the prompt (``--lookup`` for the others).
``bench/latency.py`` measures the whole graph; this isolates the model call, where ``backend.quantize`` acts.
``--openmp`` as in ``bench/latency.py`` (``ask``, the default: what ``rolora ask`` sets before torch loads).

Decoding against the memory-bandwidth bound, in the served path: each request is also generated with
``max_tokens=1`` (its prefill, timed the same way), and the model's forward passes are counted. A mode's decoding is
the calls' time less their prefills over the tokens after the first (ms/token) and over the passes after the
prefill (ms/pass: a pass verifying drafts reads the weights once for several tokens), and the model's own time in
those passes, timed by forward hooks (model's ms/pass: the rest is grammar, drafting and ``generate``). The bound is
the bytes of weights a pass reads (:func:`decoding.served_weight_bytes`: the base layers at the bytes the mode
multiplies by, the adapter's LoRA, norms) over the read bandwidth measured in the same run
(:func:`decoding.read_bandwidth_gbs`, before every request's turn and after the calls; the best read, so the stricter
bound: on these VMs the reading moves between ~33 and ~61 GB/s with the machine's state).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None, help="rolora.yaml (default: built-in, examples corpus)")
    ap.add_argument("--domain", default="contracts")
    ap.add_argument("--modes", default="none,bf16,bf16-weights", help="backend.quantize values, the first is the base")
    ap.add_argument("--lookup", type=int, default=0, help="backend.prompt_lookup of every side")
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions of --split")
    ap.add_argument("--adapter", default=None, help="the analyst adapter (default: the domain's promoted one)")
    ap.add_argument("--split", default="test", choices=["train", "validation", "test"])
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "rolora-analyst-calls")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from latency import add_openmp_option, apply_openmp_option, questions_of  # latency.py loads no torch

    add_openmp_option(ap)
    args = ap.parse_args()
    apply_openmp_option(args)
    from decoding import read_bandwidth_gbs, served_weight_bytes

    from rolora.adapters.serving import few_rows
    from rolora.adapters.serving.inprocess import _Job
    from rolora.agents import Agent, make_backend
    from rolora.config import QUANTIZE_CHOICES, load_config

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    parts = {m: m.split("+") for m in modes}
    flags = {"drafts", "blas", "unmerged", "separate", "unpadded", "stock"}

    def lookup_of(mode: str) -> int:  # +lookupN: this mode's backend.prompt_lookup (else --lookup)
        given = [int(p[6:]) for p in parts[mode][1:] if p.startswith("lookup") and p[6:].isdigit()]
        return given[-1] if given else args.lookup

    if len(modes) < 2 or any(
        p[0] not in QUANTIZE_CHOICES or {f for f in p[1:] if not f.startswith("lookup")} - flags for p in parts.values()
    ):
        raise SystemExit(f"--modes: two or more of {', '.join(QUANTIZE_CHOICES)} (each optionally +drafts, +blas, "
                         "+unmerged, +separate, +unpadded, +stock, +lookupN), comma-separated")  # fmt: skip
    cfg = load_config(args.config)
    qa_path = cfg.domain(args.domain).qa
    if qa_path is None:
        raise SystemExit(f"domain {args.domain} has no qa file (domains.{args.domain}.qa)")
    questions = questions_of(Path(qa_path), args.split, args.limit)
    backends = {
        m: make_backend(
            cfg.model_copy(
                update={
                    "backend": cfg.backend.model_copy(
                        update={
                            "quantize": parts[m][0],
                            "grammar_drafts": "drafts" in parts[m],
                            "few_rows_onednn": "blas" not in parts[m],
                            "merged_adapters": 0 if "unmerged" in parts[m] else cfg.backend.merged_adapters,
                            "prefix_cache": False,
                            "prompt_lookup": lookup_of(m),
                        }
                    )
                }
            )
        )
        for m in modes
    }
    for m, b in backends.items():
        if b._merged is not None:
            b._merged.after_tokens = 0  # the steady state: merged from the first call, not after MERGE_AFTER_TOKENS
        if "separate" in parts[m]:
            from rolora.adapters.serving.few_rows import separate_inputs

            separate_inputs(b._model)  # each of q, k, v (gate, up) its own product again
        if "stock" in parts[m]:
            from rolora.adapters.serving.llama_step import stock_llama_layers

            stock_llama_layers(b._model)  # transformers' own decoder layer forward
    first = backends[modes[0]]
    requests: list[Any] = []
    submit = first.submit

    def record(request: Any, on_text: Any = None) -> Any:
        if request.json_schema is not None:  # the analyst's calls (the only role of the default graph)
            requests.append(request)
        return submit(request, on_text)

    first.submit = record
    agent = Agent(cfg, first, adapters={"analyst": args.adapter} if args.adapter else None, checkpointer="memory")
    try:
        for q in questions:
            agent.ask(q, args.domain)
        first.submit = submit
        for b in backends.values():  # every mode starts from what the recording run's replies taught the first one
            b.forced_drafts.memory = type(first.forced_drafts.memory)(first.forced_drafts.memory)
            b.forced_drafts.drafts = b.forced_drafts.tokens = b.forced_drafts.accepted = 0
        print(f"{len(questions)} questions ({args.split} split): {len(requests)} analyst calls, each on {len(modes)} "
              "backends, twice")  # fmt: skip
        seconds: dict[str, list[float]] = {m: [] for m in modes}
        tokens: dict[str, int] = dict.fromkeys(modes, 0)
        texts: dict[str, list[str]] = {m: [] for m in modes}
        # decoding alone: the call's time less its prefill's, the tokens after the first, the passes after the prefill
        decode_s: dict[str, float] = dict.fromkeys(modes, 0.0)
        decode_tokens: dict[str, int] = dict.fromkeys(modes, 0)
        decode_passes: dict[str, int] = dict.fromkeys(modes, 0)
        forward_s: dict[str, float] = dict.fromkeys(modes, 0.0)  # the model's own time in the passes after the first
        passes = [0]
        pass_started = [0.0]
        pass_seconds: list[float] = []

        def count_pass(module: Any, args: Any) -> None:
            passes[0] += 1
            pass_started[0] = time.perf_counter()

        def time_pass(module: Any, args: Any, output: Any) -> None:
            pass_seconds.append(time.perf_counter() - pass_started[0])

        hooks = [b._model.register_forward_pre_hook(count_pass) for b in backends.values()]
        hooks += [b._model.register_forward_hook(time_pass) for b in backends.values()]
        reads = [read_bandwidth_gbs()]  # and before every request's turn: the best read is the bound's bandwidth

        padded_rows = few_rows.PADDED_ROWS

        def run(mode: str, request: Any) -> tuple[float, int, Any]:
            backend = backends[mode]
            few_rows.PADDED_ROWS = frozenset() if "unpadded" in parts[mode] else padded_rows
            job = _Job(request, concurrent.futures.Future(), time.perf_counter())
            backend._resolve(job)  # the request's adapter (the analyst's), as the backend's own worker does
            backend._ensure_adapters([job])
            before = passes[0]
            pass_seconds.clear()
            t = time.perf_counter()
            backend._generate([job])  # on this thread: no batching window, nothing else queued
            return time.perf_counter() - t, passes[0] - before, job.future.result()

        for rep in range(2):
            for request in requests:
                reads.append(read_bandwidth_gbs())
                for m in modes if rep == 0 else modes[::-1]:
                    prefill_s, prefill_passes, _ = run(m, dataclasses.replace(request, max_tokens=1))
                    elapsed, n_passes, result = run(m, request)
                    seconds[m].append(elapsed)
                    tokens[m] += result.completion_tokens
                    decode_s[m] += elapsed - prefill_s
                    decode_tokens[m] += max(0, result.completion_tokens - 1)
                    decode_passes[m] += max(0, n_passes - prefill_passes)
                    forward_s[m] += sum(pass_seconds[1:])  # every pass of the reply but its first (the prompt's)
                    if rep == 0:
                        texts[m].append(result.text)
        for hook in hooks:
            hook.remove()
        # the best of every read (before, between the calls, after): the shorter bound, the stricter ratio
        reads.append(read_bandwidth_gbs())
        bandwidth = max(reads)
        # a backend that decoded on merged weights reads no LoRA beside them
        weight_bytes = {
            m: served_weight_bytes(backends[m]._model, lora=not (backends[m]._merged and backends[m]._merged.held()))
            for m in modes
        }
    finally:
        for backend in backends.values():
            backend.close()
    base = modes[0]
    n = len(requests)
    pair = {m: [a / b for a, b in zip(seconds[m], seconds[base], strict=True)] for m in modes}
    print(f"| mode | median s a call | total s | decoded tokens | median ratio to {base} | replies identical |")
    print("|---|---|---|---|---|---|")
    summary: dict[str, Any] = {}
    for m in modes:
        same = sum(a == b for a, b in zip(texts[m], texts[base], strict=True))
        summary[m] = {
            "median_s": statistics.median(seconds[m]),
            "total_s": sum(seconds[m]),
            "tokens": tokens[m],
            "median_ratio": statistics.median(pair[m]),
            "identical": same,
            "calls": n,
        }
        fd = backends[m].forced_drafts
        summary[m]["forced_drafts"] = {"drafts": fd.drafts, "tokens": fd.tokens, "accepted": fd.accepted}
        s = summary[m]
        print(f"| {m} | {s['median_s']:.2f} | {s['total_s']:.1f} | {s['tokens']} | {s['median_ratio']:.3f} | "
              f"{same} / {n} |")  # fmt: skip
    print(f"decoding against the memory-bandwidth bound (read bandwidth {bandwidth:.1f} GB/s, the best of {len(reads)} "
          f"reads in this run, median {statistics.median(reads):.1f}; prefills subtracted):")  # fmt: skip
    print("| mode | MB a pass | bound ms | decoded tokens | passes | ms/token | x bound | ms/pass | x bound | "
          "model's ms/pass | x bound |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m in modes:
        bound_ms = weight_bytes[m] / (bandwidth * 1e9) * 1000
        per_token = decode_s[m] / max(1, decode_tokens[m]) * 1000
        per_pass = decode_s[m] / max(1, decode_passes[m]) * 1000
        model_pass = forward_s[m] / max(1, decode_passes[m]) * 1000
        summary[m]["decoding"] = {
            "weight_bytes": weight_bytes[m],
            "bandwidth_gbs": bandwidth,
            "bandwidth_reads_gbs": reads,
            "bound_ms": bound_ms,
            "seconds": decode_s[m],
            "tokens": decode_tokens[m],
            "passes": decode_passes[m],
            "ms_per_token": per_token,
            "ms_per_pass": per_pass,
            "model_ms_per_pass": model_pass,
        }
        cells = [f"{weight_bytes[m] / 1e6:.1f}", f"{bound_ms:.2f}", str(decode_tokens[m]), str(decode_passes[m])]
        cells += [f"{per_token:.2f}", f"{per_token / bound_ms:.2f}", f"{per_pass:.2f}", f"{per_pass / bound_ms:.2f}"]
        cells += [f"{model_pass:.2f}", f"{model_pass / bound_ms:.2f}"]
        print(f"| {m} | {' | '.join(cells)} |")
    print("goal: decoding within 1.5x of the bound (ms/token: what a reply waits for; ms/pass: the weights read once; "
          "model's ms/pass: the forward passes alone, timed by hooks, the reply's first pass left out)")  # fmt: skip
    for m in modes:
        if "drafts" in parts[m]:
            d = summary[m]["forced_drafts"]
            print(f"{m}: {d['drafts']} grammar-forced drafts, {d['tokens']} tokens drafted, {d['accepted']} accepted")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "analyst_calls.json").write_text(
        json.dumps(
            {
                "modes": modes,
                "lookup": args.lookup,
                "split": args.split,
                "limit": args.limit,
                "openmp": args.openmp,
                "summary": summary,
                "seconds": seconds,
            },
            indent=1,
        ),
        encoding="utf-8",
    )
    print(f"written: {args.out / 'analyst_calls.json'}")


if __name__ == "__main__":
    main()
