"""Agent-graph benchmark: orchestration overhead over N questions, as a share of the end-to-end time.

    .venv/bin/python bench/graph.py [--config rolora.yaml] [--domain contracts] [--questions 20] [--base]

Each question runs the real graph (route → retrieve → analyse → critique → finalise) with the SQLite checkpointer on
the in-process backend. Time inside backend calls (``detail.llm_s`` of each LLM step) and inside retrieval
(``detail.retrieval_s``: query embedding + FAISS + BM25) is measured by the nodes; everything else between the call
and the answer (LangGraph, checkpoint writes, state (de)serialisation, citation mapping and checks, our code) is
orchestration overhead. Goal: overhead ≤ 5 % of the end-to-end time. The baseline is the same run's own time in
the backend and the retriever, so machine noise moves both sides together.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None, help="rolora.yaml (default: built-in, examples corpus)")
    ap.add_argument("--domain", default="contracts")
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--base", action="store_true", help="every role on the base model")
    ap.add_argument("--checkpointer", default="sqlite", choices=["sqlite", "memory"])
    args = ap.parse_args()

    from rolora.adapters.data import load_qa
    from rolora.agents import ADAPTERS_BASE, Agent
    from rolora.config import load_config

    cfg = load_config(args.config)
    tmp = Path(tempfile.mkdtemp(prefix="rolora-bench-graph-"))
    cfg.agent.checkpoint_path = tmp / "runs.sqlite"
    qa_path = cfg.domain(args.domain).qa
    if qa_path is None:
        sys.exit(f"domain {args.domain} has no qa file (domains.{args.domain}.qa)")
    rows = load_qa(Path(qa_path))
    step = max(1, len(rows) // args.questions)
    questions = [r.question for r in rows[::step]][: args.questions]

    agent = Agent.from_config(cfg, adapters=ADAPTERS_BASE if args.base else None, checkpointer=args.checkpointer)
    agent.ask(questions[0], args.domain)  # warm-up: model load, grammar compiler, index load
    walls, llm, retrieval, overhead, calls = [], [], [], [], []
    try:
        for i, q in enumerate(questions, start=1):
            t0 = time.perf_counter()
            answer = agent.ask(q, args.domain)
            wall = time.perf_counter() - t0
            l_s = sum(float(s.detail.get("llm_s", 0.0)) for s in answer.trace)
            r_s = sum(float(s.detail.get("retrieval_s", 0.0)) for s in answer.trace)
            walls.append(wall)
            llm.append(l_s)
            retrieval.append(r_s)
            overhead.append(wall - l_s - r_s)
            calls.append(sum(1 for s in answer.trace if s.role))
            print(
                f"[{i:2}/{len(questions)}] {wall:6.2f}s  backend {l_s:6.2f}s  retrieval {r_s:5.2f}s  "
                f"overhead {1000 * (wall - l_s - r_s):6.1f} ms  llm calls {calls[-1]}  "
                f"{'refused' if answer.not_found else 'answered'}",
                flush=True,
            )
    finally:
        agent.close()
    total, over = sum(walls), sum(overhead)
    share = over / total
    summary = {
        "questions": len(questions),
        "end_to_end_s": round(total, 2),
        "backend_s": round(sum(llm), 2),
        "retrieval_s": round(sum(retrieval), 2),
        "overhead_s": round(over, 3),
        "overhead_share": round(share, 4),
        "overhead_ms_p50": round(1000 * statistics.median(overhead), 1),
        "llm_calls_mean": round(statistics.mean(calls), 2),
        "checkpointer": args.checkpointer,
    }
    print(json.dumps(summary, indent=1))
    print(
        f"orchestration overhead: {100 * share:.2f} % of end-to-end time (goal ≤ 5 %): "
        f"{'met' if share <= 0.05 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
