"""The runner's bookkeeping with a stand-in agent, beside the real-model run in test_eval_run.py: what is stored,
what a rerun recomputes (missing, failed or changed answers), --fresh, and a configuration error that stops the run.
The index, the gold chunks and the results database are real."""

from __future__ import annotations

import sqlite3
from collections.abc import Set
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from rolora.adapters.serving.base import GenerationResult
from rolora.agents.types import Answer, PassageRef
from rolora.errors import UserError
from rolora.evals.runner import run_suite
from rolora.evals.suite import load_suite

from conftest import EXAMPLES, TEST_HOME, make_config


class StandInBackend:
    name = "stand-in"

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.closed = False

    async def agenerate(self, requests: Any) -> list[GenerationResult]:
        self.requests.extend(requests)
        return [
            GenerationResult(
                '{"verdict": "supported", "reasons": []}',
                {"verdict": "supported", "reasons": []},
                10,
                5,
                "stop",
                0.01,
                r.adapter,
                "stand-in",
            )
            for r in requests
        ]

    def close(self) -> None:
        self.closed = True


class StandInAgent:
    """Answers every question from the first chunk of its contract; fails on the questions in ``fail``."""

    asked: ClassVar[list[str]] = []

    def __init__(self, config: Any, *, fail: Set[str], raise_user_error: bool = False, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.fail = fail
        self.raise_user_error = raise_user_error

    async def aask(self, question: str, domain: str | None = None, *, thread_id: str | None = None) -> Answer:
        StandInAgent.asked.append(question)
        if self.raise_user_error:
            raise UserError("adapters: no such adapter")
        if question in self.fail:
            raise RuntimeError("the analyst fell over")
        p = PassageRef(doc_id="nda_mutual", start=0, end=100, text="x" * 100, chunk_id="c0")
        adapters = {r: (a or "base") for r, a in self.kwargs["adapters"].items()}
        return Answer(question=question, domain=domain or "", answer="yes", not_found=False, passages=[p],
                      adapters=adapters)  # fmt: skip

    def close(self) -> None:
        pass


@pytest.fixture
def suite_file(tmp_path: Path) -> Path:
    data = yaml.safe_load((Path(__file__).parents[1] / "evals" / "suites" / "contracts.yaml").read_text())
    data["domains"]["contracts"]["corpus"] = [str(EXAMPLES)]
    data["datasets"][0]["path"] = str(EXAMPLES / "qa.jsonl")
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_rerun_recomputes_only_missing_failed_or_changed_answers(
    suite_file: Path, tmp_path: Path, examples_retriever: Any
) -> None:
    cfg = make_config(TEST_HOME, contracts={"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"]})
    suite = load_suite(suite_file)
    questions = [q for _, q in suite.load_questions()][:3]
    backends: list[StandInBackend] = []

    def run(fail: frozenset[str] = frozenset(), **kw: Any) -> Any:
        StandInAgent.asked = []

        def backend_factory(config: Any) -> StandInBackend:
            backends.append(StandInBackend())
            return backends[-1]

        return run_suite(
            kw.pop("suite", suite),
            out=tmp_path / "out",
            config=cfg,
            configs=["base", "lexical"],
            limit=3,
            agent_factory=lambda config, **a: StandInAgent(config, fail=fail, **a),
            backend_factory=backend_factory,
            **kw,
        )

    first = run(fail=frozenset({questions[1].question}))
    assert (first.computed, first.reused) == (6, 0)
    assert [r.status for r in first.results["base"]] == ["ok", "error", "ok"]
    assert first.results["base"][1].error == "RuntimeError: the analyst fell over"
    assert first.results["lexical"][0].answer is not None
    assert first.results["base"][0].judge == {"verdict": "supported", "reasons": [], "adapter": "base"}
    assert first.results["base"][0].gold_chunks  # real chunks of the real index overlap the gold span
    assert all(b.closed for b in backends)
    # the failed answers (one per configuration) are retried; the others are kept
    second = run()
    assert (second.computed, second.reused) == (2, 4)
    assert StandInAgent.asked == [questions[1].question] * 2
    assert all(r.status == "ok" for rs in second.results.values() for r in rs)
    # nothing missing: no agent, no backend
    n_backends = len(backends)
    third = run()
    assert (third.computed, third.reused) == (0, 6) and len(backends) == n_backends
    # a changed configuration is recomputed, the other one kept
    suite.configurations["lexical"].retrieval = "dense"
    fourth = run()
    assert (fourth.computed, fourth.reused) == (3, 3)
    assert (run(fresh=True).computed, len(StandInAgent.asked)) == (6, 6)
    con = sqlite3.connect(tmp_path / "out" / "results.sqlite")
    assert con.execute("SELECT COUNT(*) FROM results").fetchone() == (6,)
    assert [r[0] for r in con.execute("SELECT computed FROM runs ORDER BY id")] == [6, 2, 0, 3, 6]
    con.close()


def test_a_configuration_error_stops_the_run(suite_file: Path, tmp_path: Path, examples_retriever: Any) -> None:
    cfg = make_config(TEST_HOME, contracts={"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"]})
    with pytest.raises(UserError, match="no such adapter"):
        run_suite(
            load_suite(suite_file),
            out=tmp_path / "out",
            config=cfg,
            configs=["base"],
            limit=2,
            agent_factory=lambda config, **a: StandInAgent(config, fail=set(), raise_user_error=True, **a),
            backend_factory=lambda config: StandInBackend(),
        )
