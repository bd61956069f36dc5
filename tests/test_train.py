"""Training on the real SmolLM2 with TRL + PEFT: the session's one LoRA training (conftest ``trained_analyst_run``),
resume from a copy of its checkpoint, and one step of full fine-tuning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from rolora.adapters.train import TrainConfig, train

from conftest import ANALYST_STEPS, ANALYST_TRAIN


@pytest.mark.slow
def test_short_lora_training_lowers_loss(trained_analyst_run: SimpleNamespace) -> None:
    """The session's one training (conftest: the analyst, ANALYST_STEPS steps of 2 examples on the sample corpus)."""
    res, out = trained_analyst_run.result, trained_analyst_run.adapter
    assert res["kind"] == "lora" and res["steps"] == ANALYST_STEPS
    assert res["train_loss_last"] < res["train_loss_first"]
    assert res["trainable_params"] < res["total_params"] * 0.05
    assert (out / "adapter_model.safetensors").is_file() and (out / "loss_curve.png").stat().st_size > 1000
    assert not list(out.glob("*.bin")), "no pickles are shipped"
    assert json.loads((out / "train_config.json").read_text())["max_steps"] == ANALYST_STEPS


@pytest.mark.slow
def test_reloaded_adapter_reproduces_outputs(
    trained_analyst_run: SimpleNamespace, generator_dir: Path, tmp_path: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rolora.adapters.serving import DirectoryAdapters, GenerationRequest
    from rolora.adapters.serving.inprocess import InProcessBackend

    adapter = trained_analyst_run.adapter
    rows = [json.loads(line) for line in (trained_analyst_run.data / "train.jsonl").read_text().splitlines()]
    row = min(rows, key=lambda r: len(json.dumps(r["prompt"])))  # the shortest prompt: a fast generation
    messages = row["prompt"]
    tok = AutoTokenizer.from_pretrained(generator_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(generator_dir, dtype=torch.float32), adapter)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
    direct = tok.decode(out[0][ids["input_ids"].shape[1] :], skip_special_tokens=True)
    shutil.copytree(adapter, tmp_path / "analyst@1")
    backend = InProcessBackend(generator_dir, DirectoryAdapters(tmp_path))
    try:
        (served,) = backend.generate([GenerationRequest(messages, adapter="analyst", max_tokens=24)])
    finally:
        backend.close()
    assert served.text == direct  # the reloaded adapter, served in-process, reproduces the direct PEFT output
    # and it learned: the completion loss of a training example is lower with the adapter than without
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
    trained_analyst_run: SimpleNamespace, generator_dir: Path, tmp_path: Path
) -> None:
    """From a copy of the session training's last checkpoint (step ANALYST_STEPS), two more steps: a crash before the
    first leaves the checkpoint and no result; the resumed run starts at the step after it, not from scratch."""
    from transformers import TrainerCallback

    run = tmp_path / "run"
    last = f"checkpoint-{ANALYST_STEPS}"
    shutil.copytree(trained_analyst_run.run / last, run / last)

    class Crash(TrainerCallback):
        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            raise KeyboardInterrupt  # as if Ctrl-C right after the checkpoint

    class Start(TrainerCallback):
        first: int | None = None

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if Start.first is None:
                Start.first = state.global_step

    cfg = TrainConfig(**{**ANALYST_TRAIN, "max_steps": ANALYST_STEPS + 2})  # type: ignore[arg-type]
    data = trained_analyst_run.data
    with pytest.raises(KeyboardInterrupt):
        train(generator_dir, data, run, cfg, resume=True, progress=False, callbacks=[Crash()])
    assert (run / last).is_dir() and not (run / "final").exists()
    res = train(generator_dir, data, run, cfg, resume=True, progress=False, callbacks=[Start()])
    assert Start.first == ANALYST_STEPS + 1, "training restarted from scratch instead of the checkpoint"
    assert res.steps == ANALYST_STEPS + 2 and (run / "final" / "adapter_model.safetensors").is_file()


def test_resume_without_checkpoint_is_a_clear_error(
    generator_dir: Path, role_datasets: dict[str, Path], tmp_path: Path
) -> None:
    from rolora.errors import UserError

    with pytest.raises(UserError, match="nothing to resume"):
        train(generator_dir, role_datasets["query_writer"], tmp_path, TrainConfig(max_steps=1), resume=True)


@pytest.mark.slow
def test_full_fine_tuning_same_loop(generator_dir: Path, role_datasets: dict[str, Path], tmp_path: Path) -> None:
    """As short as the full path allows: one step on one query-writer example, no validation split."""
    data = tmp_path / "data"
    data.mkdir()
    first = (role_datasets["query_writer"] / "train.jsonl").read_text().splitlines()[0]
    (data / "train.jsonl").write_text(first + "\n")
    cfg = TrainConfig(full=True, max_steps=1, batch_size=1, grad_accum=1, max_length=384, learning_rate=2e-5)
    res = train(generator_dir, data, tmp_path / "run", cfg, progress=False)
    assert res.kind == "full" and res.trainable_params == res.total_params
    assert (Path(res.output) / "model.safetensors").is_file() and (Path(res.output) / "config.json").is_file()


@pytest.mark.slow
def test_bf16_training_runs_its_matmuls_under_autocast(
    generator_dir: Path, role_datasets: dict[str, Path], tmp_path: Path
) -> None:
    """``TrainConfig.bf16`` (``rolora train --bf16``): two real LoRA steps whose forward passes run under bfloat16
    autocast while the LoRA weights stay fp32, and the adapter saved in fp32 with ``bf16`` in its training config."""
    import torch
    from transformers import TrainerCallback

    seen: list[bool] = []

    class Watch(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
            layer = next(m for name, m in model.named_modules() if name.endswith("layers.0"))  # inside the forward
            layer.register_forward_hook(lambda m, a, o: seen.append(torch.is_autocast_enabled("cpu")))

    data = tmp_path / "data"
    data.mkdir()
    rows = (role_datasets["query_writer"] / "train.jsonl").read_text().splitlines()[:4]
    (data / "train.jsonl").write_text("\n".join(rows) + "\n")
    cfg = TrainConfig(bf16=True, max_steps=2, r=4, alpha=8, max_length=384, learning_rate=1e-3)
    res = train(generator_dir, data, tmp_path / "run", cfg, progress=False, callbacks=[Watch()])
    assert res.kind == "lora" and res.steps == 2 and seen and all(seen), seen
    assert res.train_loss_first == res.train_loss_first and res.train_loss_last < 100  # finite, not NaN
    from safetensors.torch import load_file

    weights = load_file(str(Path(res.output) / "adapter_model.safetensors"))
    assert weights and all(t.dtype == torch.float32 for t in weights.values())
    assert json.loads((Path(res.output) / "train_config.json").read_text())["bf16"] is True
