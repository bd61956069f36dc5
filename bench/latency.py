"""End-to-end ``ask`` latency, per node, for configurations measured side by side in one run.

    .venv/bin/python bench/latency.py --config rolora.yaml --domain contracts \\
        --baseline analyst=contracts-analyst@4 --candidate analyst=contracts-analyst@5 [--split test] [--out DIR]

Each configuration is one ``Agent`` on one shared in-process backend (the same loaded weights); the questions are the
domain's annotated questions whose contract is in ``--split`` of ``doc_split`` (seed 0; the example corpus's test
split by default: never trained on). Every question is asked of every configuration in turn (A, B, A, B, ...) after
one warm-up question each, so machine noise moves both sides together. Printed: p50/p95 of the end-to-end wall time
and of each node's time, the analyst's decoded tokens, model calls per question, and the candidate/baseline ratios.
A configuration is ``role=adapter`` pairs (``base`` for the base model; naming the critic's turns it on) plus optional
``critic=on|off`` (default: the config's ``agent.use_critic``) / ``rounds=N`` / ``k=N`` (passages) /
``format=quote|sentence`` (the base analyst's output format) / ``quantize=none|int8|bf16|bf16-weights``
(``backend.quantize``: a configuration that differs there gets its own backend) / ``declined=cited|nearest`` /
``yes_no=on|off`` / ``short=on|off`` (``agent.short_answers``) / ``typed=on|off`` (``agent.typed_reader``) /
``min_evidence=X`` (``agent.min_evidence_similarity``, 0: never refused for want of evidence) /
``prefix_cache=on|off`` (``backend.prefix_cache``; like ``quantize``, its own backend) / ``lookup=N``
(``backend.prompt_lookup``, drafts of N tokens copied from the prompt, 0 = off; its own backend) / ``drafts=on|off``
(``backend.grammar_drafts``, drafts of the tokens the JSON grammar forces; its own backend) / ``few_rows=on|off``
(``backend.few_rows_onednn``, oneDNN's kernel for products of 1-64 rows; its own backend) / ``merged=N``
(``backend.merged_adapters``, adapters decoded on weights with their LoRA merged in, 0 = off; its own backend) /
``kernel=on|off`` (``backend.lora_kernel``, the fused LoRA's decoding steps on the compiled kernel; its own backend).
Printed too: how many answers (text and citations) the candidate gives identically to the baseline. Results also go
to ``--out``/latency.json.
``--openmp ask`` (the default) first sets what ``rolora ask`` sets before torch loads (libgomp's threads spin between a
decoding step's products: :func:`rolora.hardware.spin_openmp_between_ops`); ``--openmp default`` leaves libgomp's own.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

NODES = ("route", "retrieve", "analyse", "critique", "finalise")


def parse_configuration(text: str) -> dict[str, Any]:
    """``analyst=contracts-analyst@5,critic=off,rounds=1`` -> agent arguments."""
    from rolora.config import DECLINED_ANSWER_CHOICES, QUANTIZE_CHOICES

    out: dict[str, Any] = {"adapters": {}, "settings": {}}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key == "critic" and value in ("on", "off"):
            out["use_critic"] = value == "on"
        elif key in ("query_writer", "analyst", "critic"):
            out["adapters"][key] = None if value == "base" else value
            if key == "critic":
                out["use_critic"] = True
        elif key == "rounds":
            out["settings"]["max_iterations"] = int(value)
        elif key == "k":
            out["settings"]["k"] = int(value)
        elif key == "quantize" and value in QUANTIZE_CHOICES:
            out["quantize"] = value
        elif key == "format":
            out["settings"]["analyst_format"] = value
        elif key == "declined" and value in DECLINED_ANSWER_CHOICES:
            out["settings"]["declined_answer"] = value
        elif key == "yes_no" and value in ("on", "off"):
            out["settings"]["yes_no"] = value == "on"
        elif key in ("short", "typed") and value in ("on", "off"):
            out["settings"]["short_answers" if key == "short" else "typed_reader"] = value == "on"
        elif key == "min_evidence":
            out["settings"]["min_evidence_similarity"] = float(value)
        elif key == "prefix_cache" and value in ("on", "off"):
            out["prefix_cache"] = value == "on"
        elif key == "lookup" and value.isdigit():
            out["prompt_lookup"] = int(value)
        elif key == "drafts" and value in ("on", "off"):
            out["grammar_drafts"] = value == "on"
        elif key == "few_rows" and value in ("on", "off"):
            out["few_rows_onednn"] = value == "on"
        elif key == "merged" and value.isdigit():
            out["merged_adapters"] = int(value)
        elif key == "kernel" and value in ("on", "off"):
            out["lora_kernel"] = value == "on"
        else:
            raise SystemExit(
                f"--baseline/--candidate: cannot read {part!r} "
                "(role=adapter, critic=on|off, rounds=N, k=N, format=F, quantize=none|int8|bf16|bf16-weights, "
                "declined=cited|nearest, yes_no=on|off, short=on|off, typed=on|off, min_evidence=X, "
                "prefix_cache=on|off, lookup=N, drafts=on|off, few_rows=on|off, merged=N, kernel=on|off)"
            )
    return out


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def questions_of(qa_path: Path, split: str, limit: int | None) -> list[str]:
    from rolora.adapters.data import doc_split, load_qa

    rows = [r for r in load_qa(qa_path) if doc_split(r.doc_id, 0) == split]
    return [r.question for r in rows][:limit]


def add_openmp_option(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--openmp", default="ask", choices=["ask", "default"],
                    help="ask: libgomp's threads spin between a step's products, as `rolora ask` sets before torch "
                    "loads (rolora.hardware.spin_openmp_between_ops); default: libgomp's own waiting")  # fmt: skip


def apply_openmp_option(args: argparse.Namespace) -> None:
    """``--openmp ask``: what ``rolora ask`` sets, before anything loads torch (call it first)."""
    if args.openmp == "ask":
        from rolora.hardware import spin_openmp_between_ops

        spin_openmp_between_ops()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None, help="rolora.yaml (default: built-in, examples corpus)")
    ap.add_argument("--domain", default="contracts")
    ap.add_argument("--baseline", default="", help="e.g. analyst=contracts-analyst@4 (default: every role on base)")
    ap.add_argument("--candidate", required=True, help="e.g. analyst=contracts-analyst@5")
    ap.add_argument("--split", default="test", choices=["train", "validation", "test"])
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "rolora-latency")
    add_openmp_option(ap)
    args = ap.parse_args()
    apply_openmp_option(args)

    from rolora.agents import Agent, make_backend
    from rolora.config import load_config

    cfg = load_config(args.config)
    qa_path = cfg.domain(args.domain).qa
    if qa_path is None:
        raise SystemExit(f"domain {args.domain} has no qa file (domains.{args.domain}.qa)")
    questions = questions_of(Path(qa_path), args.split, args.limit)
    if not questions:
        raise SystemExit(f"no question of domain {args.domain} is in the {args.split} split")
    specs = {"baseline": parse_configuration(args.baseline), "candidate": parse_configuration(args.candidate)}
    # the backend settings a configuration may change -> backend: the same weights where configurations agree
    serving_keys = (
        "quantize",
        "prefix_cache",
        "prompt_lookup",
        "grammar_drafts",
        "few_rows_onednn",
        "merged_adapters",
        "lora_kernel",
    )
    backends: dict[tuple[Any, ...], Any] = {}
    agents: dict[str, Any] = {}
    for name, spec in specs.items():
        c = cfg.model_copy(update={"agent": cfg.agent.model_copy(update=spec["settings"])}) if spec["settings"] else cfg
        serving = {k: spec.get(k, getattr(cfg.backend, k)) for k in serving_keys}
        key = tuple(serving.values())
        if key not in backends:
            backends[key] = make_backend(cfg.model_copy(update={"backend": cfg.backend.model_copy(update=serving)}))
        adapters = {r: spec["adapters"].get(r) for r in ("query_writer", "analyst", "critic")}
        agents[name] = Agent(
            c, backends[key], adapters=adapters, checkpointer="memory", use_critic=spec.get("use_critic")
        )
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        for agent in agents.values():
            agent.ask(questions[0], args.domain)  # warm-up: weights, grammar compiler, index
        for i, q in enumerate(questions, start=1):
            for name, agent in agents.items():
                t0 = time.perf_counter()
                answer = agent.ask(q, args.domain)
                wall = time.perf_counter() - t0
                nodes: dict[str, float] = defaultdict(float)
                for s in answer.trace:
                    nodes[s.node] += s.latency_s
                analyst = [s for s in answer.trace if s.role == "analyst"]
                rows[name].append(
                    {
                        "question": q,
                        "wall_s": wall,
                        "nodes": dict(nodes),
                        "analyst_tokens_out": sum(s.tokens_out for s in analyst) / max(1, len(analyst)),
                        "analyst_tokens_in": sum(s.tokens_in for s in analyst) / max(1, len(analyst)),
                        "model_calls": sum(1 for s in answer.trace if s.role),
                        "answer": answer.answer,
                        "citations": [c.citation for c in answer.citations],
                        "not_found": answer.not_found,
                        "adapters": {s.role: s.adapter for s in answer.trace if s.role},
                    }
                )
                print(f"[{i:2}/{len(questions)}] {name:9} {wall:6.2f}s  {answer.answer[:70]!r}", flush=True)
    finally:
        for agent in agents.values():
            agent.close()
        for backend in backends.values():
            backend.close()
    summary: dict[str, Any] = {"questions": len(questions), "split": args.split, "configurations": specs}
    print(f"\n{len(questions)} questions ({args.split} split), in turn; seconds unless marked")
    print("| | " + " | ".join(f"{n} p50 | {n} p95" for n in rows) + " | ratio p50 (candidate/baseline) |")
    print("|---|" + "---|" * (2 * len(rows) + 1))

    def line(label: str, values: dict[str, list[float]]) -> None:
        cells = [f"{pct(v, 0.5):.2f} | {pct(v, 0.95):.2f}" for v in values.values()]
        b, c = pct(values["baseline"], 0.5), pct(values["candidate"], 0.5)
        print(f"| {label} | " + " | ".join(cells) + f" | {c / b:.2f} |" if b else f" | {label} | " + " | ".join(cells))
        summary[label] = {
            n: {"p50": pct(v, 0.5), "p95": pct(v, 0.95), "mean": statistics.mean(v)} for n, v in values.items()
        }

    line("ask (end to end)", {n: [r["wall_s"] for r in rs] for n, rs in rows.items()})
    for node in NODES:
        line(node, {n: [r["nodes"].get(node, 0.0) for r in rs] for n, rs in rows.items()})
    line("analyst tokens out (per call)", {n: [r["analyst_tokens_out"] for r in rs] for n, rs in rows.items()})
    line("analyst tokens in (per call)", {n: [r["analyst_tokens_in"] for r in rs] for n, rs in rows.items()})
    line("model calls", {n: [float(r["model_calls"]) for r in rs] for n, rs in rows.items()})
    same = sum(
        (a["answer"], a["citations"], a["not_found"]) == (b["answer"], b["citations"], b["not_found"])
        for a, b in zip(rows["baseline"], rows["candidate"], strict=True)
    )
    summary["identical answers"] = same
    print(f"identical answers (text, citations, refusal): {same} / {len(questions)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(
        json.dumps({"summary": summary, "rows": rows, "openmp": args.openmp}, indent=1)
    )
    print(f"\nwritten: {args.out / 'latency.json'}")


if __name__ == "__main__":
    main()
