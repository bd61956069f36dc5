"""Choose ``agent.min_evidence_similarity`` on validation suites: how near a sentence of the passages must be to what
a question asks for the graph to answer it (below it: refused; a yes/no question: "Not mentioned").

    .venv/bin/python bench/verdicts.py --suite cuad=evals/suites/cuad-validation.yaml \\
        --suite contracts=evals/suites/contracts-validation.yaml [--max-false-refusals 0.2] [--out bench/results] \\
        [--stem verdicts] [--baseline bench/results/verdicts.json]

Each ``--suite`` is ``ROLORA_HOME=SUITE`` or ``SUITE`` (the current ``ROLORA_HOME``): the home holding the suite's
domain index. For every question the graph's own retrieval runs (``search_rankings`` + ``fuse`` of the retrieve
node, ``agent.k`` passages) and the analyst's numbered sentences are scored as the analyse node scores them
(``evidence_scores``); no model call is needed, so a threshold decides exactly as the graph will. Printed per group
(yes/no questions, other questions, all): the separation of answerable and unanswerable questions (ROC AUC), and per
threshold the refusal accuracy on unanswerable questions and the false refusals of answerable ones. Chosen, on all
questions pooled: the threshold with the highest refusal accuracy whose false refusals stay within
``--max-false-refusals`` (the adapters issue's bound: refusals of answerable questions <= 20 %). Results go to
``--out``/``--stem``.json and a PNG of both rates against the threshold. Never run it on a test split.

``--baseline`` is an earlier run's JSON over the same questions (another embedder, say): per group, the ROC AUC of
both on the questions they share and its paired difference, and refusal accuracy / false refusals each at its own
chosen threshold, with 95 % intervals from a bootstrap that resamples whole contracts (a contract's questions share
its text, so resampling questions alone would understate the spread).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from typing import Any

GROUPS = ("yes/no", "other", "all")


def score_questions(suite_path: Path, home: str | None) -> tuple[list[dict[str, Any]], Any]:
    """The nearest-sentence similarity of each question of the suite, with its group and gold verdict (every
    unanswerable question is "Not mentioned")."""
    from rich.progress import track

    from rolora.agents.nodes.analyse import analyst_request, evidence_scores
    from rolora.agents.nodes.retrieve import fuse, search_rankings
    from rolora.evals.suite import load_suite
    from rolora.retrieval import Retriever
    from rolora.roles.verdicts import gold_verdict, is_yes_no

    if home is not None:
        os.environ["ROLORA_HOME"] = home
    suite = load_suite(suite_path)
    cfg = suite.resolve_config()
    retrievers: dict[str, Any] = {}
    rows = []
    for ds, q in track(suite.load_questions(), description=suite.name):
        if ds.domain not in retrievers:
            retrievers[ds.domain] = Retriever.open(ds.domain, cfg)
        retriever = retrievers[ds.domain]
        rankings, _ = search_rankings(retriever, q.question, [q.question], [], 2 * cfg.agent.k, None)
        passages = fuse(rankings, cfg.agent.k, cfg.retrieval.rrf_k)
        _, evidence = evidence_scores(
            q.question, analyst_request(q.question, passages, None, "sentence", True), retriever
        )
        rows.append(
            {
                "suite": suite.name,
                "id": q.id,
                "doc_id": q.doc_id,
                "group": "yes/no" if is_yes_no(q.question) else "other",
                "gold": gold_verdict(q.answers, q.answerable),
                "similarity": evidence["similarity"],
            }
        )
    return rows, cfg


def auc(pos: list[float], neg: list[float]) -> float:
    """P(an answerable question scores above an unanswerable one), ties counting half."""
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg)) if pos and neg else float("nan")


def sweep(rows: list[dict[str, Any]], step: float = 0.01) -> list[dict[str, float]]:
    """Per threshold: refusal accuracy (unanswerable refused), false refusals (answerable refused), accuracy."""
    pos = [r["similarity"] if r["similarity"] is not None else -1.0 for r in rows if r["gold"] != "Not mentioned"]
    neg = [r["similarity"] if r["similarity"] is not None else -1.0 for r in rows if r["gold"] == "Not mentioned"]
    out = []
    for i in range(round(1 / step) + 1):
        t = round(i * step, 4)
        out.append(
            {
                "threshold": t,
                "refusal_accuracy": statistics.mean(s < t for s in neg) if neg else float("nan"),
                "false_refusals": statistics.mean(s < t for s in pos) if pos else float("nan"),
                "accuracy": (sum(s >= t for s in pos) + sum(s < t for s in neg)) / max(1, len(pos) + len(neg)),
            }
        )
    return out


def choose(table: list[dict[str, float]], max_false: float) -> dict[str, float]:
    """The threshold with the highest refusal accuracy whose false refusals stay within ``max_false``."""
    ok = [r for r in table if r["false_refusals"] <= max_false]
    return max(ok, key=lambda r: (r["refusal_accuracy"], -r["threshold"]))


def compare(
    rows: list[dict[str, Any]], threshold: float, base: dict[str, Any], samples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """This run (its rows, its chosen ``threshold``) against ``base`` (an earlier result at its own chosen threshold)
    on the questions both scored, per group: AUC, refusal accuracy and false refusals; differences with
    contract-resampled 95 % intervals."""
    import numpy as np

    by_id = {r["id"]: r for r in base["questions"]}
    shared = [r for r in rows if r["id"] in by_id]
    sides = {"baseline": base["chosen"]["threshold"], "this": threshold}
    out: dict[str, Any] = {"n": len(shared), "thresholds": sides, "groups": {}}
    rng = np.random.default_rng(seed)
    for group in GROUPS:
        sub = [r for r in shared if group == "all" or r["group"] == group]
        # per question: answerable?, its contract, and each side's similarity (None scores below every threshold)
        qs = [
            (
                r["gold"] != "Not mentioned",
                r["doc_id"],
                {"baseline": by_id[r["id"]]["similarity"], "this": r["similarity"]},
            )
            for r in sub
        ]
        docs = sorted({d for _, d, _ in qs})
        by_doc = {d: [q for q in qs if q[1] == d] for d in docs}

        def figures(picked: list[tuple[bool, str, dict[str, float | None]]]) -> dict[str, float]:
            fig: dict[str, float] = {}
            for side, t in sides.items():
                pos = [s[side] or -1.0 for answerable, _, s in picked if answerable]
                neg = [s[side] or -1.0 for answerable, _, s in picked if not answerable]
                fig[f"{side}_auc"] = auc(pos, neg)
                fig[f"{side}_refusal_accuracy"] = statistics.mean(x < t for x in neg) if neg else float("nan")
                fig[f"{side}_false_refusals"] = statistics.mean(x < t for x in pos) if pos else float("nan")
            return fig

        point = figures(qs)
        draws = [figures([q for d in rng.choice(docs, len(docs)) for q in by_doc[d]]) for _ in range(samples)]
        g: dict[str, Any] = {"n": len(sub), "contracts": len(docs)}
        for metric in ("auc", "refusal_accuracy", "false_refusals"):
            diffs = np.array([x[f"this_{metric}"] - x[f"baseline_{metric}"] for x in draws], dtype=float)
            low, high = np.nanquantile(diffs, [0.025, 0.975])
            g[metric] = {
                "baseline": point[f"baseline_{metric}"],
                "this": point[f"this_{metric}"],
                "delta": point[f"this_{metric}"] - point[f"baseline_{metric}"],
                "ci": [float(low), float(high)],
            }
        out["groups"][group] = g
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", action="append", required=True, help="[ROLORA_HOME=]SUITE.yaml, repeatable")
    ap.add_argument("--max-false-refusals", type=float, default=0.2)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    ap.add_argument("--stem", default="verdicts", help="file name of the JSON and PNG written under --out")
    ap.add_argument("--baseline", type=Path, help="an earlier run's JSON over the same questions, to compare with")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    for given in args.suite:
        home, _, path = given.rpartition("=")
        if "test" in Path(path).stem:
            raise SystemExit(f"{path}: thresholds are chosen on validation suites, never on a test split")
        suite_rows, cfg = score_questions(Path(path), home or None)
        rows += suite_rows
    suites = [given.rpartition("=")[2] for given in args.suite]  # not the homes: paths of this machine
    result: dict[str, Any] = {"suites": suites, "k": cfg.agent.k, "groups": {}, "questions": rows}
    for group in GROUPS:
        sub = [r for r in rows if group == "all" or r["group"] == group]
        pos = [r["similarity"] or -1.0 for r in sub if r["gold"] != "Not mentioned"]
        neg = [r["similarity"] or -1.0 for r in sub if r["gold"] == "Not mentioned"]
        if not pos or not neg:
            continue
        table = sweep(sub)
        best = choose(table, args.max_false_refusals)
        print(f"\n{group} questions: {len(pos)} answerable, {len(neg)} unanswerable")
        print(
            f"nearest-sentence cosine, median: answerable {statistics.median(pos):.3f}, "
            f"unanswerable {statistics.median(neg):.3f}; ROC AUC {auc(pos, neg):.3f}"
        )
        print("threshold | refusal acc | false refusals | accuracy")
        for r in table:
            if 0.3 <= r["threshold"] <= 0.6 and (round(r["threshold"] * 100) % 5 == 0 or r is best):
                mark = f"  <- best with false refusals <= {args.max_false_refusals}" if r is best else ""
                print(
                    f"{r['threshold']:.2f} | {r['refusal_accuracy']:.3f} | {r['false_refusals']:.3f} | "
                    f"{r['accuracy']:.3f}{mark}"
                )
        result["groups"][group] = {"best": best, "auc": auc(pos, neg), "n": [len(pos), len(neg)], "sweep": table}
    chosen = result["groups"]["all"]["best"]
    result["chosen"] = chosen
    print(f"\nchosen (all questions pooled): agent.min_evidence_similarity {chosen['threshold']:.2f}")
    print(f"(the config now: {cfg.agent.min_evidence_similarity})")
    for group in GROUPS:
        if group in result["groups"]:
            r = next(x for x in result["groups"][group]["sweep"] if x["threshold"] == chosen["threshold"])
            print(f"  {group}: refusal accuracy {r['refusal_accuracy']:.3f}, false refusals {r['false_refusals']:.3f}")
    if args.baseline is not None:
        base = json.loads(args.baseline.read_text(encoding="utf-8"))
        result["baseline"] = {"file": args.baseline.name, **compare(rows, chosen["threshold"], base)}
        th = result["baseline"]["thresholds"]
        print(
            f"\nagainst {args.baseline.name} ({result['baseline']['n']} shared questions; each at its chosen "
            f"threshold: {th['baseline']:.2f} vs {th['this']:.2f}; 95 % CI resampling contracts)"
        )
        for group, g in result["baseline"]["groups"].items():
            cells = [
                f"{m} {g[m]['baseline']:.3f} -> {g[m]['this']:.3f} ({g[m]['delta']:+.3f} "
                f"[{g[m]['ci'][0]:+.3f}, {g[m]['ci'][1]:+.3f}])"
                for m in ("auc", "refusal_accuracy", "false_refusals")
            ]
            print(f"  {group} (n={g['n']}, {g['contracts']} contracts): " + "; ".join(cells))
    json_path, png_path = args.out / f"{args.stem}.json", args.out / f"{args.stem}.png"
    json_path.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    plot(result, png_path)
    print(f"wrote {json_path} and {png_path}")


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for group, style in zip(GROUPS, (":", "--", "-"), strict=True):
        if group not in result["groups"]:
            continue
        g = result["groups"][group]
        xs = [r["threshold"] for r in g["sweep"]]
        pos, neg = g["n"]
        ax.plot(
            xs, [r["refusal_accuracy"] for r in g["sweep"]], style, color="C0", label=f"{group}: refusal acc (n={neg})"
        )
        ax.plot(
            xs, [r["false_refusals"] for r in g["sweep"]], style, color="C3", label=f"{group}: false refusals (n={pos})"
        )
    ax.axvline(result["chosen"]["threshold"], color="grey", linewidth=0.8)
    ax.set_xlim(0.2, 0.7)
    ax.set_ylim(0, 1)
    ax.set_xlabel("agent.min_evidence_similarity (cosine of the passages' nearest sentence)")
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title("Refused below the threshold (validation splits)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
