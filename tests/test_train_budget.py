"""``--time-budget``: a run stops at its wall-clock budget with a checkpoint, and ``resume`` goes on from it (real
SmolLM2 + TRL + PEFT, a few short steps on the query-writer data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rolora.adapters.train import selection_score

# a few short steps of a rank-4 LoRA on the query writer's data: what both tests train
SMALL: dict[str, Any] = {
    "batch_size": 1,
    "grad_accum": 1,
    "max_length": 256,
    "r": 4,
    "alpha": 8,
    "target_modules": ["q_proj", "v_proj"],
    "eval_steps": 1000,
}


@pytest.mark.slow
def test_a_run_stops_at_its_time_budget_and_resumes(
    generator_dir: Path, role_datasets: dict[str, Path], tmp_path: Path
) -> None:
    from rolora.adapters.train import TrainConfig, train

    settings: dict[str, Any] = {**SMALL, "max_steps": 400, "time_budget_s": 3.0}
    first = train(generator_dir, role_datasets["query_writer"], tmp_path, TrainConfig(**settings), progress=False)
    assert 1 <= first.steps < 400  # stopped by the budget, not by max_steps
    assert list(tmp_path.glob("checkpoints/checkpoint-*")) or list(tmp_path.glob("**/checkpoint-*"))
    again = train(
        generator_dir, role_datasets["query_writer"], tmp_path, TrainConfig(**settings), resume=True, progress=False
    )
    assert first.steps < again.steps < 400  # went on from the checkpoint, then stopped at its own budget
    assert (Path(again.output) / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_stop_after_steps_keeps_the_epoch_schedule(
    generator_dir: Path, role_datasets: dict[str, Path], tmp_path: Path
) -> None:
    """``max_steps: 0`` trains epochs (transformers itself takes 0 as "one step"); ``stop_after_steps`` ends the run
    at that step while the learning-rate schedule still spans the epochs, as ``make adapters`` relies on."""
    import json

    from rolora.adapters.train import TrainConfig, train

    settings: dict[str, Any] = {**SMALL, "max_steps": 0, "epochs": 2.0, "max_eval_examples": 2, "stop_after_steps": 3}
    res = train(generator_dir, role_datasets["query_writer"], tmp_path, TrainConfig(**settings), progress=False)
    assert res.steps == 3
    (checkpoint,) = tmp_path.glob("checkpoint-*")
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    rows = len((role_datasets["query_writer"] / "train.jsonl").read_text().splitlines())
    assert state["max_steps"] == 2 * rows  # the schedule of two epochs of batch 1, of which 3 steps ran
    assert any("eval_loss" in h for h in state["log_history"])  # evaluated at the stop (2 validation rows)


def test_a_checkpoint_that_forgets_too_much_loses_to_any_that_does_not() -> None:
    assert selection_score(0.4, 3.0, 5.0) == 0.4 and selection_score(0.4, None, 5.0) == 0.4
    assert selection_score(0.9, 7.5, 5.0) < selection_score(0.1, 4.9, 5.0)  # within the gate beats a better metric
    assert selection_score(0.9, 7.5, 5.0) > selection_score(0.5, 9.0, 5.0)  # all beyond it: the metric decides
    assert selection_score(0.9, 50.0, None) == 0.9  # no limit: the role metric alone


@pytest.mark.slow
def test_the_role_metric_picks_the_checkpoint_and_draws_the_learning_curve(
    generator_dir: Path, role_datasets: dict[str, Path], examples_retriever: Any, tmp_path: Path
) -> None:
    """With a role evaluation, each evaluation scores the role's metric on validation rows by generating with the
    adapter as it stands (real backend, real retriever; the query writer's gold recall@5, the cheapest role to run):
    that metric, not the loss, names the best checkpoint (forgetting watched beside it, on general-prose texts), and
    the learning curve (metric vs minutes) is saved beside the result and goes on when the run is resumed."""
    import json

    from rolora.adapters.pipeline import role_scorer
    from rolora.adapters.scoring import load_probe_texts
    from rolora.adapters.train import TrainConfig, train

    probe = load_probe_texts(limit=8)

    data = role_datasets["query_writer"]
    rows = [json.loads(line) for line in (data / "validation.jsonl").read_text().splitlines()][:4]
    settings: dict[str, Any] = {
        **SMALL,
        "max_steps": 6,
        "eval_steps": 2,
        "max_eval_examples": 2,
        "role_eval_rows": 4,
        "early_stopping_patience": 0,
        "stop_after_steps": 4,
    }
    res = train(
        generator_dir,
        data,
        tmp_path,
        TrainConfig(**settings),
        progress=False,
        role_eval=role_scorer("query_writer", generator_dir, rows, examples_retriever, probe, 5.0),
    )
    assert [p["step"] for p in res.learning_curve] == [2, 4]
    assert all({"gold_recall@5", "parse_rate", "forgetting_pct", "selection"} <= set(p) for p in res.learning_curve)
    assert all(p["forgetting_pct"] != 0.0 for p in res.learning_curve), "the adapter changes the probe perplexity"
    assert 0 < res.learning_curve[0]["minutes"] < res.learning_curve[1]["minutes"]
    chosen = max(res.learning_curve, key=lambda p: p["selection"])  # the role metric, unless it forgot too much
    assert chosen["selection"] == selection_score(chosen["gold_recall@5"], chosen["forgetting_pct"], 5.0)
    assert res.best_role_metric == chosen["gold_recall@5"]
    state = json.loads(
        (max(tmp_path.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])) / "trainer_state.json").read_text()
    )
    assert state["best_metric"] == chosen["selection"]  # the role metric chose the checkpoint, not the loss
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{chosen['step']}")
    final = Path(res.output)
    assert json.loads((final / "learning_curve.json").read_text()) == res.learning_curve
    assert (final / "learning_curve.png").stat().st_size > 1000
    assert not (tmp_path / ".role-eval").exists()  # the scored snapshots are removed

    settings["stop_after_steps"] = 6
    again = train(
        generator_dir,
        data,
        tmp_path,
        TrainConfig(**settings),
        resume=True,
        progress=False,
        role_eval=role_scorer("query_writer", generator_dir, rows, examples_retriever, probe, 5.0),
    )
    assert [p["step"] for p in again.learning_curve] == [2, 4, 6]  # the curve goes on across the resume
    assert again.learning_curve[2]["minutes"] > again.learning_curve[1]["minutes"]
