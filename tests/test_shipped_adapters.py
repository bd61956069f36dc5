"""Generated training questions, and adapters packed for shipping and installed from the package (the example
domain's shipped adapters themselves are exercised by tests/test_demo.py)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, make_lora_adapter


def test_generated_questions_are_grounded_in_their_sentence(examples_retriever: Any) -> None:
    from rolora.adapters.data.generated import generated_questions

    docs = sorted(examples_retriever.store.profiles())
    rows = generated_questions(examples_retriever, docs, random.Random(0))
    assert len(rows) >= 150  # the 12 example contracts hold far more facts than their 78 annotated answers
    assert {r.category for r in rows} >= {"Definition", "Period", "Amount", "Percentage", "Governing Law"}
    for r in rows:
        ((doc_id, start, end),) = r.evidence
        sentence = examples_retriever.document_text(doc_id)[start:end]
        assert doc_id == r.doc_id and r.answers[0] and r.answers[0] in sentence, r
        assert r.question.count("?") == 1 and " the " in r.question
    by_doc: dict[str, list[str]] = {}
    for r in rows:
        by_doc.setdefault(r.doc_id, []).append(r.question)
    assert all(len(qs) == len(set(qs)) for qs in by_doc.values())  # one answer per question and contract
    assert all(len(qs) <= 40 for qs in by_doc.values())
    again = generated_questions(examples_retriever, docs, random.Random(0))
    assert [r.question for r in again] == [r.question for r in rows]
    law = [r for r in rows if r.doc_id == "supply_agreement" and r.category == "Governing Law"]
    assert [r.answers[0] for r in law] == ["the laws of the State of Illinois"]
    assert "Supply Agreement between Harbor Point Foods LLC and Crestline Packaging Co." in law[0].question


def test_an_ambiguous_question_is_dropped() -> None:
    from rolora.adapters.data.generated import _sentence_questions

    two = "Payment is due within thirty (30) days, or within sixty (60) days for disputed invoices."
    assert [c for c, _, _ in _sentence_questions("the Agreement", two, "Payment")] == []
    one = "Payment is due within thirty (30) days after receipt of an invoice."
    assert list(_sentence_questions("the Agreement", one, "Payment")) == [
        ("Period", 'Under the Agreement, what period does the "Payment" provision set?', "thirty (30) days")
    ]


def _passing_gates() -> dict[str, Any]:
    return {"passed": True, "failed_gates": [], "gates": [{"name": "forgetting", "status": "passed", "summary": "ok"}]}


def test_pack_casts_to_bf16_scrubs_paths_and_installs_once(generator_dir: Path, tmp_path: Path) -> None:
    """Pack and install on a real PEFT adapter and real registries (its gate record is written here: running the
    gates is tested in test_gates; the shipped example adapters carry real ones, see test_demo)."""
    from safetensors.torch import load_file

    from rolora.adapters.registry import Registry
    from rolora.adapters.shipped import install_shipped, pack_adapter
    from rolora.errors import UserError

    src = make_lora_adapter(generator_dir, tmp_path / "src", seed=5)
    data = tmp_path / "data"  # as $ROLORA_HOME/data: <domain>/<role>/data_card.json
    (data / "contracts" / "analyst").mkdir(parents=True)
    (data / "contracts" / "analyst" / "data_card.json").write_text(
        json.dumps({"source": str(REPO / "examples"), "counts": {"train": 3}})
    )
    trainer = Registry(tmp_path / "trainer-registry", base_dir=generator_dir)
    rec = trainer.register(src, "contracts-analyst", "analyst", "contracts", generator_dir, "abc", {"r": 8}, {})
    with pytest.raises(UserError, match="no gate results"):
        pack_adapter(trainer, rec.ref, tmp_path / "ship")
    trainer.record_gates(rec.ref, {**_passing_gates(), "passed": False, "failed_gates": ["forgetting"]})
    with pytest.raises(UserError, match="failed its gates"):
        pack_adapter(trainer, rec.ref, tmp_path / "ship")
    trainer.record_gates(rec.ref, _passing_gates())

    folder = pack_adapter(trainer, "contracts-analyst", tmp_path / "ship", data)
    assert folder == tmp_path / "ship" / "contracts-analyst"
    weights = load_file(str(folder / "adapter_model.safetensors"))
    original = load_file(str(src / "adapter_model.safetensors"))
    assert weights.keys() == original.keys()
    assert all(str(w.dtype) == "torch.bfloat16" for w in weights.values())
    size = (folder / "adapter_model.safetensors").stat().st_size
    assert size < 0.6 * (src / "adapter_model.safetensors").stat().st_size
    texts = "".join(p.read_text(encoding="utf-8") for p in folder.iterdir() if p.suffix in {".json", ".md"})
    assert str(tmp_path) not in texts and str(REPO) not in texts and str(generator_dir) not in texts
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["shipped_from"] == "contracts-analyst@1" and manifest["role"] == "analyst"
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == rec.base_model

    user = Registry(tmp_path / "user-registry", base_dir=generator_dir)
    installed = install_shipped(user, folder, generator_dir)
    assert installed.ref == "contracts-analyst@1" and installed.stage == "promoted"
    assert user.resolve("contracts-analyst")[0] == "contracts-analyst@1"  # the sha256 check on load passes
    assert install_shipped(user, folder, generator_dir).ref == "contracts-analyst@1"  # twice: nothing new
    assert [r.ref for r in user.list()] == ["contracts-analyst@1"]

    tampered = tmp_path / "tampered"
    shutil.copytree(folder, tampered)
    with (tampered / "adapter_model.safetensors").open("r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(UserError, match="changed since it was packed"):
        install_shipped(Registry(tmp_path / "third", base_dir=generator_dir), tampered, generator_dir)
