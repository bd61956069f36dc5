"""Soak: N questions through a real ``rolora serve api`` (in-process backend, loopback), the server's RSS sampled
every ``--every`` questions; after warm-up, RSS growth must stay ≤ 5 % (caches bounded, runs pruned).

    .venv/bin/python bench/soak.py [--questions 1000] [--every 50] [--warmup 0.2] [--concurrency 2]
                                   [--agent KEY=VALUE ...] [--out DIR]

The questions cycle through the sample corpus's questions (each a new thread; both tenants) and some off-topic
ones; every 10th question reuses an earlier thread id (a new question on an old thread). The baseline is the RSS
measured after the warm-up share of the questions, in the same run. Writes ``soak.json`` and ``soak.png``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import time
from pathlib import Path

import httpx
from api_server import KEYS, agent_settings, questions, rss_mb, start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", type=int, default=1000)
    ap.add_argument("--every", type=int, default=50, help="sample RSS every N questions")
    ap.add_argument("--warmup", type=float, default=0.2, help="share of the questions before the baseline sample")
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--home", type=Path, default=None, help="ROLORA home with the prepared model (default: a temp one)")
    ap.add_argument(
        "--agent", action="append", default=[], metavar="KEY=VALUE", help="an agent setting, e.g. k=3 (repeatable)"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    agent = agent_settings(args.agent)

    out, server = start("rolora-soak-", args.home, args.out, agent, max_concurrency=max(4, args.concurrency))
    pool = questions()
    keys = list(KEYS.values())
    samples: list[tuple[int, float]] = []
    statuses: dict[int, int] = {}
    try:
        print(f"server ready in {server.wait_ready():.1f} s; RSS {rss_mb(server.pid):.0f} MB", flush=True)
        samples.append((0, rss_mb(server.pid)))
        t0 = time.monotonic()

        def ask(i: int) -> int:
            thread = f"soak-{i // 10 * 10}" if i % 10 == 9 else f"soak-{i}"
            body = {"question": pool[i % len(pool)], "thread_id": thread}
            r = http.post("/v1/ask", json=body, headers={"X-API-Key": keys[i % len(keys)]})
            return r.status_code

        with (
            httpx.Client(base_url=server.url, timeout=900) as http,
            concurrent.futures.ThreadPoolExecutor(args.concurrency) as ex,
        ):
            for first in range(0, args.questions, args.every):
                batch = range(first, min(first + args.every, args.questions))
                for status in ex.map(ask, batch):
                    statuses[status] = statuses.get(status, 0) + 1
                samples.append((batch[-1] + 1, rss_mb(server.pid)))
                print(
                    f"{batch[-1] + 1:>5} questions  RSS {samples[-1][1]:7.1f} MB  {time.monotonic() - t0:7.0f} s",
                    flush=True,
                )
    finally:
        server.stop()

    warm = min(samples, key=lambda s: abs(s[0] - args.warmup * args.questions))
    last = samples[-1]
    growth = (last[1] - warm[1]) / warm[1] * 100
    report = {
        "questions": args.questions,
        "concurrency": args.concurrency,
        "agent": agent,
        "statuses": statuses,
        "samples": samples,
        "baseline": {"after_questions": warm[0], "rss_mb": warm[1]},
        "final_rss_mb": last[1],
        "growth_pct_after_warmup": round(growth, 2),
        "goal_pct": 5.0,
        "met": growth <= 5.0,
    }
    (out / "soak.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    _plot(samples, warm, out / "soak.png")
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))


def _plot(samples: list[tuple[int, float]], warm: tuple[int, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([s[0] for s in samples], [s[1] for s in samples], marker="o")
    ax.axhline(warm[1] * 1.05, color="red", linestyle="--", label="baseline + 5 %")
    ax.axvline(warm[0], color="grey", linestyle=":", label="end of warm-up")
    ax.set_xlabel("questions answered")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title("rolora serve api: resident memory over a soak")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
