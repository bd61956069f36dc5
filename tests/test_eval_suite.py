"""Eval datasets and suites: validation with one-line errors naming the line or key, held-out selection, every
shipped suite loads."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from rolora.adapters.data.base import doc_split
from rolora.errors import ConfigError, UserError
from rolora.evals.datasets import load_dataset, select_questions
from rolora.evals.suite import load_suite, parse_tolerance

from conftest import EXAMPLES, REPO, make_config

SUITES = sorted((REPO / "evals" / "suites").rglob("*.yaml"))


def write_suite(tmp_path: Path, data: dict[str, Any], name: str = "suite.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def minimal(**over: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "t",
        "datasets": [{"path": str(EXAMPLES / "qa.jsonl"), "domain": "contracts"}],
        "configurations": {"base": {"adapters": "base"}, "adapters": {"adapters": "promoted"}},
    }
    data.update(over)
    return data


# -- datasets --------------------------------------------------------------------------------------------------------
def test_examples_dataset_loads() -> None:
    qs = load_dataset(EXAMPLES / "qa.jsonl")
    assert len(qs) == 96 and sum(not q.answerable for q in qs) == 18
    assert qs[0].gold_spans == [("nda_mutual", 33, 148)] and qs[0].contract == "nda_mutual"


def test_bad_lines_are_reported_by_number_in_one_line(tmp_path: Path) -> None:
    good = {"id": "a", "question": "Q?", "answers": ["x"], "evidence": [{"doc_id": "d", "start": 0, "end": 5}],
            "answerable": True}  # fmt: skip
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({k: v for k, v in good.items() if k != "question"} | {"id": "b"}),
        json.dumps(good | {"id": "c", "evidence": [{"doc_id": "d", "start": 9, "end": 3}]}),
        json.dumps(good),  # repeats id "a"
        json.dumps(good | {"id": "e", "answerable": False}),  # unanswerable with evidence
        json.dumps(good | {"id": "f", "evidense": []}),
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        load_dataset(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path))
    for expected in ("line 2: not JSON", "line 3: question: missing", "line 4: evidence.0: end (3) must be greater",
                     "line 5: id 'a' repeats line 1", "line 6: answerable is false but evidence is given"):  # fmt: skip
        assert expected in msg, msg
    assert "(and 1 more bad lines)" in msg


def test_missing_dataset_and_empty_dataset(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="dataset not found"):
        load_dataset(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(UserError, match="no questions"):
        load_dataset(tmp_path / "empty.jsonl")


def test_select_questions_keeps_only_the_test_split_and_a_fixed_sample() -> None:
    qs = load_dataset(EXAMPLES / "qa.jsonl")
    test = select_questions(qs, split=["test"])
    assert test and all(doc_split(q.contract) == "test" for q in test)
    assert {q.contract for q in qs if doc_split(q.contract) == "test"} == {q.contract for q in test}
    one = select_questions(qs, contracts=3, answerable_per_contract=2, unanswerable_per_contract=1, seed=7)
    assert one == select_questions(qs, contracts=3, answerable_per_contract=2, unanswerable_per_contract=1, seed=7)
    per = Counter((q.contract, q.answerable) for q in one)
    assert len({c for c, _ in per}) == 3
    assert all(n <= (2 if answerable else 1) for (_, answerable), n in per.items())
    order = [q.id for q in qs]
    assert [q.id for q in one] == sorted((q.id for q in one), key=order.index)  # file order kept


# -- suites ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", SUITES, ids=[p.name for p in SUITES])
def test_every_shipped_suite_loads_and_selects_questions(path: Path, request: pytest.FixtureRequest) -> None:
    suite = load_suite(path)
    if suite.data_dir_env:  # a suite on external data (CUAD): skipped, with the reason, when it is absent
        request.getfixturevalue("cuad_dir")
    questions = suite.load_questions()
    assert questions
    cfg = suite.resolve_config(make_config(Path("/tmp/unused-home")))
    for ds, q in questions:
        assert ds.domain in cfg.domains
        if ds.split is not None:  # held out: no contract of the training split is evaluated
            assert doc_split(q.contract, ds.split_seed, ds.split_validation, ds.split_test) in ds.split
    assert set(suite.select_configs(None)) <= set(suite.configurations)
    assert {"base", "adapters"} <= set(suite.configurations)


def test_cuad_suite_is_a_fixed_held_out_sample_of_contracts(cuad_dir: Path) -> None:
    suite = load_suite(REPO / "evals" / "suites" / "cuad.yaml")
    first = [q.id for _, q in suite.load_questions()]
    assert first == [q.id for _, q in suite.load_questions()]  # fixed
    qs = [q for _, q in suite.load_questions()]
    contracts = {q.contract for q in qs}
    assert len(contracts) == 28
    assert sum(q.answerable for q in qs) >= 100  # enough to show a difference
    assert all(doc_split(c) == "test" for c in contracts)
    train = {q.contract for q in load_dataset(cuad_dir / "qa.jsonl") if doc_split(q.contract) == "train"}
    assert not contracts & train
    assert any(not q.answerable for q in qs) and any(q.answerable for q in qs)
    cfg = suite.resolve_config(make_config(Path("/tmp/unused-home")))
    assert cfg.domains["cuad"].corpus == [(cuad_dir / "contracts").resolve()]


def test_data_dir_env_overrides_and_a_missing_folder_says_which_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "qa.jsonl").write_text((EXAMPLES / "qa.jsonl").read_text())
    path = write_suite(
        tmp_path,
        minimal(data_dir="nowhere", data_dir_env="MY_DATA", datasets=[{"path": "qa.jsonl", "domain": "contracts"}]),
    )
    monkeypatch.delenv("MY_DATA", raising=False)
    with pytest.raises(ConfigError, match=r"data_dir resolves to .*nowhere.*set MY_DATA"):
        load_suite(path).load_questions()
    monkeypatch.setenv("MY_DATA", str(tmp_path / "data"))
    assert len(load_suite(path).load_questions()) == 96


def test_suite_errors_are_one_line_naming_the_key(tmp_path: Path) -> None:
    bad = minimal()
    bad["configurations"]["base"]["retrievl"] = "dense"
    bad["configurations"]["adapters"]["retrieval"] = "bm25"
    with pytest.raises(ConfigError) as e:
        load_suite(write_suite(tmp_path, bad))
    msg = str(e.value)
    assert "\n" not in msg
    assert "configurations.base.retrievl: unknown key; remove it or check the spelling" in msg
    assert "configurations.adapters.retrieval: Input should be 'dense', 'lexical' or 'hybrid'" in msg


def test_suite_cross_checks_report_everything_at_once(tmp_path: Path) -> None:
    bad = minimal(
        default_configs=["base", "nope"],
        reference="ghost",
        gate={"metrics": {"answer.token_f2": 0.1, "answer.token_f1": "ten percent"}},
        metrics={"headline": ["retrieval.span_recall@7"]},
    )
    with pytest.raises(ConfigError) as e:
        load_suite(write_suite(tmp_path, bad))
    msg = str(e.value)
    for expected in (
        "default_configs: 'nope' is not in configurations",
        "reference: 'ghost' is not in configurations",
        "gate.metrics: unknown metric 'answer.token_f2'",
        "gate.metrics.answer.token_f1: tolerance 'ten percent' must be a number or a percentage",
        "metrics.headline: unknown metric 'retrieval.span_recall@7'",
    ):
        assert expected in msg, msg


def test_unknown_configuration_on_the_command_line(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path, minimal()))
    assert suite.select_configs(["adapters", "base", "adapters"]) == ["adapters", "base"]
    with pytest.raises(ConfigError, match=r"configuration lexical is not in configurations .*check --configs"):
        suite.select_configs(["base", "lexical"])


def test_suite_domains_are_laid_over_the_config_keeping_role_bindings(tmp_path: Path) -> None:
    data = minimal(domains={"contracts": {"corpus": ["corpus-here"], "exclude": ["x*"]}}, agent={"max_iterations": 1})
    suite = load_suite(write_suite(tmp_path, data))
    base = make_config(tmp_path, contracts={"corpus": ["/elsewhere"], "roles": {"analyst": {"adapter": "my-analyst"}}})
    cfg = suite.resolve_config(base)
    dom = cfg.domains["contracts"]
    assert dom.corpus == [(tmp_path / "corpus-here").resolve()]
    assert dom.exclude == ["x*"]
    assert dom.roles["analyst"].adapter == "my-analyst"
    assert cfg.agent.max_iterations == 1
    assert base.domains["contracts"].corpus == [Path("/elsewhere")]  # the caller's config is untouched
    bad = load_suite(write_suite(tmp_path, minimal(agent={"max_iterations": 0}), "bad.yaml"))
    with pytest.raises(ConfigError, match=r"bad.yaml: agent.max_iterations: Input should be greater"):
        bad.resolve_config(base)
    nodomain = load_suite(write_suite(tmp_path, minimal(), "nodomain.yaml"))
    with pytest.raises(ConfigError, match=r"datasets.0.domain 'contracts' is neither in the suite's domains"):
        nodomain.resolve_config(make_config(tmp_path))


def test_tolerances() -> None:
    assert parse_tolerance(0.05) == (0.05, False)
    assert parse_tolerance("10%") == (pytest.approx(0.10), True)
    with pytest.raises(ValueError):
        parse_tolerance("10")


def test_newer_configuration_fields_are_runs_of_their_own_and_leave_older_fingerprints_alone(tmp_path: Path) -> None:
    """``quantize: int8`` (int8 base weights), ``k: 3`` (three passages), ``declined_answer``, ``short_answers``,
    ``typed_reader``, ``yes_no`` and ``min_evidence_similarity`` ask the same questions: each a run of its own
    (another fingerprint), while a configuration that sets none of them keeps the fingerprint it had before they
    existed."""
    import hashlib

    from rolora.config import Config
    from rolora.evals.runner import FIELDS_ADDED_LATER, _plan

    data = minimal()
    data["configurations"] = {
        "base": {"adapters": "base"},
        "int8": {"adapters": "base", "quantize": "int8"},
        "k3": {"adapters": "base", "k": 3},
        "nearest": {"adapters": "base", "declined_answer": "nearest"},
        "long": {"adapters": "base", "short_answers": False},
        "modelled": {"adapters": "base", "typed_reader": False},
        "extractive": {"adapters": "base", "yes_no": False},
        "ungated": {"adapters": "base", "min_evidence_similarity": 0},
    }
    suite = load_suite(write_suite(tmp_path, data))
    plain = {"home": str(tmp_path / "home"), "domains": {"contracts": {"corpus": []}}}
    cfg = Config.model_validate({**plain, "backend": {"quantize": "none"}})
    names = ("base", "int8", "k3", "nearest", "long", "modelled", "extractive", "ungated")
    fp = {n: _plan(suite, cfg, None, n, ["contracts"], {}).fingerprints["contracts"] for n in names}
    assert len(set(fp.values())) == len(names)
    assert suite.configurations["k3"].agent_overrides() == {"k": 3}  # the agent reads 3 passages
    assert suite.configurations["nearest"].agent_overrides() == {"declined_answer": "nearest"}
    assert suite.configurations["long"].agent_overrides() == {"short_answers": False}
    assert suite.configurations["extractive"].agent_overrides() == {"yes_no": False}
    assert suite.configurations["ungated"].agent_overrides() == {"min_evidence_similarity": 0}
    spec = suite.configurations["base"]
    before = {  # what the fingerprint hashed before quantize existed
        "spec": spec.model_dump(
            mode="json",
            exclude={"description", *FIELDS_ADDED_LATER},
        ),
        "adapters": {r: None for r in spec.role_choices()},
        "models": cfg.models.model_dump(mode="json"),
        "retrieval": cfg.retrieval.model_dump(mode="json"),
        "backend": cfg.backend.kind,
        "agent": cfg.agent.model_dump(mode="json", exclude={"checkpointer", "checkpoint_path", "postgres_url"}),
        "judge": "off",
    }
    stored = hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()
    decoding_before = {"quantize": "none", "grammar_drafts": False, "prompt_lookup": 0, "few_rows_onednn": False}
    one_token_a_step = Config.model_validate({**plain, "backend": decoding_before})
    assert _plan(suite, one_token_a_step, None, "base", ["contracts"], {}).fingerprints["contracts"] == stored
    # oneDNN's kernel for products of a few rows (batched decoding steps under the eval's concurrency): its own runs
    on_onednn = Config.model_validate({**plain, "backend": {**decoding_before, "few_rows_onednn": True}})
    assert _plan(suite, on_onednn, None, "base", ["contracts"], {}).fingerprints["contracts"] != stored
    # an adapter merged into the packed weights of its decoding steps: its sums add in yet another order
    unmerged = Config.model_validate(
        {**plain, "backend": {**decoding_before, "few_rows_onednn": True, "merged_adapters": 0}}
    )
    assert (
        _plan(suite, unmerged, None, "base", ["contracts"], {}).fingerprints["contracts"]
        != _plan(suite, on_onednn, None, "base", ["contracts"], {}).fingerprints["contracts"]
        != stored
    )
    assert fp["base"] != stored  # decoded with drafts (the defaults): not the stored runs' decoding
    # backend.quantize: auto (the default) is fingerprinted as what it runs on this CPU: bf16 runs are runs of their own
    from rolora.adapters.serving.quantize import resolve_quantize

    auto = _plan(suite, Config.model_validate(plain), None, "base", ["contracts"], {}).fingerprints["contracts"]
    ran = Config.model_validate({**plain, "backend": {"quantize": resolve_quantize("auto")}})
    assert auto == _plan(suite, ran, None, "base", ["contracts"], {}).fingerprints["contracts"]
    assert (auto == fp["base"]) == (resolve_quantize("auto") == "none")
    vllm = {**plain, "backend": {"kind": "vllm"}}  # auto means nothing there: the fingerprint of none
    assert (
        _plan(suite, Config.model_validate(vllm), None, "base", ["contracts"], {}).fingerprints["contracts"]
        == _plan(
            suite,
            Config.model_validate({**vllm, "backend": {"kind": "vllm", "quantize": "none"}}),
            None,
            "base",
            ["contracts"],
            {},
        ).fingerprints["contracts"]
    )

    # backend.prompt_lookup can flip a near tie: its runs are runs of their own in-process, and mean nothing on vLLM
    def fingerprint(backend: dict[str, Any]) -> str:
        cfg = Config.model_validate({**plain, "backend": backend})
        return _plan(suite, cfg, None, "base", ["contracts"], {}).fingerprints["contracts"]

    # (as can backend.grammar_drafts; both on by default)
    assert fingerprint({"quantize": "none", "prompt_lookup": 10, "grammar_drafts": True}) == fp["base"]
    assert fingerprint({"quantize": "none", "prompt_lookup": 0}) != fp["base"]
    assert fingerprint({"quantize": "none", "prompt_lookup": 4}) != fp["base"]
    assert fingerprint({"quantize": "none", "grammar_drafts": False}) != fp["base"]
    assert fingerprint({"kind": "vllm", "prompt_lookup": 0, "grammar_drafts": False}) == fingerprint({"kind": "vllm"})
    # under int8 decoding the backend drafts nothing (a pass's activations are quantized together)
    assert fingerprint({"quantize": "int8", "prompt_lookup": 0, "grammar_drafts": False}) == fingerprint(
        {"quantize": "int8"}
    )
    data["configurations"]["int8"]["quantize"] = "int4"
    with pytest.raises(ConfigError, match=r"configurations\.int8\.quantize"):
        load_suite(write_suite(tmp_path, data, "bad.yaml"))
