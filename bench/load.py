"""Load: C concurrent clients for T seconds against a real ``rolora serve api`` on loopback.

    .venv/bin/python bench/load.py [--clients 32] [--seconds 300] [--max-concurrency 4]
                                   [--agent KEY=VALUE ...] [--out DIR]

Every response must be 200, or 429 with ``Retry-After`` (the client then waits that long); nothing else. Latency
percentiles (p50/p95/p99) of accepted requests and of refusals are reported, and every accepted request's run must
be stored: each answered thread is read back through ``GET /v1/threads/{id}`` by its own key (nothing lost). The
clients alternate two tenants' keys; a second number printed is the share of refusals per tenant (fairness).
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import httpx
from api_server import KEYS, agent_settings, questions, start


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=300)
    ap.add_argument("--max-concurrency", type=int, default=4)
    ap.add_argument("--home", type=Path, default=None, help="ROLORA home with the prepared model (default: a temp one)")
    ap.add_argument(
        "--agent", action="append", default=[], metavar="KEY=VALUE", help="an agent setting, e.g. k=3 (repeatable)"
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    agent = agent_settings(args.agent)

    out, server = start(
        "rolora-load-",
        args.home,
        args.out,
        agent,
        max_concurrency=args.max_concurrency,
        tenant_max_concurrency=max(1, args.max_concurrency // 2),
    )
    pool = questions()
    keys = list(KEYS.values())
    lock = threading.Lock()
    accepted: list[tuple[str, str, float]] = []  # key, thread, seconds
    refused: list[tuple[str, float]] = []
    bad: list[str] = []
    try:
        print(f"server ready in {server.wait_ready():.1f} s", flush=True)
        deadline = time.monotonic() + args.seconds

        def client(c: int) -> None:
            key = keys[c % len(keys)]
            with httpx.Client(base_url=server.url, timeout=900) as http:
                i = 0
                while time.monotonic() < deadline:
                    thread = f"load-{c}-{i}"
                    body = {"question": pool[(c * 7 + i) % len(pool)], "thread_id": thread}
                    t0 = time.monotonic()
                    r = http.post("/v1/ask", json=body, headers={"X-API-Key": key})
                    dt = time.monotonic() - t0
                    with lock:
                        if r.status_code == 200:
                            accepted.append((key, thread, dt))
                        elif r.status_code == 429 and r.headers.get("retry-after"):
                            refused.append((key, dt))
                        else:
                            bad.append(f"{r.status_code}: {r.text[:200]}")
                    if r.status_code == 429:
                        time.sleep(float(r.headers.get("retry-after") or 1))
                    i += 1

        threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with httpx.Client(base_url=server.url, timeout=60) as http:
            lost = [
                thread
                for key, thread, _ in accepted
                if http.get(f"/v1/threads/{thread}", headers={"X-API-Key": key}).json().get("status") != "done"
            ]
    finally:
        server.stop()

    lat = [dt for _, _, dt in accepted]
    report = {
        "clients": args.clients,
        "agent": agent,
        "seconds": args.seconds,
        "max_concurrency": args.max_concurrency,
        "accepted": len(accepted),
        "refused_429": len(refused),
        "other_statuses": len(bad),
        "examples_of_other": bad[:5],
        "accepted_latency_s": {"p50": _pct(lat, 50), "p95": _pct(lat, 95), "p99": _pct(lat, 99)},
        "refusal_latency_s": {"p50": _pct([d for _, d in refused], 50), "p99": _pct([d for _, d in refused], 99)},
        "accepted_per_tenant": {k: sum(1 for key, _, _ in accepted if key == k) for k in keys},
        "accepted_without_stored_run": len(lost),
        "throughput_per_min": round(len(accepted) / args.seconds * 60, 2),
        "mean_accepted_s": round(statistics.mean(lat), 3) if lat else None,
    }
    report["ok"] = not bad and not lost
    (out / "load.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
