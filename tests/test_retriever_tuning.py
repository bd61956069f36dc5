"""The retriever tuned from the domain corpus (real MiniLM, real FAISS, real SQLite, a small fixed CUAD sample):
pairs as the index embeds them with same-contract hard negatives, the versioned embedder registry (sha256-checked,
gated promotion), tuning for a few steps, and an index rebuilt with the promoted tuned embedder."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from rolora.errors import IndexError_, RoloraRuntimeError, UserError

from conftest import make_config, require_cuad

runner = CliRunner()
DOMAIN = "cuadtiny"
NAME = "cuadtiny-retriever"
PER_SPLIT = {"train": 2, "validation": 1, "test": 1}


def tiny_sample(cuad_dir: Path) -> list[Path]:
    """The smallest CUAD contracts (over 8 kB, with at least 5 answerable questions) that fill each split of
    ``doc_split``: 2 train, 1 validation, 1 test. Fixed by the data: the same contracts every run."""
    from rolora.adapters.data import doc_split

    answerable: dict[str, int] = {}
    for line in (cuad_dir / "qa.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        if r["answerable"] and r["evidence"]:
            answerable[r["doc_id"]] = answerable.get(r["doc_id"], 0) + 1
    picked: dict[str, list[Path]] = {s: [] for s in PER_SPLIT}
    for f in sorted((cuad_dir / "contracts").glob("*.txt"), key=lambda f: (f.stat().st_size, f.name)):
        split = doc_split(f.stem)
        if len(picked[split]) < PER_SPLIT[split] and answerable.get(f.stem, 0) >= 5 and f.stat().st_size > 8000:
            picked[split].append(f)
    return [f for s in PER_SPLIT for f in picked[s]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    cuad = require_cuad()
    files = tiny_sample(cuad)
    ids = {f.stem for f in files}
    root = tmp_path_factory.mktemp("tuning")
    qa = root / "qa.jsonl"
    lines = (cuad / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    qa.write_text("".join(line + "\n" for line in lines if json.loads(line)["doc_id"] in ids), encoding="utf-8")
    domain = {"corpus": [str(f) for f in files], "qa": str(qa)}
    return {"home": root / "home", "files": files, "qa": qa, "domain": domain, "root": root}


# -- pairs -------------------------------------------------------------------------------------------------------------
def test_pairs_are_indexed_text_with_a_same_contract_negative(tiny: dict[str, Any]) -> None:
    from rolora.adapters.data import load_qa
    from rolora.adapters.embedder_tuning import build_pairs, domain_chunks

    cfg = make_config(tiny["home"], **{DOMAIN: tiny["domain"]})
    chunks = domain_chunks(cfg, DOMAIN)
    rows = load_qa(tiny["qa"])
    pairs = build_pairs(rows, chunks, negatives="bm25")
    assert pairs and len({p.qa_id for p in pairs}) > 10
    for p in pairs:
        doc = {c.text: c for c in chunks[p.doc_id]}
        pos, neg = doc[p.positive], doc[p.negative or ""]  # both are chunks of the question's own contract
        q = next(r for r in rows if r.id == p.qa_id)
        spans = [(s, e) for d, s, e in q.evidence if d == p.doc_id]
        assert any(pos.start < e and s < pos.end for s, e in spans)  # the positive overlaps the evidence
        assert not any(neg.start < e and s < neg.end for s, e in spans)  # the negative overlaps none of it
        assert p.positive.split("\n", 1)[0] != p.positive  # contextual: a context line, then the exact text
    assert build_pairs(rows, chunks, negatives="none")[0].negative is None


# -- registry ----------------------------------------------------------------------------------------------------------
def _fake_model(folder: Path, weights: bytes = b"weights") -> Path:
    (folder / "1_Pooling").mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "config.json").write_text("{}")
    (folder / "1_Pooling" / "config.json").write_text("{}")
    return folder


def test_registry_versions_gates_promotion_and_checksums(tmp_path: Path) -> None:
    from rolora.embedder_registry import EmbedderRegistry
    from rolora.models import embedder_name, resolve_embedder

    reg = EmbedderRegistry.from_home(tmp_path)
    src = _fake_model(tmp_path / "out")
    one = reg.register(src, "x", "contracts", "all-minilm-l6-v2", data_card={"counts": {"train_pairs": 3}})
    assert (one.ref, one.stage, sorted(one.files)) == (
        "tuned:x@1",
        "candidate",
        ["1_Pooling/config.json", "config.json", "model.safetensors"],
    )
    with pytest.raises(UserError, match=r"no promoted version.*rolora retriever promote x@N"):
        reg.canonical("tuned:x")
    with pytest.raises(UserError, match="no recorded gate results"):
        reg.promote("x@1")
    reg.record_gates("x@1", {"passed": True, "failed_gates": []})
    assert reg.promote("x@1").stage == "promoted"
    assert embedder_name("tuned:x", tmp_path) == "tuned:x@1" == embedder_name("tuned:x@1", tmp_path)
    assert resolve_embedder("tuned:x", tmp_path) == tmp_path / "embedders" / "x@1"

    two = reg.register(src, "x", "contracts", "all-minilm-l6-v2")
    reg.record_gates(two.ref, {"passed": False, "failed_gates": ["test_recall"]})
    with pytest.raises(UserError, match=r"failed gate.*test_recall.*--force"):
        reg.promote("x@2")
    assert reg.canonical("tuned:x") == "tuned:x@1"  # a failed candidate never replaces the promoted one
    reg.promote("x@2", force=True)
    assert reg.canonical("tuned:x") == "tuned:x@2" and reg.show("x@1").stage == "retired"

    (two.path / "model.safetensors").write_bytes(b"tampered")
    with pytest.raises(RoloraRuntimeError, match="changed since it was registered"):
        reg.resolve("tuned:x")
    (src / "optimizer.pt").write_bytes(b"pickle")
    with pytest.raises(UserError, match="pickled"):
        reg.register(src, "x", "contracts", "all-minilm-l6-v2")
    with pytest.raises(UserError, match="tuned:NAME"):
        embedder_name("tuned:../evil", tmp_path)
    with pytest.raises(UserError, match="not in the registry"):
        embedder_name("tuned:nope", tmp_path)


# -- tuning, gate, promotion, an index rebuilt with the tuned embedder ------------------------------------------------
@pytest.mark.slow
def test_tune_gate_promote_and_rebuild_the_index(tiny: dict[str, Any], embedder: Any) -> None:
    from rolora.adapters.data import load_qa
    from rolora.adapters.embedder_tuning import (
        TuneConfig,
        build_pairs,
        domain_chunks,
        labelled,
        train_embedder,
        tune_retriever,
    )
    from rolora.cli.app import app
    from rolora.models import resolve_embedder
    from rolora.retrieval import Retriever
    from rolora.retrieval.index import read_manifest

    home = tiny["home"]
    base_cfg = make_config(home, **{DOMAIN: tiny["domain"]})
    base = Retriever(DOMAIN, base_cfg, embedder)
    base.ingest(progress=False)  # the domain indexed with the base embedder
    indexed = set(base.store.all_chunks()[1])

    tc = TuneConfig(max_steps=2, batch_size=4, eval_steps=1, learning_rate=1e-6, val_contracts=1)
    run = tune_retriever(base_cfg, DOMAIN, tc, name=NAME, progress=False)
    rec = run.record
    assert rec.ref == f"tuned:{NAME}@1" and rec.stage == "candidate" and rec.base_embedder == "all-minilm-l6-v2"
    assert run.metrics["steps"] == 2 and len(run.metrics["validation_curve"]) == 2
    card = rec.data_card
    assert card["counts"]["test_contracts"] == 1 and card["documents"]["test"] == [tiny["files"][-1].stem]
    assert card["counts"]["train_pairs"] > 10 and len(card["pairs_sha256"]) == 64
    gate = rec.gates["gates"][0]
    assert gate["name"] == "test_recall" and gate["metric"] == "span_recall@5"
    assert rec.gates["passed"] == (gate["tuned"] >= gate["base"])
    assert rec.gates["ci"]["difference"]["n"] == rec.gates["questions"] > 0

    # the training positives are texts the index embeds, byte for byte
    assert json.loads((run.run_dir / "data_card.json").read_text())["pairs_sha256"] == card["pairs_sha256"]
    train_docs = set(card["documents"]["train"])
    rows = [q for q in load_qa(tiny["qa"]) if q.doc_id in train_docs]
    pairs = build_pairs(rows, domain_chunks(base_cfg, DOMAIN, train_docs))
    assert {p.positive for p in pairs} <= indexed

    # resumable: a second call with --resume goes on from the run's last checkpoint (step 2) to step 3
    val_docs = set(card["documents"]["validation"])
    val_chunks = domain_chunks(base_cfg, DOMAIN, val_docs)
    val_q = labelled(load_qa(tiny["qa"]), val_chunks)
    more = dataclasses.replace(tc, max_steps=3)
    _, metrics, history = train_embedder(
        resolve_embedder("all-minilm-l6-v2"), pairs, val_q, val_chunks, run.run_dir, more, resume=True, progress=False
    )
    assert metrics["steps"] == 3 and [h["step"] for h in history if "loss" in h] == [1, 2, 3]

    cfg_file = tiny["root"] / "rolora.yaml"
    tuned_cfg = {"home": str(home), "models": {"embedder": f"tuned:{NAME}"}, "domains": {DOMAIN: tiny["domain"]}}
    cfg_file.write_text(yaml.safe_dump(tuned_cfg))
    r = runner.invoke(app, ["retriever", "promote", f"{NAME}@1", "--force", "-c", str(cfg_file)])
    assert r.exit_code == 0 and f"promoted tuned:{NAME}@1" in r.output, r.output
    r = runner.invoke(app, ["retriever", "list", "-c", str(cfg_file)])
    assert r.exit_code == 0 and f"tuned:{NAME}@1" in r.output and "promoted" in r.output, r.output

    # the index built with the base embedder is refused, naming both embedders and the rebuild command
    refused = (
        f"built with embedder 'all-minilm-l6-v2', config says 'tuned:{NAME}' (tuned:{NAME}@1); "
        f"re-ingest with `rolora ingest PATH --domain {DOMAIN} --rebuild`"
    )
    with pytest.raises(IndexError_, match=re.escape(refused)):
        Retriever.open(DOMAIN, cfg_file).search("governing law", k=3)

    r = runner.invoke(app, ["ingest", "--domain", DOMAIN, "--rebuild", "-c", str(cfg_file)])
    assert r.exit_code == 0, r.output
    tuned = Retriever.open(DOMAIN, cfg_file)
    assert tuned.embedder.name == f"tuned:{NAME}@1"
    manifest = read_manifest(tuned.dir)
    assert manifest is not None and manifest.embedder == f"tuned:{NAME}@1"
    hits = tuned.search("Who are the parties to the sponsorship agreement?", k=3, mode="dense")
    assert len(hits) == 3 and all(h.text for h in hits)
    assert tuned.stats()["embedder"] == f"tuned:{NAME}@1"
