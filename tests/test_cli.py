"""The ``rolora`` command line as a new user meets it: readable help in an 80-column terminal, ``--domain`` that
defaults to the config's only domain, and ``ask --resume --thread ID`` without a question."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from typer.testing import CliRunner

from rolora.cli import app

from conftest import EXAMPLES, TEST_HOME

runner = CliRunner()


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = [prefix]
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out += _commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def _all_commands() -> list[tuple[str, ...]]:
    import typer.main

    return _commands(typer.main.get_group(app))


@pytest.mark.parametrize("command", _all_commands(), ids=lambda c: " ".join(c) or "rolora")
def test_help_reads_well_in_80_columns(command: tuple[str, ...]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    # option help wrapped one word per line (what Rich's tables did at 80 columns) shows as runs of one-word lines
    one_word = [bool(line.strip()) and len(line.split()) == 1 and line.startswith(" " * 20) for line in lines]
    assert not any(a and b for a, b in itertools.pairwise(one_word)), result.output


def _write_config(tmp_path: Path, domains: dict[str, Any], **agent: Any) -> Path:
    path = tmp_path / "rolora.yaml"
    agent_cfg = {"checkpoint_path": str(tmp_path / "runs.sqlite"), **agent}
    path.write_text(yaml.safe_dump({"home": str(TEST_HOME), "domains": domains, "agent": agent_cfg}))
    return path


SAMPLE = {"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"]}


def test_domain_defaults_to_the_only_one_or_asks_for_it(tmp_path: Path, examples_retriever: Any) -> None:
    one = _write_config(tmp_path, {"contracts": SAMPLE})
    r = runner.invoke(app, ["search", "governing law of the loan agreement", "-k", "2", "-c", str(one)])
    assert r.exit_code == 0, r.output
    assert "in contracts" in r.output and "loan_agreement[" in r.output

    two = _write_config(tmp_path, {"contracts": SAMPLE, "leases": {"corpus": [str(EXAMPLES)]}})
    for args in (["search", "x"], ["ingest"], ["analyze", "nda_mutual"], ["train", "--role", "critic"]):
        r = runner.invoke(app, [*args, "-c", str(two)])
        assert r.exit_code != 0
        assert "several domains are configured (contracts, leases); choose one with --domain" in str(r.exception)


def test_ask_needs_a_question_or_resume(tmp_path: Path) -> None:
    cfg = _write_config(tmp_path, {"contracts": SAMPLE})
    r = runner.invoke(app, ["ask", "-c", str(cfg)])
    assert r.exit_code != 0 and "give a QUESTION, or --resume --thread ID" in str(r.exception)
    r = runner.invoke(app, ["ask", "--resume", "-c", str(cfg)])
    assert "--resume needs --thread ID" in str(r.exception)
    r = runner.invoke(app, ["ask", "a question", "--resume", "--thread", "t1", "-c", str(cfg)])
    assert "give no QUESTION with it" in str(r.exception)


def test_ask_sets_openmp_spinning_before_torch_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``rolora ask`` first calls :func:`rolora.hardware.spin_openmp_between_ops`, which sets libgomp's bounded
    spin-wait only where neither variable is set and torch has not loaded (libgomp reads them once, at load): checked
    in a fresh interpreter, before and after ``import torch``."""
    import subprocess
    import sys

    from rolora import hardware

    calls: list[int] = []
    monkeypatch.setattr(hardware, "spin_openmp_between_ops", lambda *a: calls.append(1) or False)
    runner.invoke(app, ["ask", "-c", str(_write_config(tmp_path, {"contracts": SAMPLE}))])
    assert calls == [1]
    code = (
        "from rolora.hardware import spin_openmp_between_ops as spin\n"
        "env = {}\nprint(spin(env), sorted(env.items()))\n"
        "user = {'OMP_WAIT_POLICY': 'PASSIVE'}\nprint(spin(user), user)\n"
        "import torch\nprint(spin({}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in hardware.OPENMP_SPIN}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.splitlines() == [
        "True [('GOMP_SPINCOUNT', '30000'), ('OMP_WAIT_POLICY', 'ACTIVE')]",
        "False {'OMP_WAIT_POLICY': 'PASSIVE'}",
        "False",
    ]


@pytest.mark.slow
def test_ask_resume_thread_without_a_question(tmp_path: Path, examples_retriever: Any, generator_dir: Path) -> None:
    """The README's ``rolora ask --resume --thread ID``: an unknown thread is one clear error; a finished run prints
    its answer again from the checkpoint (a real SQLite file) without running a node."""
    cfg = _write_config(tmp_path, {"contracts": SAMPLE}, max_iterations=1, use_critic=False, max_queries=1, k=3)
    r = runner.invoke(app, ["ask", "--resume", "--thread", "nope", "-c", str(cfg), "--base"])
    assert r.exit_code != 0 and "no run with thread id 'nope'" in str(r.exception)

    question = "What is the effective date of the Mutual Non-Disclosure Agreement?"
    first = runner.invoke(app, ["ask", question, "--thread", "t-cli", "--base", "--json", "-c", str(cfg)])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["ask", "--resume", "--thread", "t-cli", "--base", "--json", "-c", str(cfg)])
    assert again.exit_code == 0, again.output
    assert again.stdout == first.stdout  # the same stored answer, not a new run


def test_ask_says_how_a_step_decided_without_a_model_call_was_decided() -> None:
    """The step lines of `rolora ask` name the typed reader, a yes/no verdict and an evidence-gate refusal (no model
    call, so no role or adapter to show)."""
    from rolora.cli.ask import _step_line

    typed = {"node": "analyse", "latency_s": 0.7, "detail": {"typed_reader": {"kind": "law", "similarity": 0.42}}}
    verdict = {"node": "analyse", "latency_s": 0.1, "detail": {"yes_no": {"verdict": "Not mentioned"}}}
    refused = {"node": "analyse", "latency_s": 0.1, "detail": {"evidence_gate": {"refused": "no sentence ..."}}}
    modelled = {
        "node": "analyse",
        "role": "analyst",
        "adapter": "contracts-analyst@1",
        "backend": "inprocess",
        "latency_s": 3.0,
        "detail": {"evidence_gate": {"similarity": 0.6}},
    }
    assert "typed reader: the law" in _step_line(typed)
    assert "yes/no verdict Not mentioned" in _step_line(verdict)
    assert "refused" in _step_line(refused)
    line = _step_line(modelled)
    assert "contracts-analyst@1" in line and "no model call" not in line
