"""Training on the real SmolLM2 with TRL + PEFT, a few steps on the query-writer data (short sequences)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from rolora.adapters.train import TrainConfig, train

FAST = {"batch_size": 4, "grad_accum": 1, "max_length": 384, "learning_rate": 1e-3, "r": 8, "alpha": 16}


@pytest.fixture(scope="module")
def trained(generator_dir: Path, role_datasets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    run = tmp_path_factory.mktemp("run-qw")
    cfg = TrainConfig(max_steps=8, eval_steps=4, target_modules=["q_proj", "v_proj"], **FAST)  # type: ignore[arg-type]
    return train(generator_dir, role_datasets["query_writer"], run, cfg, progress=False)


@pytest.mark.slow
def test_short_lora_training_lowers_loss(trained: Any) -> None:
    out = Path(trained.output)
    assert trained.kind == "lora" and trained.steps == 8
    assert trained.train_loss_last < trained.train_loss_first
    assert trained.trainable_params < trained.total_params * 0.05
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss_curve.png").stat().st_size > 1000
    assert not list(out.glob("*.bin")), "no pickles are shipped"
    assert json.loads((out / "train_result.json").read_text())["steps"] == 8


@pytest.mark.slow
def test_reloaded_adapter_reproduces_outputs(
    trained: Any, generator_dir: Path, tmp_path: Path, role_datasets: dict[str, Path]
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rolora.adapters.data.prompts import query_writer_messages
    from rolora.adapters.serving import DirectoryAdapters, GenerationRequest
    from rolora.adapters.serving.inprocess import InProcessBackend

    trained_data = role_datasets["query_writer"]
    messages = query_writer_messages("Which law governs the Supply Agreement between Harbor Point Foods LLC?")
    tok = AutoTokenizer.from_pretrained(generator_dir)
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(generator_dir, dtype=torch.float32), trained.output
    )
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    direct = tok.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)
    shutil.copytree(trained.output, tmp_path / "qw@1")
    backend = InProcessBackend(generator_dir, DirectoryAdapters(tmp_path))
    try:
        (served,) = backend.generate([GenerationRequest(messages, adapter="qw", max_tokens=24)])
    finally:
        backend.close()
    assert served.text == direct  # the reloaded adapter, served in-process, reproduces the direct PEFT output
    # and it learned: the completion loss of a training example is lower with the adapter than without
    row = json.loads((trained_data / "train.jsonl").read_text().splitlines()[0])
    prompt = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    enc = tok(full, return_tensors="pt", add_special_tokens=False)
    labels = enc["input_ids"].clone()
    labels[:, : len(tok(prompt, add_special_tokens=False)["input_ids"])] = -100
    with torch.no_grad():
        tuned = model(**enc, labels=labels).loss.item()
        with model.disable_adapter():
            untuned = model(**enc, labels=labels).loss.item()
    assert tuned < untuned


@pytest.mark.slow
def test_resume_continues_from_the_checkpoint(
    generator_dir: Path, role_datasets: dict[str, Path], tmp_path: Path
) -> None:
    from transformers import TrainerCallback

    class Crash(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if state.global_step == 4:
                raise KeyboardInterrupt  # as if Ctrl-C after the step-4 checkpoint

    class Start(TrainerCallback):
        first: int | None = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            pass

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if Start.first is None:
                Start.first = state.global_step

    cfg = TrainConfig(max_steps=6, eval_steps=2, target_modules=["q_proj", "v_proj"], **FAST)  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        train(generator_dir, role_datasets["query_writer"], tmp_path, cfg, progress=False, callbacks=[Crash()])
    assert (tmp_path / "checkpoint-4").is_dir() and not (tmp_path / "final").exists()
    res = train(
        generator_dir, role_datasets["query_writer"], tmp_path, cfg, resume=True, progress=False, callbacks=[Start()]
    )
    assert Start.first == 5, "training restarted from scratch instead of the checkpoint"
    assert res.steps == 6 and (tmp_path / "final" / "adapter_model.safetensors").is_file()


def test_resume_without_checkpoint_is_a_clear_error(
    generator_dir: Path, role_datasets: dict[str, Path], tmp_path: Path
) -> None:
    from rolora.errors import UserError

    with pytest.raises(UserError, match="nothing to resume"):
        train(generator_dir, role_datasets["query_writer"], tmp_path, TrainConfig(max_steps=1), resume=True)


@pytest.mark.slow
def test_full_fine_tuning_same_loop(generator_dir: Path, role_datasets: dict[str, Path], tmp_path: Path) -> None:
    cfg = TrainConfig(full=True, max_steps=2, eval_steps=2, **{**FAST, "learning_rate": 2e-5})  # type: ignore[arg-type]
    res = train(generator_dir, role_datasets["query_writer"], tmp_path, cfg, progress=False)
    assert res.kind == "full" and res.trainable_params == res.total_params
    assert (Path(res.output) / "model.safetensors").is_file() and (Path(res.output) / "config.json").is_file()
