"""`make demo` as a new user runs it, in-process: the example domain's shipped adapters (examples/adapters/) are
installed and promoted, and `rolora ask` answers the demo's questions on them, correctly, citing the right clause.

The demo's contracts are in the validation split of the adapters' data (doc_split seed 0): the shipped analyst
never trained on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLES, REPO, TEST_HOME, copy_index

pytestmark = pytest.mark.slow

SHIPPED = REPO / "examples" / "adapters"
# (question as `make demo` asks it, contract, words the answer must hold, text inside the clause it must cite)
DEMO = [
    (
        "Which law governs the Mutual Non-Disclosure Agreement?",
        "nda_mutual",
        ("new york",),
        "governed by and construed in accordance with the laws of the State of New York",
    ),
]


def _makefile_questions() -> list[str]:
    lines = (REPO / "Makefile").read_text(encoding="utf-8").split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    return [line.split('rolora ask "', 1)[1].split('"', 1)[0] for line in lines.splitlines() if "rolora ask" in line]


def test_the_demo_asks_these_questions() -> None:
    assert _makefile_questions() == [q for q, *_ in DEMO]
    assert "rolora adapters install examples/adapters/contracts-*/" in (REPO / "Makefile").read_text()


def test_shipped_adapters_are_small_complete_and_clean() -> None:
    folders = sorted(p for p in SHIPPED.iterdir() if p.is_dir())
    assert [p.name for p in folders][:1] == ["contracts-analyst"]
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        assert (folder / "adapter_model.safetensors").stat().st_size <= 8 * 2**20
        assert {"adapter_config.json", "data_card.json", "gate_report.md"} <= set(manifest["files"])
        assert manifest["gates"]["passed"] and manifest["dtype"] == "bfloat16"
        assert manifest["training_config"]["r"] <= 16
        text = "".join(p.read_text(encoding="utf-8") for p in folder.iterdir() if p.suffix in {".json", ".md"})
        assert "/work/" not in text and "/tmp/" not in text and "/home/" not in text  # no path of a machine
        card = json.loads((folder / "data_card.json").read_text())
        assert not set(card["documents"]["train"]) & {d for _, d, *_ in DEMO}  # the demo asks about unseen contracts


@pytest.fixture(scope="module")
def demo_config(examples_retriever: Any, generator_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh home as `make demo` leaves it before `rolora ask`: the examples ingested, the adapters installed."""
    from rolora.cli import app

    home = tmp_path_factory.mktemp("demo-home")
    copy_index(TEST_HOME / "indexes" / examples_retriever.domain, home / "indexes" / "contracts")
    config = home / "rolora.yaml"
    config.write_text(
        f"home: {home}\nmodels:\n  generator: {generator_dir}\n"
        f"domains:\n  contracts:\n    corpus: [{EXAMPLES}]\n    exclude: ['qa*.jsonl', 'README*']\n"
        "    roles:\n      query_writer: {adapter: contracts-query-writer}\n"
        "      analyst: {adapter: contracts-analyst}\n      critic: {adapter: contracts-critic}\n",
        encoding="utf-8",
    )
    folders = [str(p) for p in sorted(SHIPPED.glob("contracts-*")) if p.is_dir()]
    runner = CliRunner()
    for _ in range(2):  # installing twice registers nothing new
        done = runner.invoke(app, ["adapters", "install", *folders, "--config", str(config)])
        assert done.exit_code == 0, done.output
    listed = runner.invoke(app, ["adapters", "list", "--config", str(config)], env={"COLUMNS": "200"})
    assert listed.output.count("promoted") == len(folders) and "@2" not in listed.output
    return config


def _ask(config: Path, question: str) -> dict[str, Any]:
    from rolora.cli import app

    out = CliRunner().invoke(app, ["ask", question, "--json", "--config", str(config)])
    assert out.exit_code == 0, out.output
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


@pytest.fixture(scope="module")
def demo_answers(demo_config: Path) -> dict[str, dict[str, Any]]:
    return {q: _ask(demo_config, q) for q, *_ in DEMO}


@pytest.fixture(scope="module")
def analyst_answers(demo_config: Path) -> dict[str, dict[str, Any]]:
    """The demo's questions asked of the shipped analyst itself: ``agent.typed_reader`` off, so a question asking for
    a typed value (the governing law) is not read from the passages without a model call."""
    config = demo_config.with_name("rolora-analyst.yaml")
    config.write_text(demo_config.read_text(encoding="utf-8") + "agent:\n  typed_reader: false\n", encoding="utf-8")
    return {q: _ask(config, q) for q, *_ in DEMO}


@pytest.mark.parametrize(("question", "doc_id", "words", "clause"), DEMO)
def test_demo_runs_on_the_shipped_adapters_and_cites_the_named_contract(
    analyst_answers: dict[str, dict[str, Any]], question: str, doc_id: str, words: tuple[str, ...], clause: str
) -> None:
    """Before the shipped adapters every role ran on the base model and the answer cited the supply agreement."""
    answer = analyst_answers[question]
    served = {s["role"]: s["adapter"] for s in answer["trace"] if s.get("role")}
    assert served["analyst"].startswith("contracts-analyst@"), served  # the shipped adapter, not the base model
    assert answer["adapters"]["analyst"] == served["analyst"]
    # asked in the output format it was trained on (the registry's record of the installed manifest)
    trained = json.loads((SHIPPED / "contracts-analyst" / "manifest.json").read_text())["training_config"]
    assert {s["detail"]["format"] for s in answer["trace"] if s["node"] == "analyse"} == {
        trained.get("analyst_format", "quote")
    }
    cites = [c for c in answer["citations"] if c["verified"]]
    assert not answer["not_found"] and cites and all(c["doc_id"] == doc_id for c in cites), answer["citations"]
    retrieve = next(s for s in answer["trace"] if s["node"] == "retrieve" and not s.get("role"))
    source = (EXAMPLES / f"{doc_id}.txt").read_text(encoding="utf-8")
    lo = source.index(clause)
    assert any(  # the deciding clause is among the passages the analyst read
        int(p.split("[")[1].split(":")[0]) <= lo < int(p.split(":")[1].rstrip("]"))
        for p in retrieve["detail"]["passages"]
        if p.startswith(f"{doc_id}[")
    ), retrieve["detail"]["passages"]


@pytest.mark.parametrize("reader", ["typed reader (the default)", "the shipped analyst"])
@pytest.mark.parametrize(("question", "doc_id", "words", "clause"), DEMO)
def test_demo_answer_is_correct_and_cites_the_deciding_clause(
    demo_answers: dict[str, dict[str, Any]],
    analyst_answers: dict[str, dict[str, Any]],
    reader: str,
    question: str,
    doc_id: str,
    words: tuple[str, ...],
    clause: str,
) -> None:
    """By default the governing-law question is read without a model call (agent.typed_reader): the passages'
    sentence nearest it that names a law is cited and the law it names is the answer. Asked of the shipped analyst,
    it names sentence 1 of passage 1 (the NDA's whistleblower notice) and declines; with the defaults chosen on the
    validation split (three passages, a declined answer replaced by the passages' sentence nearest the question,
    shortened to the law it names) the governing-law clause answers, cited. Both answer with the law alone."""
    answer = (demo_answers if reader.startswith("typed") else analyst_answers)[question]
    analyse = [s for s in answer["trace"] if s["node"] == "analyse"]
    if reader.startswith("typed"):
        assert [s["detail"]["typed_reader"]["kind"] for s in analyse] == ["law"] and not analyse[0].get("role")
        route = next(s for s in answer["trace"] if s["node"] == "route")
        assert route["detail"]["adapters"]["analyst"].startswith("contracts-analyst@")  # bound, not needed here
    assert all(w in answer["answer"].lower() for w in words), answer["answer"]
    assert len(answer["answer"].split()) <= 6, answer["answer"]  # the law, not the clause
    source = (EXAMPLES / f"{doc_id}.txt").read_text(encoding="utf-8")
    lo = source.index(clause)
    hi = lo + len(clause)
    assert any(c["verified"] and c["start"] < hi and lo < c["end"] for c in answer["citations"])
