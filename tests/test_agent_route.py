"""The route node's relevance gate on the real sample index and the real embedder: a question far from every chunk
of the domain is refused before any model call (the slow graph tests run the same path with the real model)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLES, TEST_HOME, make_config

OFF_TOPIC = "What is the boiling point of liquid nitrogen in degrees Kelvin?"
ON_TOPIC = "What is the effective date of the Mutual Non-Disclosure Agreement?"


class _NoModel:
    """A backend that must not be reached."""

    name = "none"

    async def agenerate(self, requests: Sequence[Any]) -> list[Any]:
        raise AssertionError("the model was called")

    def close(self) -> None:
        return None


def _agent(tmp_path: Path, embedder: Any, **agent: Any) -> Any:
    from rolora.agents import Agent

    cfg = make_config(TEST_HOME, contracts={"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"]})
    cfg = cfg.model_copy(update={"agent": cfg.agent.model_copy(update={"checkpointer": "memory", **agent})})
    roles = {"query_writer": None, "analyst": None, "critic": None}
    return Agent.from_config(cfg, backend=_NoModel(), adapters=roles, embedder=embedder)


def test_off_topic_question_is_refused_before_any_model_call(
    examples_retriever: Any, embedder: Any, tmp_path: Path
) -> None:
    from rolora.agents.nodes.route import domain_relevance

    agent = _agent(tmp_path, embedder)
    try:
        answer = agent.ask(OFF_TOPIC, "contracts")
        on_topic = domain_relevance(agent.context, "contracts", ON_TOPIC)
    finally:
        agent.close()
    assert answer.not_found and answer.answer == "Not in the provided clauses." and answer.citations == []
    assert [s.node for s in answer.trace] == ["route", "finalise"]
    route = answer.trace[0].detail
    assert route["relevance"] < 0.25 < 0.4 < on_topic and "off topic for contracts" in route["off_topic"]
    assert any("agent.min_relevance" in c for c in answer.critique)


def test_min_relevance_zero_turns_the_gate_off(examples_retriever: Any, embedder: Any, tmp_path: Path) -> None:
    from rolora.errors import RoloraRuntimeError

    agent = _agent(tmp_path, embedder, min_relevance=0.0, min_evidence_similarity=0.0)
    try:
        with pytest.raises(RoloraRuntimeError, match="the model was called"):  # it went on to the analyst
            agent.ask(OFF_TOPIC, "contracts")
    finally:
        agent.close()


def test_past_the_route_the_evidence_gate_refuses_before_any_model_call(
    examples_retriever: Any, embedder: Any, tmp_path: Path
) -> None:
    """agent.min_evidence_similarity (default on): no sentence of the retrieved passages is near what the off-topic
    question asks, so it is refused after retrieval and still without a model call."""
    agent = _agent(tmp_path, embedder, min_relevance=0.0)
    try:
        answer = agent.ask(OFF_TOPIC, "contracts")
    finally:
        agent.close()
    assert answer.not_found and answer.answer == "Not in the provided clauses." and answer.citations == []
    assert [s.node for s in answer.trace][:3] == ["route", "retrieve", "analyse"] and answer.passages
    gate = next(s for s in answer.trace if s.node == "analyse")
    assert gate.role is None and "refused" in gate.detail["evidence_gate"]
    assert gate.detail["evidence_gate"]["similarity"] < gate.detail["evidence_gate"]["min_similarity"]
