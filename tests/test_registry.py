"""The adapter registry on real PEFT adapters: refusals (traversal, pickles, wrong base), versions, stages, gates,
resolution, vLLM arguments, the config's role mapping, atomic writes and the merged export."""

from __future__ import annotations

import concurrent.futures
import json
import shutil
from pathlib import Path

import pytest

from rolora.adapters import registry as registry_mod
from rolora.adapters.export import export_merged
from rolora.adapters.gates import GateReport, GateThresholds, gate_forgetting, gate_val_perplexity
from rolora.adapters.registry import AdapterRecord, Registry, check_base_compatible
from rolora.errors import UserError

from conftest import EXAMPLES, make_config

NAME = "contracts-analyst"


@pytest.fixture()
def reg(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "adapters")


def _register(reg: Registry, src: Path, base: Path, name: str = NAME, role: str = "analyst") -> AdapterRecord:
    return reg.register(src, name, role, "contracts", base, data_card_hash="abc123", training_config={"r": 8})


def _gates(forgetting_rise: float = 1.0) -> GateReport:
    """A gate report built from the gate functions (no model needed)."""
    return GateReport(
        adapter="x",
        base="SmolLM2",
        kind="lora",
        thresholds=GateThresholds().model_dump(),
        gates=[gate_val_perplexity(10.0, 9.0), gate_forgetting(10.0, 10.0 * (1 + forgetting_rise / 100))],
    )


def _leftovers(root: Path) -> list[str]:
    """Temp files or folders anywhere under root (the lock file aside)."""
    return [
        str(p.relative_to(root))
        for p in root.rglob("*")
        if (p.name.startswith(".") and p.name != ".registry.lock") or p.name.endswith(".tmp")
    ]


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "x" * 65, "a\\b", "", ".hidden", "a..b"])
def test_refuses_traversal_and_bad_names(reg: Registry, lora_adapters: dict[str, Path], generator_dir: Path, bad: str):
    before = sorted(p.name for p in reg.root.parent.iterdir())
    with pytest.raises(UserError, match="invalid"):
        _register(reg, lora_adapters["alpha@1"], generator_dir, name=bad)
    for call in (reg.resolve, reg.show, reg.promote, reg.retire, reg.rollback):
        with pytest.raises(UserError):
            call(bad)
    assert sorted(p.name for p in reg.root.parent.iterdir()) == before, "nothing was written"


def test_refuses_pickled_weights(reg: Registry, lora_adapters: dict[str, Path], generator_dir: Path, tmp_path: Path):
    src = tmp_path / "pickled"
    src.mkdir()
    shutil.copy(lora_adapters["alpha@1"] / "adapter_config.json", src)
    (src / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UserError, match=r"adapter_model\.bin is a pickle"):
        _register(reg, src, generator_dir)

    stray = tmp_path / "stray"
    shutil.copytree(lora_adapters["alpha@1"], stray)
    (stray / "extra_weights.pt").write_bytes(b"x")
    with pytest.raises(UserError, match=r"extra_weights\.pt, a pickle"):
        _register(reg, stray, generator_dir)

    # Trainer state pickles are left behind, not refused; they never reach the registry.
    (stray / "extra_weights.pt").unlink()
    (stray / "training_args.bin").write_bytes(b"x")
    rec = _register(reg, stray, generator_dir)
    assert not (rec.path / "training_args.bin").exists()
    assert "training_args.bin" not in rec.files and "adapter_model.safetensors" in rec.files

    # A registered folder whose safetensors were swapped for a pickle is refused when resolved.
    (rec.path / "adapter_model.safetensors").unlink()
    (rec.path / "adapter_model.bin").write_bytes(b"x")
    with pytest.raises(UserError, match="pickle"):
        reg.resolve(rec.ref)


def _fake_base(generator_dir: Path, dest: Path, sha: str) -> Path:
    """A copy of the base folder (symlinked weights) whose rolora_model.json records other weights."""
    dest.mkdir()
    for f in generator_dir.iterdir():
        if f.name != "rolora_model.json":
            (dest / f.name).symlink_to(f)
    meta = json.loads((generator_dir / "rolora_model.json").read_text())
    meta["weights_sha256"] = sha
    (dest / "rolora_model.json").write_text(json.dumps(meta))
    return dest


def test_refuses_adapter_on_another_base_by_weights_hash(
    reg: Registry, lora_adapters: dict[str, Path], generator_dir: Path, tmp_path: Path
):
    rec = _register(reg, lora_adapters["alpha@1"], generator_dir)
    other = _fake_base(generator_dir, tmp_path / "other-base", "0" * 64)
    assert reg.check_base(rec.ref, generator_dir).ref == rec.ref
    with pytest.raises(UserError, match="sha256"):
        reg.check_base(rec.ref, other)
    with pytest.raises(UserError, match="retrain it on this one"):
        Registry(reg.root, base_dir=other).resolve(rec.ref)
    with pytest.raises(UserError, match="sha256"):
        export_merged(reg, rec.ref, tmp_path / "merged", other)
    assert Registry(reg.root, base_dir=generator_dir).resolve(rec.ref) == (rec.ref, rec.path)
    check_base_compatible(rec.path, generator_dir)
    with pytest.raises(UserError, match="sha256"):
        check_base_compatible(rec.path, other)


def test_refuses_adapter_config_for_another_base(
    reg: Registry, lora_adapters: dict[str, Path], generator_dir: Path, tmp_path: Path
):
    src = tmp_path / "elsewhere"
    shutil.copytree(lora_adapters["alpha@1"], src)
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "HuggingFaceTB/SmolLM2-360M-Instruct"
    (src / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="SmolLM2-360M-Instruct"):
        _register(reg, src, generator_dir)
    with pytest.raises(UserError, match="SmolLM2-360M-Instruct"):
        check_base_compatible(src, generator_dir)
    assert reg.names() == []


def test_register_assigns_versions_and_writes_the_manifest(
    reg: Registry, lora_adapters: dict[str, Path], generator_dir: Path
):
    one = _register(reg, lora_adapters["alpha@1"], generator_dir)
    two = _register(reg, lora_adapters["beta@1"], generator_dir)
    critic = _register(reg, lora_adapters["gamma@1"], generator_dir, name="contracts-critic", role="critic")
    assert (one.ref, two.ref, critic.ref) == (f"{NAME}@1", f"{NAME}@2", "contracts-critic@1")
    assert reg.versions(NAME) == [1, 2]
    manifest = json.loads((two.path / "manifest.json").read_text())
    base_meta = json.loads((generator_dir / "rolora_model.json").read_text())
    assert manifest["name"] == NAME and manifest["version"] == 2 and manifest["kind"] == "lora"
    assert manifest["role"] == "analyst" and manifest["domain"] == "contracts" and manifest["stage"] == "candidate"
    assert manifest["base_model"] == base_meta["hub_id"]
    assert manifest["base_weights_sha256"] == base_meta["weights_sha256"]
    assert manifest["data_card_hash"] == "abc123" and manifest["training_config"] == {"r": 8}
    assert manifest["metrics"] == {} and manifest["gates"] == {} and manifest["created"]
    assert (two.path / "adapter_model.safetensors").is_file() and (two.path / "adapter_config.json").is_file()
    assert reg.show(f"{NAME}@2") == two
    assert [r.ref for r in reg.list()] == ["contracts-analyst@1", "contracts-analyst@2", "contracts-critic@1"]
    assert [r.ref for r in reg.list(role="critic")] == ["contracts-critic@1"]
    assert reg.list(domain="cuad") == []
    with pytest.raises(UserError, match="role"):
        reg.register(lora_adapters["alpha@1"], NAME, "lawyer", "contracts", generator_dir)
    with pytest.raises(UserError, match="without a version"):
        reg.register(lora_adapters["alpha@1"], f"{NAME}@7", "analyst", "contracts", generator_dir)


def test_concurrent_registrations_get_distinct_versions(
    reg: Registry, lora_adapters: dict[str, Path], generator_dir: Path
):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        refs = list(pool.map(lambda _: _register(reg, lora_adapters["alpha@1"], generator_dir).ref, range(4)))
    assert sorted(refs) == [f"{NAME}@{v}" for v in (1, 2, 3, 4)]
    assert _leftovers(reg.root) == []


def test_promote_rollback_and_retire(reg: Registry, lora_adapters: dict[str, Path], generator_dir: Path):
    refs = [_register(reg, lora_adapters[a], generator_dir).ref for a in ("alpha@1", "beta@1", "gamma@1")]
    for ref in refs:
        reg.record_gates(ref, _gates())
    assert reg.promote(refs[0]).stage == "promoted"
    assert reg.resolve(NAME) == (refs[0], reg.root / refs[0])
    reg.promote(refs[1])
    assert [r.stage for r in reg.list()] == ["retired", "promoted", "candidate"]
    assert reg.resolve(NAME)[0] == refs[1]

    back = reg.rollback(NAME)
    assert back.ref == refs[0] and back.history[-1].note == f"rollback from {refs[1]}"
    assert [r.stage for r in reg.list()] == ["promoted", "retired", "candidate"]
    assert reg(NAME)[0] == refs[0]
    with pytest.raises(UserError, match="no earlier version"):
        reg.rollback(NAME)

    reg.promote(NAME)  # a bare name promotes the highest version
    assert [r.stage for r in reg.list()] == ["retired", "retired", "promoted"]
    assert reg.retire(NAME).stage == "retired"
    with pytest.raises(UserError, match=r"no promoted version .*contracts-analyst@3 \(retired\)"):
        reg.resolve(NAME)
    assert reg.resolve(refs[1]) == (refs[1], reg.root / refs[1]), "a retired version stays pinnable"
    stages = [e.stage for e in reg.show(refs[0]).history]
    assert stages == ["candidate", "promoted", "retired", "promoted", "retired"]


def test_promote_refuses_failed_or_missing_gates_unless_forced(
    reg: Registry, lora_adapters: dict[str, Path], generator_dir: Path
):
    ref = _register(reg, lora_adapters["alpha@1"], generator_dir).ref
    with pytest.raises(UserError, match="no recorded gate results"):
        reg.promote(ref)
    report = _gates(forgetting_rise=7.5)
    assert report.failed_gates == ["forgetting"]
    reg.record_gates(ref, report)
    assert reg.show(ref).gates == report.to_dict()
    with pytest.raises(UserError, match=r"failed gate\(s\) forgetting \(probe ppl .* rise \+7\.500% > 5\.0%\)"):
        reg.promote(ref)
    assert reg.show(ref).stage == "candidate"
    rec = reg.promote(ref, force=True)
    assert rec.stage == "promoted" and rec.history[-1].note == "forced: failed forgetting"


def test_bare_name_resolves_to_latest_promoted_or_explains(
    reg: Registry, lora_adapters: dict[str, Path], generator_dir: Path
):
    with pytest.raises(UserError, match="not in the registry"):
        reg.resolve(NAME)
    one = _register(reg, lora_adapters["alpha@1"], generator_dir)
    two = _register(reg, lora_adapters["beta@1"], generator_dir)
    with pytest.raises(UserError, match=r"no promoted version \(registered: contracts-analyst@1 \(candidate\), "):
        reg.resolve(NAME)
    assert reg.resolve(two.ref) == (two.ref, two.path)
    reg.record_gates(one.ref, _gates())
    reg.promote(one.ref)
    assert reg.resolve(NAME) == (one.ref, one.path), "the latest promoted, not the highest version"
    with pytest.raises(UserError, match="not in the registry"):
        reg.resolve(f"{NAME}@9")


def test_vllm_lora_modules(reg: Registry, lora_adapters: dict[str, Path], generator_dir: Path):
    analyst = _register(reg, lora_adapters["alpha@1"], generator_dir)
    critic = _register(reg, lora_adapters["beta@1"], generator_dir, name="contracts-critic", role="critic")
    for r in (analyst, critic):
        reg.record_gates(r.ref, _gates())
        reg.promote(r.ref)
    args = reg.vllm_lora_modules([NAME, "contracts-critic@1"])
    assert args == [f"{NAME}@1={analyst.path.resolve()}", f"contracts-critic@1={critic.path.resolve()}"]
    assert all(Path(a.partition("=")[2]).is_absolute() for a in args)
    js = reg.vllm_lora_modules_json([NAME], base_model_name="smollm2")
    assert js == [{"name": f"{NAME}@1", "path": str(analyst.path.resolve()), "base_model_name": "smollm2"}]
    json.dumps(js)


def test_role_adapter_follows_the_config(tmp_path: Path, lora_adapters: dict[str, Path], generator_dir: Path):
    roles = {"analyst": {"adapter": NAME}, "critic": {"adapter": NAME}}
    cfg = make_config(tmp_path / "home", contracts={"corpus": [str(EXAMPLES)], "roles": roles})
    reg = Registry.from_config(cfg, base_dir=generator_dir)
    assert reg.root == tmp_path / "home" / "adapters"
    with pytest.raises(UserError, match=r"domains\.contracts\.roles\.analyst\.adapter: adapter 'contracts-analyst'"):
        reg.role_adapter(cfg, "contracts", "analyst")
    for _ in range(2):
        ref = _register(reg, lora_adapters["alpha@1"], generator_dir).ref
        reg.record_gates(ref, _gates())
        reg.promote(ref)
    assert reg.role_adapter(cfg, "contracts", "analyst") == f"{NAME}@2"
    assert reg.role_adapter(cfg, "contracts", "query_writer") is None
    with pytest.raises(UserError, match="trained for the analyst role, not critic"):
        reg.role_adapter(cfg, "contracts", "critic")
    with pytest.raises(UserError, match="not configured"):
        reg.role_adapter(cfg, "cuad", "analyst")


def test_writes_are_atomic(
    reg: Registry, lora_adapters: dict[str, Path], generator_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    rec = _register(reg, lora_adapters["alpha@1"], generator_dir)
    reg.record_gates(rec.ref, _gates())
    reg.promote(rec.ref)
    assert _leftovers(reg.root) == []

    calls = {"n": 0}
    real_copy = shutil.copy2

    def failing_copy(src: object, dst: object) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_copy(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(registry_mod.shutil, "copy2", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        _register(reg, lora_adapters["beta@1"], generator_dir)
    monkeypatch.undo()
    assert reg.versions(NAME) == [1] and _leftovers(reg.root) == []

    before = (rec.path / "manifest.json").read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError("power cut")

    monkeypatch.setattr(registry_mod.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="power cut"):
        reg.retire(rec.ref)
    monkeypatch.undo()
    assert (rec.path / "manifest.json").read_bytes() == before, "the manifest is replaced whole or not at all"
    assert reg.show(rec.ref).stage == "promoted" and _leftovers(reg.root) == []


def test_full_model_is_registered_but_not_served_as_lora(reg: Registry, generator_dir: Path, tmp_path: Path):
    src = tmp_path / "full"
    src.mkdir()
    for f in generator_dir.iterdir():
        if f.name != "rolora_model.json":
            (src / f.name).symlink_to(f)
    rec = reg.register(src, "contracts-full", "analyst", "contracts", generator_dir, kind=None)
    assert rec.kind == "full" and (rec.path / "model.safetensors").is_file()
    assert not (rec.path / "model.safetensors").is_symlink()
    assert reg.resolve(rec.ref) == (rec.ref, rec.path)
    with pytest.raises(UserError, match="full fine-tuned model, not a LoRA adapter"):
        reg(rec.ref)
    with pytest.raises(UserError, match="already a full model"):
        export_merged(reg, rec.ref, tmp_path / "merged", generator_dir)


def test_export_merged_matches_the_adapter(
    reg: Registry, lora_adapters: dict[str, Path], generator_dir: Path, tmp_path: Path, request: pytest.FixtureRequest
):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than two on a busy 2-core machine
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    rec = _register(reg, lora_adapters["alpha@1"], generator_dir)
    out = export_merged(reg, rec.ref, tmp_path / "export" / "analyst-merged", generator_dir)
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not list(out.glob("*.bin")) and not (out / "adapter_config.json").exists()
    meta = json.loads((out / "rolora_model.json").read_text())
    assert meta["merged_from"] == rec.ref and meta["weights_sha256"] != rec.base_weights_sha256
    assert _leftovers(out.parent) == []
    with pytest.raises(UserError, match="not empty"):
        export_merged(reg, rec.ref, out, generator_dir)

    tok = AutoTokenizer.from_pretrained(generator_dir)
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "Name a fruit."}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    base = AutoModelForCausalLM.from_pretrained(generator_dir, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(rec.path)).eval()
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.inference_mode():
        a = peft_model.generate(**ids, max_new_tokens=12, do_sample=False)
        b = merged.generate(**ids, max_new_tokens=12, do_sample=False)
    assert a.tolist() == b.tolist()
