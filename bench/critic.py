"""The critique step on held-out perturbations: how often it gets a draft's verdict right, and how many correct
drafts it rejects — its deterministic checks, the critic model (base or adapter), and both as the graph runs them.

    .venv/bin/python bench/critic.py --domain contracts [--split test] [--adapter contracts-critic@1] [--out DIR]

The rows are the critic's own data (``rolora.adapters.data``'s critic builder, built here the way ``rolora train
--role critic`` builds it: seed 0, ``--distractors`` / ``--generated`` as given): a good cited answer of each question
of the split's contracts (gold verdict "supported") and perturbations of it whose labels are known — a changed
number, a citation moved to another passage, another contract's answer ("unsupported"), an answer with an
unsupported addition ("partial"). The split's contracts were never trained on (``doc_split``; never tune anything on
``--split test``).

Configurations: ``checks`` — the critique node's deterministic stage (``rolora.agents.citations.draft_problem``:
each citation mapped to its span and verified against the source, then the answer's words and numbers against its
verified quotes); it says "unsupported" or lets the draft through ("supported"). ``base`` / the ``--adapter`` — the
critic model's verdict alone, as ``role_metrics`` scores it. ``checks+base`` / ``checks+ADAPTER`` — the graph with
``agent.use_critic: true``: the checks first, the model only on drafts they let through. Printed per configuration,
with 95 % bootstrap intervals: verdict accuracy (three classes), accept/reject accuracy ("supported" or not — the
graph sends back only "unsupported"), the share of correct drafts rejected, and accuracy per perturbation kind;
paired differences against ``checks``. Results go to ``--out``/critic.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

KINDS = ("supported", "perturb:number", "perturb:citation", "perturb:outside", "perturb:partial")


def critic_rows(config: Any, domain: str, split: str, distractors: int, generated: int) -> tuple[list[Any], Any]:
    """The critic builder's rows of ``split`` (dicts as ``rolora train`` saves them) and the domain's retriever."""
    from rolora.adapters.data import BuildContext, build_role_splits, load_qa
    from rolora.retrieval import Retriever

    dom = config.domain(domain)
    if dom.qa is None:
        raise SystemExit(f"domain '{domain}' has no annotated questions (domains.{domain}.qa)")
    retriever = Retriever.open(domain, config)
    qa = load_qa(Path(dom.qa))
    ctx = BuildContext(retriever, qa, seed=0, distractors=distractors, generated_per_document=generated)
    built = build_role_splits("critic", ctx)[split]
    rows = [{"prompt": e.prompt, "completion": e.completion, "source": e.source, "meta": e.meta} for e in built]
    return rows, retriever


def check_verdicts(rows: list[dict[str, Any]], retriever: Any) -> list[str]:
    """The critique node's deterministic verdict of each row's draft: "unsupported" or "supported" (let through)."""
    from rolora.agents.citations import draft_problem
    from rolora.agents.nodes.critique import MIN_SUPPORT
    from rolora.agents.types import PassageRef

    out = []
    for r in rows:
        passages = [
            PassageRef(doc_id=d, start=s, end=e, text=retriever.document_text(d)[s:e])
            for d, s, e in r["meta"]["passages"]
        ]
        problem = draft_problem(r["meta"]["draft"], passages, retriever.document_text, MIN_SUPPORT)
        out.append("unsupported" if problem else "supported")
    return out


def scores(pred: list[str | None], rows: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-row 0/1 values of each metric (None where a row does not count for it)."""
    gold = [r["meta"]["verdict"] for r in rows]
    return {
        "verdict_accuracy": [float(p == g) for p, g in zip(pred, gold, strict=True)],
        "accept_reject_accuracy": [
            float((p == "supported") == (g == "supported")) for p, g in zip(pred, gold, strict=True)
        ],
        "false_rejection": [
            float(p != "supported") if g == "supported" else None for p, g in zip(pred, gold, strict=True)
        ],
        **{
            f"accuracy {kind}": [
                float(p == g) if r["source"] == kind else None for p, g, r in zip(pred, gold, rows, strict=True)
            ]
            for kind in KINDS
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--domain", default=None)
    ap.add_argument("--split", choices=("validation", "test"), default="test")
    ap.add_argument("--adapter", action="append", default=[], help="a critic adapter (name@version); repeatable")
    ap.add_argument("--no-base", action="store_true", help="skip the base model's critic")
    ap.add_argument("--distractors", type=int, default=2)
    ap.add_argument("--generated", type=int, default=40)
    ap.add_argument("--limit", type=int, default=None, help="the first N rows only (a quick look)")
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()

    from rolora.adapters.role_eval import role_replies
    from rolora.agents import make_backend
    from rolora.config import load_config
    from rolora.evals.bootstrap import bootstrap_mean, paired_bootstrap

    config = load_config(args.config)
    domain = config.default_domain(args.domain)
    rows, retriever = critic_rows(config, domain, args.split, args.distractors, args.generated)
    rows = rows[: args.limit] if args.limit else rows
    checks = check_verdicts(rows, retriever)
    preds: dict[str, list[str | None]] = {"checks": list(checks)}
    models = ([] if args.no_base else ["base"]) + list(args.adapter)
    if models:
        backend = make_backend(config)
        try:
            for name in models:
                replies = role_replies("critic", backend, None if name == "base" else name, rows)
                alone: list[str | None] = [(r or {}).get("verdict") for r in replies]
                preds[name] = alone
                preds[f"checks+{name}"] = [v if c == "supported" else c for c, v in zip(checks, alone, strict=True)]
        finally:
            backend.close()

    n_kind = {k: sum(r["source"] == k for r in rows) for k in KINDS}
    print(f"== the critique step on {len(rows)} {args.split} rows of '{domain}' ({n_kind})")
    ref = scores(preds["checks"], rows)
    result: dict[str, Any] = {"split": args.split, "domain": domain, "rows": len(rows), "kinds": n_kind, "configs": {}}
    for name, pred in preds.items():
        values = scores(pred, rows)
        result["configs"][name] = {}
        print(f"-- {name}")
        for metric, vals in values.items():
            ci = bootstrap_mean(vals)
            line = f"  {metric:<26} {ci.mean:.3f} [{ci.low:.3f}, {ci.high:.3f}] (n = {ci.n})"
            entry = {"mean": ci.mean, "low": ci.low, "high": ci.high, "n": ci.n}
            if name != "checks" and not metric.startswith("accuracy "):
                d = paired_bootstrap(ref[metric], vals)
                line += f"   vs checks {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
                entry["delta_vs_checks"] = {"mean": d.mean, "low": d.low, "high": d.high}
            result["configs"][name][metric] = entry
            print(line)
    print("  goal (adapters issue): verdict accuracy >= 0.85, false rejections <= 0.10")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "critic.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  wrote {path}")


if __name__ == "__main__":
    main()
