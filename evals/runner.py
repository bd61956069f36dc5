"""Run a suite: the real agent graph over the suite's questions, once per configuration, resumable.

Every answer (with its trace, the critic judge's verdict and the question's gold chunks) is committed to
``<out>/results.sqlite`` as soon as it is done, keyed by (configuration, question id) and a fingerprint of everything
that shapes it (question, adapters, models, agent and retrieval settings, judge). A rerun computes only what is
missing or changed, so an interrupted run resumes where it stopped. Configurations share one backend and run
interleaved question by question (so machine load falls on all alike), ``concurrency`` answers at a time, under a
rich progress bar; the backend is warmed up first so the first answers' latency is not inflated.

>>> run = run_suite(load_suite("evals/suites/contracts.yaml"), out=Path("eval-out"), limit=4)  # doctest: +SKIP
>>> run.computed, run.reused  # doctest: +SKIP
(8, 0)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rolora.errors import IndexError_, RoloraRuntimeError, UserError

from .datasets import EvalQuestion
from .metrics import chunk_key
from .suite import ConfigurationSpec, DatasetSpec, Suite

if TYPE_CHECKING:
    from rich.console import Console

    from rolora.agents.types import Answer
    from rolora.config import Config

__all__ = ["Plan", "QuestionResult", "ResultStore", "RunResult", "resolve_adapter", "run_suite"]

AgentFactory = Callable[..., Any]  # (config, *, backend, adapters, retrieval_mode, checkpointer, use_critic) -> Agent
BackendFactory = Callable[[Any], Any]  # config -> Backend

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    config TEXT NOT NULL,
    qid TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    status TEXT NOT NULL,
    answer TEXT,
    wall_s REAL,
    judge TEXT,
    gold_chunks TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    PRIMARY KEY (config, qid)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    finished REAL,
    computed INTEGER NOT NULL DEFAULT 0,
    reused INTEGER NOT NULL DEFAULT 0,
    args TEXT NOT NULL
);
"""


# -- storage ---------------------------------------------------------------------------------------------------------
class ResultStore:
    """Per-question results in SQLite (WAL); every write is its own transaction, so a kill loses only what was in
    flight."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        try:
            self.db = sqlite3.connect(str(path), timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise UserError(f"{path}: not a results database ({e}); delete it or pass another --out") from e

    def fingerprints(self, config: str) -> dict[str, tuple[str, str]]:
        """``qid -> (fingerprint, status)`` of the stored results of ``config``."""
        rows = self.db.execute("SELECT qid, fingerprint, status FROM results WHERE config=?", (config,))
        return {qid: (fp, status) for qid, fp, status in rows}

    def put(
        self,
        config: str,
        qid: str,
        fingerprint: str,
        status: str,
        answer: str | None,
        wall_s: float | None,
        judge: dict[str, Any] | None,
        gold_chunks: Iterable[str],
        error: str = "",
    ) -> None:
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    config,
                    qid,
                    fingerprint,
                    status,
                    answer,
                    wall_s,
                    json.dumps(judge) if judge is not None else None,
                    json.dumps(sorted(gold_chunks)),
                    error,
                    time.time(),
                ),
            )

    def rows(self, config: str) -> dict[str, dict[str, Any]]:
        cur = self.db.execute(
            "SELECT qid, fingerprint, status, answer, wall_s, judge, gold_chunks, error, created FROM results "
            "WHERE config=?",
            (config,),
        )
        names = [d[0] for d in cur.description]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur}

    def start_run(self, args: dict[str, Any]) -> int:
        with self.db:
            cur = self.db.execute("INSERT INTO runs (started, args) VALUES (?, ?)", (time.time(), json.dumps(args)))
        return int(cur.lastrowid or 0)

    def finish_run(self, run_id: int, computed: int, reused: int) -> None:
        with self.db:
            self.db.execute(
                "UPDATE runs SET finished=?, computed=?, reused=? WHERE id=?", (time.time(), computed, reused, run_id)
            )

    def close(self) -> None:
        self.db.close()


# -- plans -----------------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """A configuration resolved for each domain it is asked in: the adapter (or None = base) of every role."""

    name: str
    spec: ConfigurationSpec
    adapters: dict[str, dict[str, str | None]]  # domain -> role -> ref
    notes: list[str] = field(default_factory=list)
    fingerprints: dict[str, str] = field(default_factory=dict)  # domain -> hash of everything but the question


@dataclass
class QuestionResult:
    question: EvalQuestion
    dataset: str
    domain: str
    status: str  # "ok" | "error"
    answer: Answer | None
    wall_s: float | None
    judge: dict[str, Any] | None  # {"verdict": ..., "reasons": [...], "adapter": ...}
    gold_chunks: set[str]
    error: str = ""

    @property
    def verdict(self) -> str | None:
        return (self.judge or {}).get("verdict")


@dataclass
class RunResult:
    suite: Suite
    config: Config
    out: Path
    configs: list[str]
    reference: str
    questions: list[tuple[DatasetSpec, EvalQuestion]]
    plans: dict[str, Plan]
    judge_adapters: dict[str, str | None]  # domain -> critic used as judge (None = base), {} when disabled
    results: dict[str, list[QuestionResult]]  # config -> aligned with ``questions``
    computed: int
    reused: int
    wall_s: float
    interrupted: bool = False


def resolve_adapter(config: Config, registry: Any, domain: str, role: str, choice: str) -> tuple[str | None, str]:
    """``choice`` ("base" | "promoted" | "name" | "name@N") for ``role`` -> (canonical ref or None, note).

    "promoted": the config's binding for the role in ``domain``, else the latest promoted LoRA adapter registered
    for (domain, role), else the base model (the note says so).
    """
    if choice == "base":
        return None, ""
    if choice == "promoted":
        dom = config.domains.get(domain)
        binding = dom.roles.get(role) if dom is not None else None  # type: ignore[call-overload]
        if binding is not None and binding.adapter:
            try:
                return registry.role_adapter(config, domain, role), ""
            except UserError as e:
                return None, f"{role}: {e}; base model used"
        recs = [r for r in registry.list(domain=domain, role=role, stage="promoted") if r.kind == "lora"]
        if recs:
            return max(recs, key=lambda r: (r.promoted_at, r.version)).ref, ""
        return None, f"{role}: no promoted adapter for domain {domain}; base model used"
    ref, _ = registry.resolve(choice)
    rec = registry.show(ref)
    if rec.role != role:
        raise UserError(f"adapter '{ref}' was trained for the {rec.role} role, not {role}; name a {role} adapter")
    return str(ref), ""


# configuration fields added after runs were stored: left out of the fingerprint while unset
FIELDS_ADDED_LATER = (
    "quantize",
    "grammar_drafts",
    "prompt_lookup",
    "k",
    "declined_answer",
    "short_answers",
    "typed_reader",
    "yes_no",
    "min_evidence_similarity",
)


def _unset_newer_fields(spec: ConfigurationSpec) -> set[str]:
    """The fields of :data:`FIELDS_ADDED_LATER` ``spec`` leaves unset (so runs stored before them stay valid)."""
    return {f for f in FIELDS_ADDED_LATER if getattr(spec, f) is None}


def _hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _quantize_run(kind: str, setting: str) -> str:
    """What a ``backend.quantize`` setting runs on a backend of ``kind``: ``auto`` is what the in-process backend
    resolves it to for this CPU (``resolve_quantize``) and none on vLLM, which does not read it."""
    from rolora.adapters.serving.quantize import resolve_quantize

    if setting != "auto":
        return setting
    return resolve_quantize(setting) if kind == "inprocess" else "none"


def _drafts_run(kind: str, quantize: str, forced: bool | None, lookup: int | None, cfg: Config) -> tuple[bool, int]:
    """The drafts a configuration's requests are decoded with: grammar-forced ones (``backend.grammar_drafts``) and
    prompt lookup's (``backend.prompt_lookup``), the configuration's or else the config's; read by the in-process
    backend only, which drafts nothing under int8 decoding (``quantize``, as :func:`_quantize_run` resolved it)."""
    from rolora.adapters.serving.quantize import drafts_allowed

    if kind != "inprocess" or not drafts_allowed(quantize):
        return False, 0
    return (
        cfg.backend.grammar_drafts if forced is None else forced,
        cfg.backend.prompt_lookup if lookup is None else lookup,
    )


def _plan(
    suite: Suite, cfg: Config, registry: Any, name: str, domains: Sequence[str], judge: dict[str, str | None]
) -> Plan:
    spec = suite.configurations[name]
    plan = Plan(name, spec, {})
    kind = spec.backend or cfg.backend.kind
    quantize = _quantize_run(kind, spec.quantize or cfg.backend.quantize)
    drafts, lookup = _drafts_run(kind, quantize, spec.grammar_drafts, spec.prompt_lookup, cfg)
    for domain in domains:
        where = spec.adapter_domain or domain
        mapping: dict[str, str | None] = {}
        for role, choice in spec.role_choices().items():
            ref, note = resolve_adapter(cfg, registry, where, role, choice)
            mapping[role] = ref
            if note and note not in plan.notes:
                plan.notes.append(note)
        plan.adapters[domain] = mapping
        agent = cfg.agent.model_dump(mode="json", exclude={"checkpointer", "checkpoint_path", "postgres_url"})
        plan.fingerprints[domain] = _hash(
            {
                # fields added later are left out while unset, so stored runs of older suites stay valid
                "spec": spec.model_dump(mode="json", exclude={"description"} | _unset_newer_fields(spec)),
                "adapters": mapping,
                "models": cfg.models.model_dump(mode="json"),
                "retrieval": cfg.retrieval.model_dump(mode="json"),
                "backend": kind,
                **({"quantize": quantize} if quantize != "none" else {}),
                # drafts verified by the model: plain greedy's tokens up to float rounding, which can flip a near tie
                **({"prompt_lookup": lookup} if lookup else {}),
                **({"grammar_drafts": True} if drafts else {}),
                # oneDNN's kernel for products of a few rows: its sums add in another order than MKL's
                **({"few_rows_onednn": True} if kind == "inprocess" and cfg.backend.few_rows_onednn else {}),
                # an adapter's LoRA merged into the packed weights of its decoding steps: again another order of sums
                **(
                    {"merged_adapters": cfg.backend.merged_adapters}
                    if kind == "inprocess" and cfg.backend.few_rows_onednn and cfg.backend.merged_adapters
                    else {}
                ),
                "agent": agent,
                "judge": judge.get(domain, "off") if suite.judge.enabled else "off",
            }
        )
    return plan


# -- the index and the gold chunks -------------------------------------------------------------------------------------
def _open_domain(cfg: Config, domain: str, console: Console | None, progress: bool) -> Any:
    """The domain's retriever; a domain never ingested is ingested first (its configured corpus)."""
    from rolora.retrieval import Retriever

    retriever = Retriever.open(domain, cfg)
    try:
        retriever.stats()
    except IndexError_ as e:
        if "no index yet" not in str(e):
            raise
        if console is not None:
            corpus = ", ".join(map(str, cfg.domains[domain].corpus))
            console.print(f"domain {domain} has no index yet: ingesting {corpus}")
        retriever.ingest(progress=progress)
    return retriever


def _gold_chunks(retriever: Any, q: EvalQuestion, cache: dict[str, list[Any]]) -> set[str]:
    """Every chunk of the index that overlaps a gold evidence span of ``q``."""
    out: set[str] = set()
    for doc, start, end in q.gold_spans:
        if doc not in cache:
            cache[doc] = retriever.document_chunks(doc)
            if not cache[doc]:
                raise UserError(
                    f"question {q.id}: evidence document '{doc}' is not in the index of domain "
                    f"'{retriever.domain}'; ingest the suite's corpus (`rolora ingest --domain {retriever.domain}`)"
                )
        hits = (p for p in cache[doc] if p.start < end and start < p.end)
        out.update(chunk_key(p.doc_id, p.start, p.end, p.chunk_id) for p in hits)
    return out


def _choose(
    questions: list[tuple[DatasetSpec, EvalQuestion]], limit: int | None, sample: int | None, seed: int
) -> list[tuple[DatasetSpec, EvalQuestion]]:
    if sample is not None and sample < len(questions):
        keep = set(random.Random(seed).sample(range(len(questions)), sample))
        questions = [x for i, x in enumerate(questions) if i in keep]
    if limit is not None:
        questions = questions[:limit]
    return questions


# -- running ---------------------------------------------------------------------------------------------------------
async def _judge(backend: Any, ref: str | None, q: EvalQuestion, answer: Answer) -> dict[str, Any] | None:
    """The critic's verdict on a final answer (None for a refusal, or when the verdict does not parse)."""
    from rolora.adapters.serving.base import GenerationRequest
    from rolora.roles import CRITIC_SCHEMA, critic_messages

    if answer.not_found:
        return None
    draft = {"answer": answer.answer, "citations": [{"passage": c.passage, "quote": c.quote} for c in answer.citations]}
    request = GenerationRequest(
        critic_messages(q.question, answer.passages, draft), adapter=ref, max_tokens=80, json_schema=CRITIC_SCHEMA
    )
    [result] = await backend.agenerate([request])
    parsed = result.json if isinstance(result.json, dict) else None
    verdict = (parsed or {}).get("verdict")
    if verdict not in ("supported", "unsupported", "partial"):
        return {"verdict": None, "reasons": [], "adapter": result.adapter or "base", "raw": result.text[:400]}
    reasons = [str(r) for r in (parsed or {}).get("reasons", [])][:3]
    return {"verdict": verdict, "reasons": reasons, "adapter": result.adapter or "base"}


async def _warm_up(backend: Any) -> None:
    from rolora.adapters.serving.base import GenerationRequest
    from rolora.roles import QUERY_SCHEMA, query_writer_messages

    await backend.agenerate(
        [GenerationRequest(query_writer_messages("warm-up"), max_tokens=4, json_schema=QUERY_SCHEMA)]
    )


def _default_agent_factory(config: Any, **kwargs: Any) -> Any:
    from rolora.agents import Agent

    return Agent.from_config(config, **kwargs)


def _default_backend_factory(config: Any) -> Any:
    from rolora.agents import make_backend

    return make_backend(config)


async def _run_pending(
    suite: Suite,
    cfg: Config,
    store: ResultStore,
    pending: list[tuple[Plan, str, DatasetSpec, EvalQuestion, str, set[str]]],
    judge: dict[str, str | None],
    concurrency: int,
    progress: bool,
    console: Console | None,
    agent_factory: AgentFactory,
    backend_factory: BackendFactory,
    counter: list[int],
) -> None:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    backends: dict[tuple[str, str, bool, int], Any] = {}

    def backend_for(kind: str, spec: ConfigurationSpec | None = None) -> Any:
        spec = spec or ConfigurationSpec()  # the judge's backend: the config's settings
        quantize = _quantize_run(kind, spec.quantize or cfg.backend.quantize)  # auto and what it resolves to
        drafts, lookup = _drafts_run(kind, quantize, spec.grammar_drafts, spec.prompt_lookup, cfg)
        key = (kind, quantize, drafts, lookup)
        if key not in backends:
            update = {"kind": kind, "quantize": quantize, "grammar_drafts": drafts, "prompt_lookup": lookup}
            backends[key] = backend_factory(cfg.model_copy(update={"backend": cfg.backend.model_copy(update=update)}))
        return backends[key]

    sem = asyncio.Semaphore(concurrency)

    async def one(item: tuple[Plan, str, DatasetSpec, EvalQuestion, str, set[str]], agent: Any, judge_by: Any) -> None:
        plan, domain, _ds, q, fp, gold = item
        async with sem:
            t0 = time.perf_counter()
            try:
                answer = await agent.aask(q.question, domain=domain, thread_id=f"eval-{fp[:16]}")
                wall = time.perf_counter() - t0
                verdict = await _judge(judge_by, judge.get(domain), q, answer) if suite.judge.enabled else None
            except UserError:
                raise  # a configuration problem: every question would fail the same way
            except Exception as e:
                store.put(plan.name, q.id, fp, "error", None, None, None, gold, f"{type(e).__name__}: {e}")
            else:
                store.put(plan.name, q.id, fp, "ok", answer.model_dump_json(), wall, verdict, gold)
            counter[0] += 1
            bar.advance(task)

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=not progress,
    )
    agents: dict[tuple[str, str], Any] = {}
    try:
        for plan, domain, *_ in pending:
            if (plan.name, domain) not in agents:
                plan_cfg = cfg
                if overrides := plan.spec.agent_overrides():
                    plan_cfg = cfg.model_copy(update={"agent": cfg.agent.model_copy(update=overrides)})
                agents[(plan.name, domain)] = agent_factory(
                    plan_cfg,
                    backend=backend_for(plan.spec.backend or cfg.backend.kind, plan.spec),
                    adapters=plan.adapters[domain],
                    retrieval_mode=plan.spec.retrieval,
                    checkpointer="memory",
                    use_critic=plan.spec.use_critic,
                )
        judge_backend = backend_for(cfg.backend.kind)
        for b in backends.values():
            await _warm_up(b)  # load weights and compile once, so the first configuration's latency is not inflated
        with bar:
            task = bar.add_task(
                f"{suite.name}: {len({p.name for p, *_ in pending})} configurations", total=len(pending)
            )
            await asyncio.gather(*(one(item, agents[(item[0].name, item[1])], judge_backend) for item in pending))
    finally:
        for agent in agents.values():
            agent.close()
        for b in backends.values():
            b.close()


def run_suite(
    suite: Suite,
    *,
    out: Path,
    config: Config | Path | str | None = None,
    configs: list[str] | None = None,
    limit: int | None = None,
    sample: int | None = None,
    concurrency: int | None = None,
    fresh: bool = False,
    progress: bool = False,
    console: Console | None = None,
    agent_factory: AgentFactory | None = None,
    backend_factory: BackendFactory | None = None,
) -> RunResult:
    """Run (or resume) ``suite`` into ``out``; returns every configuration's per-question results.

    ``limit``: the first N questions; ``sample``: N drawn with the suite's bootstrap seed (before ``limit``);
    ``fresh``: recompute everything. A KeyboardInterrupt keeps what was stored and is re-raised.
    """
    from rolora.adapters.registry import Registry
    from rolora.agents.types import Answer

    started = time.perf_counter()
    cfg = suite.resolve_config(config)
    names = suite.select_configs(configs)
    reference = suite.reference_of(names)
    questions = _choose(suite.load_questions(), limit, sample, suite.bootstrap.seed)
    if not questions:
        raise UserError(f"{suite.path}: no questions to run (--limit 0?)")
    domains = list(dict.fromkeys(ds.domain for ds, _ in questions))
    registry = Registry.from_config(cfg)
    judge: dict[str, str | None] = {}
    judge_notes: list[str] = []
    if suite.judge.enabled:
        for d in domains:
            ref, note = resolve_adapter(cfg, registry, suite.judge.adapter_domain or d, "critic", suite.judge.adapter)
            judge[d] = ref
            if note:
                judge_notes.append("judge " + note)
    plans = {n: _plan(suite, cfg, registry, n, domains, judge) for n in names}
    if judge_notes:
        for p in plans.values():
            p.notes.extend(judge_notes)

    retrievers = {d: _open_domain(cfg, d, console, progress) for d in domains}
    cache: dict[str, dict[str, list[Any]]] = {d: {} for d in domains}
    gold = [_gold_chunks(retrievers[ds.domain], q, cache[ds.domain]) for ds, q in questions]
    for r in retrievers.values():
        r.close()

    store = ResultStore(out / "results.sqlite")
    run_id = store.start_run({"configs": names, "limit": limit, "sample": sample, "fresh": fresh})
    pending = []
    reused = 0
    fps: dict[tuple[str, str], str] = {}
    stored = {n: store.fingerprints(n) for n in names}
    for (ds, q), g in zip(questions, gold, strict=True):  # interleaved: every configuration sees the same load
        for n in names:
            fp = _hash({"plan": plans[n].fingerprints[ds.domain], "question": q.model_dump(mode="json")})
            fps[(n, q.id)] = fp
            if not fresh and stored[n].get(q.id) == (fp, "ok"):
                reused += 1
            else:
                pending.append((plans[n], ds.domain, ds, q, fp, g))
    if console is not None:
        console.print(
            f"{suite.name}: {len(questions)} questions x {len(names)} configurations; "
            f"{reused} stored, {len(pending)} to run -> {out}"
        )
    counter = [0]
    try:
        if pending:
            asyncio.run(
                _run_pending(
                    suite,
                    cfg,
                    store,
                    pending,
                    judge,
                    concurrency or suite.concurrency,
                    progress,
                    console,
                    agent_factory or _default_agent_factory,
                    backend_factory or _default_backend_factory,
                    counter,
                )
            )
    except BaseException:
        store.finish_run(run_id, counter[0], reused)
        store.close()
        raise
    store.finish_run(run_id, counter[0], reused)

    results: dict[str, list[QuestionResult]] = {}
    for n in names:
        rows = store.rows(n)
        out_rows = []
        for (ds, q), g in zip(questions, gold, strict=True):
            row = rows.get(q.id)
            if row is None or row["fingerprint"] != fps[(n, q.id)]:
                raise RoloraRuntimeError(f"{store.path}: no result for {n}/{q.id} after the run; rerun to resume")
            ans = Answer.model_validate_json(row["answer"]) if row["answer"] else None
            out_rows.append(
                QuestionResult(
                    q,
                    ds.name or ds.path.name,
                    ds.domain,
                    row["status"],
                    ans,
                    row["wall_s"],
                    json.loads(row["judge"]) if row["judge"] else None,
                    set(json.loads(row["gold_chunks"])) or g,
                    row["error"],
                )
            )
        results[n] = out_rows
    store.close()
    return RunResult(
        suite,
        cfg,
        out,
        names,
        reference,
        questions,
        plans,
        judge,
        results,
        counter[0],
        reused,
        time.perf_counter() - started,
    )
