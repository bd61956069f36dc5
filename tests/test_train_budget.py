"""``--time-budget``: a run stops at its wall-clock budget with a checkpoint, and ``resume`` goes on from it (real
SmolLM2 + TRL + PEFT, a few short steps on the query-writer data)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
