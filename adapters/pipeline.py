"""``train_role``: corpus -> role data -> LoRA (or full) training -> quality gates -> registry candidate.

This is what ``rolora train --role R --domain D`` runs; the steps are the library's own pieces, wired once here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rolora.config import Config
from rolora.errors import UserError

from .train import RoleEval, TrainConfig, TrainResult

__all__ = ["RoleRun", "adapter_name", "regate", "role_scorer", "train_role"]

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
    eval_limit: int | None = None,
    probe_limit: int | None = None,
    seed: int = 0,
    oracle_rate: float = 0.8,
    max_refusal_share: float | None = 0.25,
    distractors: int = 3,
    generated_per_document: int = 40,
    analyst_format: str = "quote",
    progress: bool = True,
) -> RoleRun:
    """Build the role's data from the domain, train, gate, and register the result as a candidate."""
    from rolora.models import resolve_generator
    from rolora.retrieval import Retriever

    from .data import BUILDERS, BuildContext, build_role_splits, load_qa, save_dataset
    from .registry import Registry
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
    ctx = BuildContext(
        retriever,
        rows,
        seed=seed,
        limit=limit,
        oracle_rate=oracle_rate,
        max_refusal_share=max_refusal_share,
        distractors=distractors,
        generated_per_document=generated_per_document,
        analyst_format=analyst_format,
        progress=progress,
    )
    splits = build_role_splits(role, ctx)
    card = save_dataset(data_dir, role, domain, seed, splits, str(qa_path))
    log.info("data for %s/%s: %s", domain, role, card.counts)

    run_dir = home / "runs" / adapter_name(domain, role, cfg.full)
    val_rows = _rows(data_dir / "validation.jsonl")[: cfg.role_eval_rows]
    role_eval = None
    if val_rows and not cfg.full:
        from .scoring import load_probe_texts

        probe = load_probe_texts(limit=cfg.role_eval_probe_texts) if cfg.role_eval_probe_texts != 0 else []
        role_eval = role_scorer(role, base_dir, val_rows, retriever, probe, config.gates.max_forgetting_pct)
    result = train(base_dir, data_dir, run_dir, cfg, resume=resume, progress=progress, role_eval=role_eval)

    metrics, report = _evaluate(
        config,
        role,
        base_dir,
        Path(result.output),
        cfg.full,
        data_dir,
        run_dir,
        retriever,
        eval_limit or config.gates.eval_limit,
        probe_limit,
    )
    registry = Registry.from_config(config, base_dir)
    record = registry.register(
        result.output,
        adapter_name(domain, role, cfg.full),
        role,
        domain,
        base_dir,
        card.digest,
        # the analyst's output format belongs to the adapter: the graph asks it in the format it learned
        {**cfg.model_dump(mode="json"), **({"analyst_format": analyst_format} if role == "analyst" else {})},
        {"train": result.to_json(), "role": metrics},
    )
    record = registry.record_gates(record.ref, report)
    return RoleRun(record, report, result, card, metrics)


def role_scorer(
    role: str,
    base_dir: Path,
    rows: list[dict[str, Any]],
    retriever: Any,
    probe_texts: Sequence[str] = (),
    max_forgetting_pct: float | None = None,
) -> RoleEval:
    """The role metric of an adapter folder on ``rows`` (validation rows of the role's data), for training to pick its
    best checkpoint by; one in-process backend on the base model, loaded at the first score. With ``probe_texts``
    training also watches forgetting, and a checkpoint above ``max_forgetting_pct`` loses to any within it."""
    from .role_eval import ROLE_METRIC, role_metrics
    from .serving.base import DirectoryAdapters
    from .serving.inprocess import InProcessBackend

    backend: list[InProcessBackend] = []

    def score(folder: Path) -> dict[str, float]:
        if not backend:
            backend.append(InProcessBackend(base_dir, DirectoryAdapters(folder.parent)))
        return role_metrics(role, backend[0], folder.name, rows, retriever)

    def close() -> None:
        while backend:
            backend.pop().close()

    return RoleEval(ROLE_METRIC[role], score, close, probe_texts, max_forgetting_pct)


def _evaluate(
    config: Config,
    role: str,
    base_dir: Path,
    adapter_dir: Path,
    full: bool,
    data_dir: Path,
    work_dir: Path,
    retriever: Any,
    eval_limit: int,
    probe_limit: int | None,
) -> tuple[dict[str, dict[str, float]], Any]:
    """The role metric (tuned vs base, on the role's test split) and the quality gates of one trained adapter."""
    from .gates import GateThresholds, run_gates
    from .role_eval import ROLE_GATED_EXTRA, ROLE_METRIC, role_metrics
    from .scoring import load_probe_texts
    from .serving.base import DirectoryAdapters
    from .serving.inprocess import InProcessBackend

    test_rows = _rows(data_dir / "test.jsonl")[:eval_limit]
    metrics: dict[str, dict[str, float]] = {}
    if full:
        tuned = InProcessBackend(adapter_dir)
        base = InProcessBackend(base_dir)
        try:
            metrics["tuned"] = role_metrics(role, tuned, None, test_rows, retriever)
            metrics["base"] = role_metrics(role, base, None, test_rows, retriever)
        finally:
            tuned.close()
            base.close()
    else:
        staging = work_dir / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        link = staging / "candidate@1"
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(adapter_dir.resolve(), target_is_directory=True)
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
        str(adapter_dir),
        val,
        load_probe_texts(limit=probe_limit),
        [
            (k, metrics["tuned"].get(k, 0.0), metrics["base"].get(k, 0.0))
            for k in (key, *ROLE_GATED_EXTRA.get(role, ()))
        ],
        GateThresholds.model_validate(config.gates.model_dump(exclude={"eval_limit"})),
    )
    return metrics, report


def regate(
    config: Config, ref: str, *, eval_limit: int | None = None, probe_limit: int | None = None
) -> tuple[Any, Any]:
    """Run the role metric and the gates again on a registered adapter (after a change of thresholds or decoding),
    on the data it was trained with; the manifest's ``metrics.role`` and ``gates`` are replaced. A promoted adapter
    that now fails keeps its stage (``rolora adapters rollback`` retires it)."""
    from rolora.models import resolve_generator
    from rolora.retrieval import Retriever

    from .data import dataset_digest
    from .registry import Registry

    base_dir = resolve_generator(config.models.generator, config.home_dir)
    registry = Registry.from_config(config, base_dir)
    rec = registry.check_base(ref, base_dir)
    data_dir = config.home_dir / "data" / rec.domain / rec.role
    digest = dataset_digest(data_dir)
    if digest is None or digest != rec.data_card_hash:
        raise UserError(
            f"{rec.ref}: {data_dir} no longer holds the data it was trained on (digest {digest or 'missing'}, "
            f"manifest {rec.data_card_hash}; a later `rolora train` rebuilt it); retrain instead"
        )
    retriever = Retriever.open(rec.domain, config)
    try:
        metrics, report = _evaluate(
            config,
            rec.role,
            base_dir,
            rec.path,
            rec.kind == "full",
            data_dir,
            config.home_dir / "runs" / f"regate-{rec.name}",
            retriever,
            eval_limit or config.gates.eval_limit,
            probe_limit,
        )
    finally:
        retriever.close()
    registry.record_metrics(rec.ref, {"role": metrics})
    return registry.record_gates(rec.ref, report), report
