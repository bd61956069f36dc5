"""``train_role``: corpus -> role data -> LoRA (or full) training -> quality gates -> registry candidate.

This is what ``rolora train --role R --domain D`` runs; the steps are the library's own pieces, wired once here.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolora.config import Config
from rolora.errors import UserError

from .train import TrainConfig, TrainResult

__all__ = ["RoleRun", "adapter_name", "train_role"]

log = logging.getLogger("rolora.adapters")


@dataclass
class RoleRun:
    record: Any  # registry AdapterRecord
    gates: Any  # GateReport
    train: TrainResult
    data_card: Any
    role_metrics: dict[str, dict[str, float]]


def adapter_name(domain: str, role: str, full: bool = False) -> str:
    return f"{domain}-{role.replace('_', '-')}" + ("-full" if full else "")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def train_role(
    config: Config,
    domain: str,
    role: str,
    *,
    train_config: TrainConfig | None = None,
    resume: bool = False,
    qa: Path | None = None,
    limit: int | None = None,
    eval_limit: int = 40,
    probe_limit: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> RoleRun:
    """Build the role's data from the domain, train, gate, and register the result as a candidate."""
    from rolora.models import resolve_generator
    from rolora.retrieval import Retriever

    from .data import BUILDERS, BuildContext, doc_split, load_qa, save_dataset
    from .gates import GateThresholds, load_probe_texts, run_gates
    from .registry import Registry
    from .role_eval import ROLE_METRIC, role_metrics
    from .serving.base import DirectoryAdapters
    from .serving.inprocess import InProcessBackend
    from .train import train

    if role not in BUILDERS:
        raise UserError(f"role '{role}' has no data builder; use one of {', '.join(sorted(BUILDERS))}")
    cfg = train_config or TrainConfig()
    dom = config.domain(domain)
    qa_path = qa or dom.qa
    if qa_path is None:
        raise UserError(f"domain '{domain}' has no annotated questions: pass --qa FILE or set domains.{domain}.qa")
    base_dir = resolve_generator(config.models.generator, config.home_dir)
    retriever = Retriever.open(domain, config)
    retriever.stats()  # refuses early, with the ingest command, when the domain has no index
    home = config.home_dir
    data_dir = home / "data" / domain / role
    rows = load_qa(Path(qa_path))
    ctx = BuildContext(retriever, rows, seed=seed, limit=limit, progress=progress)
    ctx.extra["clause_docs"] = sorted({q.doc_id for q in rows})
    splits = BUILDERS[role]().build(ctx, lambda d: doc_split(d, seed))
    card = save_dataset(data_dir, role, domain, seed, splits, str(qa_path))
    log.info("data for %s/%s: %s", domain, role, card.counts)

    run_dir = home / "runs" / adapter_name(domain, role, cfg.full)
    result = train(base_dir, data_dir, run_dir, cfg, resume=resume, progress=progress)

    test_rows = _rows(data_dir / "test.jsonl")[:eval_limit]
    metrics: dict[str, dict[str, float]] = {}
    if cfg.full:
        tuned = InProcessBackend(Path(result.output))
        base = InProcessBackend(base_dir)
        try:
            metrics["tuned"] = role_metrics(role, tuned, None, test_rows, retriever)
            metrics["base"] = role_metrics(role, base, None, test_rows, retriever)
        finally:
            tuned.close()
            base.close()
    else:
        staging = run_dir / "staging"
        staging.mkdir(exist_ok=True)
        link = staging / "candidate@1"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path(result.output).resolve(), target_is_directory=True)
        backend = InProcessBackend(base_dir, DirectoryAdapters(staging))
        try:
            metrics["tuned"] = role_metrics(role, backend, "candidate@1", test_rows, retriever)
            metrics["base"] = role_metrics(role, backend, None, test_rows, retriever)
        finally:
            backend.close()
    key = ROLE_METRIC[role]
    val = [r["prompt"] + r["completion"] for r in _rows(data_dir / "validation.jsonl")][:eval_limit]
    report = run_gates(
        base_dir,
        result.output,
        val,
        load_probe_texts(limit=probe_limit),
        (key, metrics["tuned"].get(key, 0.0), metrics["base"].get(key, 0.0)),
        GateThresholds.model_validate(config.gates.model_dump()),
    )
    registry = Registry.from_config(config, base_dir)
    record = registry.register(
        result.output,
        adapter_name(domain, role, cfg.full),
        role,
        domain,
        base_dir,
        card.digest,
        cfg.model_dump(mode="json"),
        {"train": result.to_json(), "role": metrics},
    )
    record = registry.record_gates(record.ref, report)
    return RoleRun(record, report, result, card, metrics)
