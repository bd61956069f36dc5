"""Quality gates on the real SmolLM2 and real PEFT adapters: completion-only perplexity, the probe set, forgetting,
intruder dimensions (LoRA and full models), the role-metric gate and the JSON report."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from rolora.adapters.gates import (
    GateReport,
    GateThresholds,
    gate_forgetting,
    gate_role_metric,
    gate_val_perplexity,
    run_gates,
)
from rolora.adapters.intruders import count_intruders, mitigate_intruders
from rolora.adapters.registry import check_model_folder
from rolora.adapters.scoring import (
    completion_perplexity,
    encode_chat_example,
    load_probe_texts,
    score_completions,
    score_texts,
)
from rolora.errors import UserError

PROBE_FILE = Path(__file__).resolve().parents[1] / "adapters" / "probe" / "general_prose.jsonl"
ANSWER = {"role": "assistant", "content": "The capital of France is Paris."}
VAL: list[Any] = [
    [{"role": "user", "content": "What colour is the sky on a clear day?"}, {"role": "assistant", "content": "Blue."}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "How many legs does a spider have?"},
        {"role": "assistant", "content": "A spider has eight legs."},
    ],
    {"messages": [{"role": "user", "content": "Capital of France?"}, ANSWER]},
]


def probe_subset() -> list[str]:
    """12 paragraphs spread over the topics of the probe set (tests stay fast)."""
    return load_probe_texts()[::19]


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for this module's model work: faster than two on a busy 2-core machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm(generator_dir: Path, one_thread: None) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(generator_dir, dtype=torch.float32).eval()
    return AutoTokenizer.from_pretrained(generator_dir), model


@pytest.fixture(scope="module")
def noop_report(generator_dir: Path, lora_adapters: dict[str, Path], one_thread: None) -> GateReport:
    return run_gates(generator_dir, lora_adapters["noop@1"], VAL, probe_subset(), None, probe_max_length=256)


@pytest.fixture(scope="module")
def alpha_report(generator_dir: Path, lora_adapters: dict[str, Path], one_thread: None) -> GateReport:
    metric = ("answer_f1", 0.30, 0.50)  # worse than base: gate 4 must fail
    return run_gates(generator_dir, lora_adapters["alpha@1"], VAL, probe_subset(), metric, probe_max_length=256)


def test_probe_set_is_original_prose_of_the_right_shape() -> None:
    rows = [json.loads(line) for line in PROBE_FILE.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 200
    assert [r["id"] for r in rows] == [f"p{i:03d}" for i in range(1, len(rows) + 1)]
    texts = load_probe_texts()
    assert texts == [r["text"] for r in rows] and len(set(texts)) == len(texts)
    assert all(60 <= len(t.split()) <= 150 for t in texts)
    assert not any(w in t.lower() for t in texts for w in ("indemnif", "hereinafter", "governing law", "licensee"))
    assert load_probe_texts(limit=5) == texts[:5]
    readme = (PROBE_FILE.parent / "README.md").read_text()
    assert "CC0" in readme and "original" in readme


def test_thresholds_defaults_and_validation() -> None:
    t = GateThresholds()
    assert (t.max_val_ppl_ratio, t.max_forgetting_pct, t.intruder_top_k, t.intruder_epsilon) == (1.0, 5.0, 10, 0.5)
    assert t.min_role_metric_delta == 0.0 and t.max_intruders is None
    with pytest.raises(ValidationError, match="extra"):
        GateThresholds.model_validate({"max_forgeting_pct": 3})
    with pytest.raises(ValidationError):
        GateThresholds(intruder_epsilon=0)


def test_gate_functions_and_report() -> None:
    assert gate_val_perplexity(10.0, 9.0).passed and not gate_val_perplexity(10.0, 10.0).passed
    assert gate_forgetting(10.0, 10.4).passed and not gate_forgetting(10.0, 10.6).passed
    assert gate_forgetting(10.0, 10.6).figures["rise_pct"] == pytest.approx(6.0)
    assert not gate_val_perplexity(10.0, math.nan).passed and not gate_forgetting(10.0, math.nan).passed
    assert gate_role_metric("answer_f1", 0.6, 0.5).passed
    assert not gate_role_metric("answer_f1", 0.55, 0.5, min_delta=0.1).passed
    assert gate_role_metric("loss", 1.0, 2.0, higher_is_better=False).figures["delta"] == 1.0
    report = GateReport("a", "b", "lora", {}, [gate_val_perplexity(10, 9), gate_role_metric("f1", 0.1, 0.5)])
    assert not report.passed and report.failed_gates == ["role_metric"]
    again = GateReport.from_dict(json.loads(report.to_json()))
    assert again.to_dict() == report.to_dict() and "| role_metric | failed |" in again.to_markdown()


def test_count_intruders_on_known_matrices(one_thread: None) -> None:
    import torch

    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=g)
    assert count_intruders(w, w.clone()) == (0, 1.0)
    small = w + 1e-3 * torch.randn(64, 48, generator=g)
    assert count_intruders(w, small)[0] == 0, "a tiny perturbation keeps the singular vectors"
    u, v = torch.randn(64, 1, generator=g), torch.randn(1, 48, generator=g)
    big = w + 50.0 * (u / u.norm()) @ (v / v.norm()) * w.norm()
    n, min_cos = count_intruders(w, big, top_k=10, epsilon=0.5)
    assert n >= 1 and min_cos < 0.5
    # a wide matrix (U taken as V of its transpose): PEFT's convention computed directly on it, by hand
    wide, wide_big = w.T.contiguous(), big.T.contiguous()
    u_base = torch.linalg.svd(wide, full_matrices=False).U
    cos = (torch.linalg.svd(wide_big, full_matrices=False).U[:, :10].T @ u_base).abs().max(dim=1).values
    n_wide, min_wide = count_intruders(wide, wide_big, top_k=10, epsilon=0.5)
    assert n_wide == int((cos < 0.5).sum()) >= 1 and min_wide == pytest.approx(float(cos.min()), abs=1e-5)


def test_completion_perplexity_scores_only_the_completion(lm: tuple[Any, Any]) -> None:
    import torch

    tok, model = lm
    short = [{"role": "user", "content": "Capital of France?"}, ANSWER]
    long = [
        {"role": "user", "content": "Please tell me, as precisely as you can, which city is France's capital?"},
        ANSWER,
    ]

    def completion_tokens(msgs: list[dict[str, str]]) -> int:
        prompt = tok.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(msgs, tokenize=False)
        return len(tok(full[len(prompt) :], add_special_tokens=False).input_ids)

    n = completion_tokens(short)
    assert n == completion_tokens(long) >= 8
    (p_short, c_short), (p_long, c_long) = encode_chat_example(tok, short), encode_chat_example(tok, long)
    assert c_short == c_long and len(p_long) > len(p_short)

    a, b = score_completions(model, tok, [short]), score_completions(model, tok, [long])
    assert a.tokens == b.tokens == n, "prompt tokens are never scored"
    assert abs(a.nll_sum - b.nll_sum) > 1e-3, "the prompt conditions the completion"
    assert completion_perplexity(model, tok, [short]) == pytest.approx(math.exp(a.nll_sum / n), rel=1e-9)

    ids = torch.tensor([p_short + c_short])  # the same number by hand: log-probs of the completion tokens only
    with torch.inference_mode():
        logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    manual = -sum(float(logp[i - 1, ids[0, i]]) for i in range(len(p_short), ids.shape[1]))
    assert a.nll_sum == pytest.approx(manual, rel=1e-4)

    both = score_completions(model, tok, [short, long])  # one right-padded batch
    assert both.tokens == 2 * n and both.nll_sum == pytest.approx(a.nll_sum + b.nll_sum, rel=1e-4)
    with pytest.raises(UserError, match="last message must be the assistant"):
        score_completions(model, tok, [[{"role": "user", "content": "hi"}, {"role": "user", "content": "hi"}]])


def test_text_perplexity_is_independent_of_batching(lm: tuple[Any, Any]) -> None:
    tok, model = lm
    texts = load_probe_texts()[:4]
    one_by_one = score_texts(model, tok, texts, max_length=64, batch_tokens=64)
    batched = score_texts(model, tok, texts, max_length=64, batch_tokens=4096)
    assert one_by_one.tokens == batched.tokens == 4 * 63
    assert batched.nll_sum == pytest.approx(one_by_one.nll_sum, rel=1e-4)
    assert 1.0 < batched.perplexity < 1000.0


def test_gates_refuse_pickles_and_wrong_bases(generator_dir: Path, lora_adapters: dict[str, Path], tmp_path: Path):
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(lora_adapters["alpha@1"] / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="pickle"):
        run_gates(generator_dir, pickled, VAL, ["text"], None)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(lora_adapters["alpha@1"], elsewhere)
    cfg = json.loads((elsewhere / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-1.7B-Instruct"
    (elsewhere / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"SmolLM2-1\.7B-Instruct"):
        run_gates(generator_dir, elsewhere, VAL, ["text"], None)


@pytest.mark.slow
def test_zero_b_adapter_changes_nothing(noop_report: GateReport) -> None:
    r = noop_report
    val, forget, intr = r.gate("val_perplexity"), r.gate("forgetting"), r.gate("intruder_dimensions")
    assert abs(val.figures["ratio"] - 1.0) < 1e-4
    assert abs(forget.figures["rise_pct"]) < 0.01
    assert forget.figures["texts"] == len(probe_subset()) and forget.figures["max_length"] == 256
    assert intr.figures["total"] == 0 and intr.figures["layers"] == 60
    assert (intr.figures["top_k"], intr.figures["epsilon"]) == (10, 0.5)
    assert r.failed_gates == ["val_perplexity"], "a no-op does not improve validation perplexity"
    assert r.gate("role_metric").status == "skipped" and not r.passed
    assert GateReport.from_dict(json.loads(r.to_json())).to_dict() == r.to_dict()


@pytest.mark.slow
def test_nonzero_adapter_reports_forgetting_and_intruders(alpha_report: GateReport) -> None:
    r = alpha_report
    rise = r.gate("forgetting").figures["rise_pct"]
    print(f"alpha@1: forgetting {rise:+.3f}%, {r.gate('intruder_dimensions').summary}, {r.seconds}s")
    assert math.isfinite(rise) and abs(rise) > 0.01
    intr = r.gate("intruder_dimensions").figures
    per_layer = intr["per_layer"]
    assert len(per_layer) == 60 and "model.layers.0.self_attn.q_proj" in per_layer
    assert all(k.endswith(("q_proj", "v_proj")) for k in per_layer)
    assert all(isinstance(v, int) and 0 <= v <= 10 for v in per_layer.values())
    assert intr["total"] == sum(per_layer.values()) and intr["layers"] == 60
    assert "role_metric" in r.failed_gates and r.gate("role_metric").figures["delta"] == pytest.approx(-0.2)
    assert not r.passed


@pytest.mark.slow
def test_full_model_is_gated_like_its_lora(
    generator_dir: Path, lora_adapters: dict[str, Path], alpha_report: GateReport, tmp_path: Path, one_thread: None
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(generator_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, str(lora_adapters["alpha@1"])).merge_and_unload()
    full = tmp_path / "alpha-full"
    merged.save_pretrained(str(full), safe_serialization=True)
    del base, merged
    assert check_model_folder(full) == "full"
    r = run_gates(
        generator_dir, full, VAL, probe_subset(), None, probe_max_length=256, intruder_modules=["q_proj", "v_proj"]
    )
    assert r.kind == "full"
    lora_val, full_val = alpha_report.gate("val_perplexity"), r.gate("val_perplexity")
    assert full_val.figures["adapter_ppl"] == pytest.approx(lora_val.figures["adapter_ppl"], rel=1e-4)
    rise = alpha_report.gate("forgetting").figures["rise_pct"]
    assert r.gate("forgetting").figures["rise_pct"] == pytest.approx(rise, rel=1e-3)
    lora_layers = alpha_report.gate("intruder_dimensions").figures["per_layer"]
    assert r.gate("intruder_dimensions").figures["per_layer"] == lora_layers
    with pytest.raises(UserError, match="no linear layer"):
        run_gates(generator_dir, full, VAL, ["some text here"], None, intruder_modules=["qproj"])


@pytest.mark.slow
def test_intruder_mitigation_writes_a_new_adapter(
    generator_dir: Path, lora_adapters: dict[str, Path], alpha_report: GateReport, tmp_path: Path, one_thread: None
) -> None:
    from safetensors.torch import load_file

    assert alpha_report.gate("intruder_dimensions").figures["total"] > 0
    out = mitigate_intruders(generator_dir, lora_adapters["alpha@1"], tmp_path / "alpha-mitigated")
    assert check_model_folder(out) == "lora" and not list(tmp_path.glob(".*"))
    old = load_file(str(lora_adapters["alpha@1"] / "adapter_model.safetensors"))
    new = load_file(str(out / "adapter_model.safetensors"))
    assert set(old) == set(new)
    assert any(not old[k].equal(new[k]) for k in old), "the intruder layers were changed"
    with pytest.raises(UserError, match="exists"):
        mitigate_intruders(generator_dir, lora_adapters["alpha@1"], out)
