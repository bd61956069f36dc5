"""``rolora train`` end to end on the sample corpus: data -> LoRA -> role metric -> gates -> registry, then the CLI."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import EXAMPLES, TEST_HOME, copy_index, make_config


@pytest.mark.slow
def test_train_role_registers_a_gated_candidate(embedder: Any, generator_dir: Any, examples_retriever: Any) -> None:
    """On its own domain name (``ptest``), so its adapters never mix with ``contracts-*`` ones in the test home; its
    index starts as a copy of the session's index of the same corpus (the ingest below then finds nothing new)."""
    from rolora.adapters.pipeline import train_role
    from rolora.adapters.train import TrainConfig
    from rolora.cli import app
    from rolora.retrieval import Retriever

    cfg = make_config(
        TEST_HOME, ptest={"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"], "qa": str(EXAMPLES / "qa.jsonl")}
    )
    index = TEST_HOME / "indexes" / "ptest"
    if not (index / "manifest.json").is_file():
        shutil.rmtree(index, ignore_errors=True)
        copy_index(TEST_HOME / "indexes" / examples_retriever.domain, index)
    Retriever("ptest", cfg, embedder=embedder).ingest(progress=False)  # incremental: unchanged files are kept
    tc = TrainConfig(
        max_steps=4,
        eval_steps=2,
        batch_size=4,
        grad_accum=1,
        max_length=384,
        learning_rate=1e-3,
        r=8,
        alpha=16,
        max_eval_examples=4,  # the validation loss at each evaluation on 4 of the split's rows (all: ~12 s more)
        role_eval_rows=3,  # the role metric at each evaluation picks the checkpoint (what `rolora train` does)
        role_eval_probe_texts=8,  # forgetting watched beside it on 8 probe texts (default: all 220, ~36 s each)
        target_modules=["q_proj", "v_proj"],  # 60 matrices for the intruder gate's SVDs instead of 210 (~40 s)
    )
    run = train_role(cfg, "ptest", "query_writer", train_config=tc, eval_limit=6, probe_limit=10, progress=False)
    rec = run.record
    assert rec.name == "ptest-query-writer" and rec.stage == "candidate" and rec.role == "query_writer"
    assert rec.data_card_hash == run.data_card.digest and rec.training_config["max_steps"] == 4
    names = {g["name"] for g in rec.gates["gates"]}
    assert {"val_perplexity", "forgetting", "intruder_dimensions", "role_metric"} <= names
    assert set(rec.metrics["role"]) == {"tuned", "base"} and "gold_recall@5" in rec.metrics["role"]["base"]
    assert (rec.path / "adapter_model.safetensors").is_file() and (rec.path / "loss_curve.png").is_file()
    curve = rec.metrics["train"]["learning_curve"]  # the role metric vs minutes, kept with the adapter
    assert [p["step"] for p in curve] == [2, 4] and all("gold_recall@5" in p for p in curve)
    assert (rec.path / "learning_curve.png").is_file() and (rec.path / "learning_curve.json").is_file()

    config_file = TEST_HOME / "pipeline-test.yaml"
    config_file.write_text(
        f"home: {TEST_HOME}\ndomains:\n  ptest:\n    corpus: [{EXAMPLES}]\n    exclude: ['qa*.jsonl']\n"
        f"    roles:\n      query_writer: {{adapter: ptest-query-writer}}\n"
    )
    runner = CliRunner()
    listed = runner.invoke(app, ["adapters", "list", "--config", str(config_file)], env={"COLUMNS": "200"})
    assert listed.exit_code == 0 and rec.ref in listed.output
    shown = runner.invoke(app, ["adapters", "show", rec.ref, "--config", str(config_file)])
    assert shown.exit_code == 0 and json.loads(shown.output)["version"] == rec.version
    if rec.gates["passed"]:
        promoted = runner.invoke(app, ["adapters", "promote", rec.ref, "--config", str(config_file)])
    else:  # a refused promotion names the failed gate; --force overrides it
        refused = runner.invoke(app, ["adapters", "promote", rec.ref, "--config", str(config_file)])
        assert refused.exit_code != 0
        promoted = runner.invoke(app, ["adapters", "promote", rec.ref, "--force", "--config", str(config_file)])
    assert promoted.exit_code == 0, promoted.output
    mods = runner.invoke(
        app, ["adapters", "export", "--vllm", "ptest", "--config", str(config_file)], env={"COLUMNS": "400"}
    )
    assert mods.exit_code == 0 and f"{rec.ref}=" in mods.output.replace("\n", "")

    # the gates again, on the same data (e.g. after a change of decoding): same validation perplexity
    before = {g["name"]: g["figures"] for g in rec.gates["gates"]}
    again = runner.invoke(
        app, ["adapters", "gate", rec.ref, "--eval-limit", "6", "--probe-limit", "10", "--config", str(config_file)]
    )
    assert again.exit_code == 0, again.output
    after = {
        g["name"]: g["figures"]
        for g in json.loads(runner.invoke(app, ["adapters", "show", rec.ref, "--config", str(config_file)]).output)[
            "gates"
        ]["gates"]
    }
    assert after["val_perplexity"]["adapter_ppl"] == pytest.approx(before["val_perplexity"]["adapter_ppl"], rel=1e-4)
    data = TEST_HOME / "data" / "ptest" / "query_writer" / "test.jsonl"
    data.write_text(data.read_text() + data.read_text().splitlines(keepends=True)[0])  # the data changed since
    stale = runner.invoke(app, ["adapters", "gate", rec.ref, "--config", str(config_file)])
    assert stale.exit_code != 0 and "no longer holds the data it was trained on" in str(stale.exception)
