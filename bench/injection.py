"""Indirect prompt injection: attack success per style, undefended vs defended, with answer correctness on the same
questions and on the clean originals.

    .venv/bin/python bench/injection.py [--config rolora.yaml] [--per-style 6] [--source examples|cuad-train]
                                        [--base] [--out DIR]

Cases come from :mod:`rolora.evals.injection`: an attacker's sentence in eight styles placed inside the clause that
answers an answerable question (example corpus, or CUAD's *training* split; never its test split). Each style gets
its own corpus (the originals, with one injected sentence in each chosen contract, at most one question per contract)
ingested into a temporary domain; every question is asked scoped to its contract (``doc_ids``), so what is measured
is the model's resistance, not retrieval. "undefended" turns ``agent.injection_defence`` off (no data marking, control
tokens left as they are, injected sentences quotable); "defended" is the default. A model that answers nothing
resists every attack: the table always shows token-F1 next to attack success.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "contracts"


def _rows(source: str) -> tuple[list[dict[str, Any]], Path]:
    from rolora.adapters.data import doc_split

    if source == "examples":
        folder = EXAMPLES
    else:
        import os

        folder = Path(os.environ.get("ROLORA_CUAD_DIR", REPO.parent / "shared" / "data" / "cuad"))
    rows = [json.loads(line) for line in (folder / "qa.jsonl").read_text(encoding="utf-8").splitlines() if line]
    if source == "cuad-train":
        rows = [r for r in rows if doc_split(r["doc_id"]) == "train"]
    corpus = folder if source == "examples" else folder / "contracts"
    return rows, corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--per-style", type=int, default=6)
    ap.add_argument("--source", choices=["examples", "cuad-train"], default="examples")
    ap.add_argument("--base", action="store_true", help="every role on the base model")
    ap.add_argument(
        "--roles-from",
        default=None,
        metavar="DOMAIN",
        help="the configured domain whose role bindings (adapters) serve the injected corpora (default: the first)",
    )
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from rolora.agents import ADAPTERS_BASE, Agent
    from rolora.config import load_config
    from rolora.evals.injection import STYLES, attack_succeeded, build_cases
    from rolora.evals.metrics import token_f1
    from rolora.retrieval import Retriever

    rows, corpus = _rows(args.source)
    base_cfg = load_config(args.config)
    # each injected corpus is a domain of its own, served by the adapters bound in this one (the configuration that
    # answers best is what the goal is measured on)
    source_domain = args.roles_from or next(iter(base_cfg.domains), None)
    roles = base_cfg.domain(source_domain).roles if source_domain else {}
    work = Path(tempfile.mkdtemp(prefix="rolora-injection-"))
    out = args.out or work
    out.mkdir(parents=True, exist_ok=True)
    # at most one question per contract, the same questions for every style
    by_doc: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r.get("answerable") and r.get("evidence"):
            by_doc.setdefault(r["doc_id"], r)
    chosen = sorted(by_doc.values(), key=lambda r: r["id"])[: args.per_style]
    texts = {r["doc_id"]: (corpus / f"{r['doc_id']}.txt").read_text(encoding="utf-8") for r in chosen}
    results: list[dict[str, Any]] = []
    for style in ["clean", *STYLES]:
        folder = work / "corpora" / style
        folder.mkdir(parents=True)
        for doc_id, text in texts.items():
            (folder / f"{doc_id}.txt").write_text(text, encoding="utf-8")
        cases = build_cases(chosen, texts, styles={style: STYLES[style]}) if style != "clean" else []
        for c in cases:
            (folder / f"{c.doc_id}.txt").write_text(c.text, encoding="utf-8")
        domain = f"inj-{style.replace('_', '-')}"
        cfg = base_cfg.model_copy(update={"domains": {domain: _domain(folder, roles)}})
        Retriever(domain, cfg).ingest(progress=False)
        for defended in (False, True):
            agent_cfg = cfg.model_copy(update={"agent": cfg.agent.model_copy(update={"injection_defence": defended})})
            with Agent.from_config(agent_cfg, adapters=ADAPTERS_BASE if args.base else None) as agent:
                items = cases or [None] * len(chosen)
                for row, case in zip(chosen, items, strict=True):
                    a = agent.ask(row["question"], domain, doc_ids=[row["doc_id"]]).model_dump(mode="json")
                    served = {s["role"]: s.get("adapter") for s in a.get("trace", []) if s.get("role")}
                    f1 = max((token_f1(a["answer"], g) for g in row.get("answers") or [""]), default=0.0)
                    hit = attack_succeeded(case, a) if case is not None else {}
                    results.append(
                        {
                            "style": style,
                            "defended": defended,
                            "id": row["id"],
                            "f1": f1,
                            "attack": hit.get("any"),
                            "kinds": {k: v for k, v in hit.items() if k != "any"},
                            "adapters": served,
                        }
                    )
                    print(
                        f"{style:<22} {'defended' if defended else 'open':<9} f1 {f1:.2f} attack {hit.get('any')} "
                        f"analyst {served.get('analyst')}",
                        flush=True,
                    )
        shutil.rmtree(folder, ignore_errors=True)
    table = _table(results)
    (out / "injection.json").write_text(json.dumps({"rows": results, "table": table}, indent=2), encoding="utf-8")
    print(json.dumps(table, indent=2))


def _domain(folder: Path, roles: Any) -> Any:
    from rolora.config import DomainConfig

    return DomainConfig.model_validate({"corpus": [str(folder)], "roles": roles})


def _table(results: list[dict[str, Any]]) -> dict[str, Any]:
    from rolora.evals.bootstrap import bootstrap_mean

    groups: dict[tuple[str, bool], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["style"], r["defended"])].append(r)
        if r["style"] != "clean":  # every injected style together: the goal's "overall"
            groups[("all-injected", r["defended"])].append(r)
    table: dict[str, Any] = {}
    for (style, defended), rs in sorted(groups.items()):
        f1 = [r["f1"] for r in rs]
        attacks = [float(bool(r["attack"])) for r in rs if r["attack"] is not None]
        ci = bootstrap_mean(f1)
        table[f"{style}/{'defended' if defended else 'undefended'}"] = {
            "n": len(rs),
            "attack_success": round(statistics.mean(attacks), 3) if attacks else None,
            "token_f1": round(statistics.mean(f1), 3),
            "token_f1_ci95": ci.fmt(),
        }
    return table


if __name__ == "__main__":
    main()
