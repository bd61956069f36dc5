"""A retriever tuned from the domain corpus: fine-tune the embedder on the domain's annotated questions.

Pairs: every answerable annotated question with its gold chunk (the chunk of its contract that overlaps the evidence
most, one per evidence span, at most ``max_positives``), as the index embeds it (``chunk_for_index``: the contextual
line, then the exact text), and one hard negative from the same contract: the chunk BM25 ranks highest for the
question among those that overlap no evidence. Contracts are split by ``rolora.adapters.data.doc_split`` exactly as
the role adapters are: train on the train split, choose the checkpoint on the validation split (span recall@5 of
dense search over a seeded sample of validation contracts), gate on the test split (span recall@5 of the tuned
embedder >= the base embedder's, dense search over the test contracts). Training is sentence-transformers' own
``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss`` (in-batch negatives + the hard one), with
checkpoints (``resume``) and a wall-clock budget. The result is registered in
:class:`rolora.embedder_registry.EmbedderRegistry` with its data card and gates.

>>> run = tune_retriever(load_config(), "contracts", TuneConfig(max_steps=200, time_budget_s=1200))  # doctest: +SKIP
>>> run.record.ref, run.gates["passed"]  # ('tuned:contracts-retriever@1', True)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from rolora.errors import UserError
from rolora.fileutil import atomic_write_text

from .data.base import QARow, Split, doc_split, load_qa

if TYPE_CHECKING:
    from rolora.config import Config
    from rolora.embedder_registry import EmbedderRecord

__all__ = [
    "IndexedChunk",
    "Pair",
    "TuneConfig",
    "TuneRun",
    "build_pairs",
    "dense_recall",
    "domain_chunks",
    "tune_retriever",
]

log = logging.getLogger("rolora.adapters")

Negatives = Literal["bm25", "random", "none"]
KS = (1, 5, 20)
GATE_METRIC = "span_recall@5"


@dataclass
class TuneConfig:
    """What ``rolora retriever tune`` passes through; every field is recorded in the registry's manifest."""

    max_steps: int = 300
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup_ratio: float = 0.1
    negatives: Negatives = "bm25"
    max_positives: int = 3  # gold chunks per question (one per evidence span)
    max_pairs: int | None = None  # cap on training pairs (quick runs), a seeded sample
    eval_steps: int = 50  # validation (and a checkpoint) every N steps
    val_contracts: int = 6  # validation contracts searched by the checkpoint choice (seeded sample)
    gate_contracts: int | None = None  # test contracts the gate searches (None: all of them)
    time_budget_s: float | None = None  # wall-clock seconds of training at most (then a checkpoint: resume goes on)
    seed: int = 0


@dataclass(frozen=True)
class IndexedChunk:
    """One chunk as the index holds it: ``text`` is what is embedded (context line + exact text)."""

    doc_id: str
    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Pair:
    question: str
    positive: str
    negative: str | None
    doc_id: str
    qa_id: str


@dataclass
class TuneRun:
    record: EmbedderRecord
    gates: dict[str, Any]
    metrics: dict[str, Any]
    data_card: dict[str, Any]
    seconds: float
    run_dir: Path
    promoted: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


# -- data ------------------------------------------------------------------------------------------------------------
def domain_chunks(config: Config, domain: str, doc_ids: set[str] | None = None) -> dict[str, list[IndexedChunk]]:
    """The domain corpus's chunks per document (only ``doc_ids`` when given), chunked and contextualised exactly as
    ``rolora ingest`` does with this config; no index or embedding is needed."""
    from rolora.retrieval.ingest import chunk_for_index
    from rolora.retrieval.loaders import iter_corpus, load_path
    from rolora.retrieval.store import indexed_text

    dom = config.domain(domain)
    if not dom.corpus:
        raise UserError(f"domains.{domain}.corpus: empty; list the folders of the domain's documents")
    cfg = config.retrieval
    out: dict[str, list[IndexedChunk]] = {}
    for root in dom.corpus:
        root = Path(root)
        if not root.exists():
            raise UserError(f"domains.{domain}.corpus: {root} does not exist; fix the path")
        base = root if root.is_dir() else root.parent
        for f in iter_corpus(root, list(dom.include), list(dom.exclude)):
            for doc in load_path(f, base, int(cfg.max_file_mb * 1024 * 1024)).documents:
                if doc.doc_id in out or (doc_ids is not None and doc.doc_id not in doc_ids):
                    continue
                chunks, _, contexts = chunk_for_index(doc, cfg)
                out[doc.doc_id] = [
                    IndexedChunk(doc.doc_id, c.start, c.end, indexed_text(x, c.text))
                    for c, x in zip(chunks, contexts, strict=True)
                ]
    return out


def _evidence(q: QARow) -> list[tuple[int, int]]:
    return [(s, e) for d, s, e in q.evidence if d == q.doc_id and e > s]


def _overlap(c: IndexedChunk, spans: Sequence[tuple[int, int]]) -> int:
    return sum(max(0, min(c.end, e) - max(c.start, s)) for s, e in spans)


def labelled(rows: Sequence[QARow], chunks: dict[str, list[IndexedChunk]]) -> list[QARow]:
    """The answerable questions with evidence in a document that has chunks."""
    return [q for q in rows if q.answerable and q.doc_id in chunks and _evidence(q)]


def build_pairs(
    rows: Sequence[QARow],
    chunks: dict[str, list[IndexedChunk]],
    negatives: Negatives = "bm25",
    max_positives: int = 3,
    seed: int = 0,
    stemmer: str = "english",
) -> list[Pair]:
    """(question, gold chunk, hard negative from the same contract) for every labelled question in ``rows``."""
    rng = random.Random(seed)
    by_doc: dict[str, list[QARow]] = {}
    for q in labelled(rows, chunks):
        by_doc.setdefault(q.doc_id, []).append(q)
    pairs: list[Pair] = []
    for doc_id, qs in sorted(by_doc.items()):
        doc_chunks = chunks[doc_id]
        ranked: list[list[int]] = [list(range(len(doc_chunks)))] * len(qs)
        if negatives == "bm25":
            ranked = _bm25_rank([c.text for c in doc_chunks], [q.question for q in qs], stemmer)
        for q, order in zip(qs, ranked, strict=True):
            spans = _evidence(q)
            gold = [i for i, c in enumerate(doc_chunks) if _overlap(c, spans)]
            if not gold:
                continue
            positives = list(dict.fromkeys(max(gold, key=lambda i: _overlap(doc_chunks[i], [sp])) for sp in spans))
            positives = [i for i in positives if _overlap(doc_chunks[i], spans)][:max_positives]
            pool = [i for i in order if i not in gold]
            negative: str | None = None
            if negatives == "bm25" and pool:
                negative = doc_chunks[pool[0]].text
            elif negatives == "random" and pool:
                negative = doc_chunks[rng.choice(pool)].text
            if negatives != "none" and negative is None:
                continue  # every chunk of this contract is evidence: no negative to pair with
            pairs.extend(Pair(q.question, doc_chunks[i].text, negative, doc_id, q.id) for i in positives)
    return pairs


def _bm25_rank(texts: list[str], queries: list[str], stemmer: str) -> list[list[int]]:
    import bm25s

    from rolora.retrieval.index import tokenize

    bm = bm25s.BM25()
    bm.index(tokenize(texts, stemmer), show_progress=False)
    k = len(texts)
    docs, _ = bm.retrieve(tokenize(queries, stemmer), k=k, show_progress=False, n_threads=1)
    return [[int(i) for i in row] for row in docs]


def sample_docs(docs: Sequence[str], n: int | None, seed: int) -> list[str]:
    """``docs`` sorted, or a seeded sample of ``n`` of them (the rule bench/retrieval.py's --max-contracts uses)."""
    ids = sorted(docs)
    if n is not None and n < len(ids):
        ids = sorted(random.Random(seed).sample(ids, n))
    return ids


# -- evaluation ------------------------------------------------------------------------------------------------------
def dense_recall(
    encode: Callable[[list[str]], np.ndarray],
    questions: Sequence[QARow],
    chunks: dict[str, list[IndexedChunk]],
    ks: Sequence[int] = KS,
    corpus_vectors: np.ndarray | None = None,
) -> tuple[dict[str, list[float]], np.ndarray]:
    """Per question, span and chunk recall@k of dense search over every chunk in ``chunks`` (unscoped) and inside
    the question's own contract (``scoped_``); returns the lists and the corpus vectors (to reuse).

    Span recall: the share of evidence characters the top k cover (``rolora.evals.metrics.span_recall``); chunk
    recall: the share of the chunks overlapping the evidence that are in the top k."""
    from rolora.evals.metrics import span_recall

    flat = [c for d in sorted(chunks) for c in chunks[d]]
    vecs = corpus_vectors if corpus_vectors is not None else encode([c.text for c in flat])
    qvecs = encode([q.question for q in questions])
    doc_of = np.array([c.doc_id for c in flat])
    out: dict[str, list[float]] = {}
    for scope in ("", "scoped_"):
        for k in ks:
            out[f"{scope}span_recall@{k}"], out[f"{scope}chunk_recall@{k}"] = [], []
    scores = qvecs @ vecs.T
    for qi, q in enumerate(questions):
        spans = _evidence(q)
        gold = [(q.doc_id, s, e) for s, e in spans]
        for scope in ("", "scoped_"):
            row = scores[qi] if not scope else np.where(doc_of == q.doc_id, scores[qi], -np.inf)
            order = np.argsort(-row, kind="stable")[: max(ks)]
            hits = [flat[i] for i in order if np.isfinite(row[i])]
            gold_chunks = {i for i, c in enumerate(flat) if c.doc_id == q.doc_id and _overlap(c, spans)}
            for k in ks:
                top = hits[:k]
                out[f"{scope}span_recall@{k}"].append(
                    span_recall(gold, [(c.doc_id, c.start, c.end) for c in top]) or 0.0
                )
                got = len(gold_chunks & {int(i) for i in order[:k]})
                out[f"{scope}chunk_recall@{k}"].append(got / len(gold_chunks) if gold_chunks else 0.0)
    return out, vecs


def _st_encoder(model: Any, batch_size: int = 64) -> Callable[[list[str]], np.ndarray]:
    def encode(texts: list[str]) -> np.ndarray:
        v = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
        return np.asarray(v, dtype=np.float32)

    return encode


def _val_evaluator(questions: list[QARow], chunks: dict[str, list[IndexedChunk]]) -> Any:
    """A sentence-transformers evaluator: span recall@5 of dense search over the validation sample."""
    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

    class SpanRecallEvaluator(BaseEvaluator):
        def __init__(self) -> None:
            super().__init__()
            self.name = "val"
            self.primary_metric = GATE_METRIC

        def __call__(
            self, model: Any, output_path: str | None = None, epoch: int = -1, steps: int = -1
        ) -> dict[str, float]:
            per_q, _ = dense_recall(_st_encoder(model), questions, chunks, ks=(1, 5))
            metrics = {k: float(np.mean(v)) if v else 0.0 for k, v in per_q.items() if not k.startswith("scoped_")}
            metrics = self.prefix_name_to_metrics(metrics, self.name)
            self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
            return metrics

    return SpanRecallEvaluator()


# -- training --------------------------------------------------------------------------------------------------------
def train_embedder(
    base_path: Path,
    pairs: Sequence[Pair],
    val_questions: list[QARow],
    val_chunks: dict[str, list[IndexedChunk]],
    run_dir: Path,
    cfg: TuneConfig,
    resume: bool = False,
    progress: bool = True,
) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """Fine-tune ``base_path`` on ``pairs``; returns (the saved best model folder, metrics, the trainer's log)."""
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint

    if not pairs:
        raise UserError("no training pairs: the train split has no answerable question with evidence in the corpus")
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = get_last_checkpoint(str(run_dir)) if resume else None
    if resume and checkpoint is None:
        log.warning("no checkpoint under %s: training from the start", run_dir)
    if not resume:
        for old in run_dir.glob("checkpoint-*"):
            shutil.rmtree(old, ignore_errors=True)
    model = SentenceTransformer(str(base_path), device="cpu", local_files_only=True)
    columns: dict[str, list[str]] = {"anchor": [p.question for p in pairs], "positive": [p.positive for p in pairs]}
    if all(p.negative is not None for p in pairs):
        columns["negative"] = [p.negative or "" for p in pairs]
    evaluator = _val_evaluator(val_questions, val_chunks)
    t0 = time.perf_counter()
    metrics: dict[str, Any] = {"validation_base": evaluator(model)[f"val_{GATE_METRIC}"]}
    budget = cfg.time_budget_s

    class Budget(TrainerCallback):
        """Stops (evaluating and checkpointing the last step) once the wall-clock budget is spent."""

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if budget is not None and time.perf_counter() - t0 >= budget:
                control.should_training_stop = True
                control.should_evaluate = True
                control.should_save = True
            return control

    args = SentenceTransformerTrainingArguments(
        output_dir=str(run_dir),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=max(1, int(cfg.warmup_ratio * cfg.max_steps)),
        batch_sampler=BatchSamplers.NO_DUPLICATES,
        eval_strategy="steps",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.eval_steps,
        save_total_limit=2,
        load_best_model_at_end=True,
        metric_for_best_model=f"eval_val_{GATE_METRIC}",
        greater_is_better=True,
        logging_steps=max(1, min(10, cfg.eval_steps)),
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=True,
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
    )
    trainer = SentenceTransformerTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict(columns),
        loss=MultipleNegativesRankingLoss(model),
        evaluator=evaluator,
        callbacks=[Budget()],
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    final = run_dir / "final"
    shutil.rmtree(final, ignore_errors=True)
    trainer.model.save(str(final), safe_serialization=True)
    state = trainer.state
    evals = [h for h in state.log_history if f"eval_val_{GATE_METRIC}" in h]
    metrics.update(
        {
            "steps": int(state.global_step),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "best_checkpoint": Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None,
            "validation_best": state.best_metric,
            "validation_curve": [[h["step"], round(h[f"eval_val_{GATE_METRIC}"], 4)] for h in evals],
            "train_loss": next((h["train_loss"] for h in reversed(state.log_history) if "train_loss" in h), None),
        }
    )
    return final, metrics, list(state.log_history)


# -- gate ------------------------------------------------------------------------------------------------------------
def gate(
    base_encode: Callable[[list[str]], np.ndarray],
    tuned_encode: Callable[[list[str]], np.ndarray],
    questions: list[QARow],
    chunks: dict[str, list[IndexedChunk]],
) -> dict[str, Any]:
    """Test-split recall of base vs tuned (dense, over the test contracts); passes when tuned span recall@5 is not
    lower than the base's. Means per metric plus the paired bootstrap of the gate metric's difference."""
    from rolora.evals.bootstrap import bootstrap_mean, paired_bootstrap

    if not questions:
        raise UserError("the test split has no answerable question with evidence: the gate cannot run")
    base, _ = dense_recall(base_encode, questions, chunks)
    tuned, _ = dense_recall(tuned_encode, questions, chunks)
    diff = paired_bootstrap(base[GATE_METRIC], tuned[GATE_METRIC], samples=2000, seed=0)
    b, t = float(np.mean(base[GATE_METRIC])), float(np.mean(tuned[GATE_METRIC]))
    passed = t >= b
    return {
        "passed": passed,
        "failed_gates": [] if passed else ["test_recall"],
        "gates": [
            {
                "name": "test_recall",
                "metric": GATE_METRIC,
                "base": round(b, 4),
                "tuned": round(t, 4),
                "summary": f"{GATE_METRIC} tuned {t:.3f} vs base {b:.3f}",
            }
        ],
        "questions": len(questions),
        "contracts": len(chunks),
        "base": {k: round(float(np.mean(v)), 4) for k, v in base.items()},
        "tuned": {k: round(float(np.mean(v)), 4) for k, v in tuned.items()},
        "ci": {
            "base": bootstrap_mean(base[GATE_METRIC], seed=0).to_dict(),
            "tuned": bootstrap_mean(tuned[GATE_METRIC], seed=0).to_dict(),
            "difference": diff.to_dict(),
        },
    }


# -- the pipeline ----------------------------------------------------------------------------------------------------
def _data_card(
    domain: str,
    qa_path: Path,
    cfg: TuneConfig,
    splits: dict[Split, list[str]],
    pairs: list[Pair],
    counts: dict[str, int],
) -> dict[str, Any]:
    blob = json.dumps([asdict(p) for p in pairs], sort_keys=True).encode()
    return {
        "domain": domain,
        "qa_file": str(qa_path),
        "qa_sha256": hashlib.sha256(qa_path.read_bytes()).hexdigest(),
        "split": f"doc_split(doc_id, seed={cfg.seed}) (validation 0.1, test 0.2): the role adapters' split",
        "negatives": cfg.negatives,
        "counts": counts,
        "documents": {k: sorted(v) for k, v in splits.items()},
        "pairs_sha256": hashlib.sha256(blob).hexdigest(),
    }


def tune_retriever(
    config: Config,
    domain: str,
    cfg: TuneConfig | None = None,
    *,
    name: str | None = None,
    qa: Path | None = None,
    resume: bool = False,
    promote: bool = False,
    progress: bool = True,
) -> TuneRun:
    """Pairs from the domain's annotated questions -> train (validation picks the checkpoint) -> test gate ->
    registered as a candidate (promoted when ``promote`` and the gate passed)."""
    from rolora.embedder_registry import EmbedderRegistry, parse_tuned
    from rolora.models import embedder_name, resolve_embedder
    from rolora.retrieval import make_embedder

    cfg = cfg or TuneConfig()
    home = config.home_dir
    name = name or f"{domain}-retriever"
    parse_tuned(name)  # a bad name fails before any work
    qa_path = qa or config.domain(domain).qa
    if qa_path is None:
        raise UserError(f"domains.{domain}.qa: not set; pass --qa FILE (annotated questions) or set it")
    qa_path = Path(qa_path)
    if not qa_path.is_file():
        raise UserError(f"--qa {qa_path}: no such file; point it at the domain's annotated questions (JSONL)")
    t0 = time.perf_counter()
    rows = load_qa(qa_path)
    base_spec = config.models.embedder
    base_name = embedder_name(base_spec, home)
    base_path = resolve_embedder(base_name, home)

    def split_of(doc_id: str) -> Split:
        return doc_split(doc_id, cfg.seed)

    chunks = domain_chunks(config, domain, {q.doc_id for q in rows})
    qs = labelled(rows, chunks)
    by_split: dict[Split, list[str]] = {"train": [], "validation": [], "test": []}
    for d in sorted({q.doc_id for q in qs}):
        by_split[split_of(d)].append(d)
    val_docs = set(sample_docs(by_split["validation"], cfg.val_contracts, cfg.seed))
    test_docs = set(sample_docs(by_split["test"], cfg.gate_contracts, cfg.seed))
    if not by_split["train"] or not val_docs or not test_docs:
        have = ", ".join(f"{k} {len(v)}" for k, v in by_split.items())
        raise UserError(
            f"domain '{domain}': tuning needs labelled contracts in each split (train, validation, test); it has {have}"
        )
    train_rows = [q for q in qs if q.doc_id in set(by_split["train"])]
    pairs = build_pairs(train_rows, chunks, cfg.negatives, cfg.max_positives, cfg.seed, config.retrieval.stemmer)
    if cfg.max_pairs is not None and cfg.max_pairs < len(pairs):
        pairs = random.Random(cfg.seed).sample(pairs, cfg.max_pairs)
    val_q = [q for q in qs if q.doc_id in val_docs]
    test_q = [q for q in qs if q.doc_id in test_docs]
    counts = {
        "train_pairs": len(pairs),
        "train_questions": len({p.qa_id for p in pairs}),
        "validation_questions": len(val_q),
        "test_questions": len(test_q),
        "validation_contracts": len(val_docs),
        "test_contracts": len(test_docs),
    }
    card = _data_card(domain, qa_path, cfg, {"train": by_split["train"], "validation": sorted(val_docs),
                                             "test": sorted(test_docs)}, pairs, counts)  # fmt: skip
    run_dir = home / "runs" / "embedders" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "data_card.json", json.dumps(card, indent=2) + "\n")
    log.info("retriever tuning data for %s: %s", domain, counts)

    final, metrics, history = train_embedder(
        base_path,
        pairs,
        val_q,
        {d: chunks[d] for d in val_docs},
        run_dir,
        cfg,
        resume=resume,
        progress=progress,
    )
    from sentence_transformers import SentenceTransformer

    tuned_model = SentenceTransformer(str(final), device="cpu", local_files_only=True)
    base_emb = make_embedder(base_name, home=home)
    gates = gate(base_emb.embed, _st_encoder(tuned_model), test_q, {d: chunks[d] for d in test_docs})
    metrics["test"] = {"base": gates["base"], "tuned": gates["tuned"]}
    reg = EmbedderRegistry.from_home(home)
    tcfg = {**asdict(cfg), "base_embedder": base_name}
    rec = reg.register(final, name, domain, base_name, data_card=card, training_config=tcfg, metrics=metrics)
    rec = reg.record_gates(rec.ref, gates)
    promoted = False
    if promote and gates["passed"]:
        rec = reg.promote(rec.ref)
        promoted = True
    return TuneRun(rec, gates, metrics, card, time.perf_counter() - t0, run_dir, promoted, history)
