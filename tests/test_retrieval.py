"""Retrieval on real parts: MiniLM, FAISS, bm25s, SQLite. Incremental ingest, persistence, crash safety,
refusals, domain isolation, filters, the LangChain wrapper and the CLI."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from rolora.errors import IndexError_, UserError
from rolora.evals.metrics import span_recall
from rolora.retrieval import Retriever

from conftest import EXAMPLES, make_config


def _recall(r: Retriever, qs: list[dict[str, Any]], k: int, mode: str) -> float:
    vals = []
    for q in qs:
        passages = r.search(q["question"], k=k, mode=mode)  # type: ignore[arg-type]
        gold = [(e["doc_id"], e["start"], e["end"]) for e in q["evidence"]]
        got = span_recall(gold, [(p.doc_id, p.start, p.end) for p in passages])
        assert got is not None
        vals.append(got)
    return statistics.mean(vals)


def _write_corpus(root: Path, n: int, seed: int = 0, words: int = 120) -> None:
    rng = random.Random(seed)
    vocab = (
        "party agreement term renewal notice termination payment invoice fee cap liability indemnify "
        "assignment consent confidential licence warranty audit insurance delaware york texas days months"
    ).split()
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        body = " ".join(rng.choice(vocab) for _ in range(words))
        (root / f"doc{i:04d}.txt").write_text(f"{i}. Clause {i}\n{body}.\n")


def test_sample_corpus_hybrid_recall(examples_retriever: Retriever) -> None:
    qs = [json.loads(line) for line in (EXAMPLES / "qa.jsonl").read_text().splitlines()]
    qs = [q for q in qs if q["answerable"]]
    table = {(m, k): _recall(examples_retriever, qs, k, m) for m in ("hybrid", "dense", "lexical") for k in (5, 20)}
    print("\nexamples span recall:", {f"{m}@{k}": round(v, 3) for (m, k), v in table.items()})
    # the default fusion (convex 0.6:0.4, chosen on CUAD's validation split) beats both parts at @5; at @20 it may
    # trail the better part by one question of the 78 (measured: hybrid 0.987, BM25 1.0, dense 0.974)
    one = 1 / len(qs)
    assert table[("hybrid", 5)] >= max(table[("dense", 5)], table[("lexical", 5)])
    assert table[("hybrid", 20)] >= max(table[("dense", 20)], table[("lexical", 20)]) - one - 1e-9
    # floors measured on this corpus (convex: hybrid@5 0.910, @20 0.987; RRF 1:1 had 0.833 / 0.974), with room
    assert table[("hybrid", 5)] >= 0.86 and table[("hybrid", 20)] >= 0.95


def test_fusion_over_items_equals_fusion_over_ids(examples_retriever: Retriever) -> None:
    """convex_fuse_items / rrf_fuse_items (what bench/retrieval.py fuses real passages with) rank the real dense and
    BM25 passages exactly as convex_fuse / rrf_fuse rank their first-seen ids, keeping the first passage seen."""
    from rolora.retrieval.retriever import convex_fuse, convex_fuse_items, rrf_fuse, rrf_fuse_items

    q = "Which law governs the Mutual Non-Disclosure Agreement?"
    ranked = [examples_retriever.search(q, k=20, mode=m) for m in ("dense", "lexical")]
    ids: dict[str, int] = {}
    for r in ranked:
        for p in r:
            ids.setdefault(p.chunk_id, len(ids))
    first = {p.chunk_id: p for r in reversed(ranked) for p in reversed(r)}
    assert len({p.chunk_id for p in ranked[0]} & {p.chunk_id for p in ranked[1]}) > 0  # both rank some chunks
    by_ids = convex_fuse([[(ids[p.chunk_id], p.score) for p in r] for r in ranked], (0.6, 0.4))
    items = convex_fuse_items(ranked, lambda p: p.chunk_id, lambda p: p.score, (0.6, 0.4))
    assert [(p.chunk_id, s) for p, s in items] == [(list(ids)[i], s) for i, s in by_ids]
    assert all(p is first[p.chunk_id] for p, _ in items)
    by_ids = rrf_fuse([[ids[p.chunk_id] for p in r] for r in ranked], 60, (1.0, 0.5))
    items = rrf_fuse_items(ranked, lambda p: p.chunk_id, 60, (1.0, 0.5))
    assert [(p.chunk_id, s) for p, s in items] == [(list(ids)[i], s) for i, s in by_ids]


def test_passages_cite_exact_spans(examples_retriever: Retriever) -> None:
    for p in examples_retriever.search("limitation of liability cap", k=10):
        source = examples_retriever.document_text(p.doc_id)
        assert source[p.start : p.end] == p.text
        assert p.citation == f"{p.doc_id}[{p.start}:{p.end}]"
        assert (EXAMPLES / f"{p.doc_id}.txt").read_text(encoding="utf-8")[p.start : p.end] == p.text


def _redundancy(embedder: Any, texts: list[str]) -> float:
    v = embedder.embed(texts)
    sims = v @ v.T
    n = len(texts)
    return float((sims.sum() - n) / (n * (n - 1)))


def test_filters_and_mmr(examples_retriever: Retriever, embedder: Any) -> None:
    hits = examples_retriever.search("governing law", k=5, filters={"doc_id": "loan_agreement"})
    assert hits and {h.doc_id for h in hits} == {"loan_agreement"}
    hits = examples_retriever.search("governing law", k=8, filters={"doc_id": ["nda_mutual", "msa_services"]})
    assert {h.doc_id for h in hits} <= {"nda_mutual", "msa_services"} and len({h.doc_id for h in hits}) == 2
    assert examples_retriever.search("governing law", k=5, filters={"doc_id": "nope"}) == []
    plain = examples_retriever.search("termination for convenience notice", k=6)
    diverse = examples_retriever.search("termination for convenience notice", k=6, mmr=True)
    assert len(diverse) == 6 and [p.chunk_id for p in diverse] != [p.chunk_id for p in plain]
    assert _redundancy(embedder, [p.text for p in diverse]) < _redundancy(embedder, [p.text for p in plain])


def test_langchain_wrapper(examples_retriever: Retriever) -> None:
    from langchain_core.retrievers import BaseRetriever

    lc = examples_retriever.as_langchain(k=3)
    assert isinstance(lc, BaseRetriever)
    docs = lc.invoke("governing law of the loan agreement")
    assert len(docs) == 3
    first = docs[0].metadata
    assert docs[0].page_content == examples_retriever.document_text(first["doc_id"])[first["start"] : first["end"]]


def test_incremental_ingest_and_reload(tmp_path: Path, embedder: Any) -> None:
    corpus = tmp_path / "corpus"
    _write_corpus(corpus, 6)
    cfg = make_config(tmp_path / "home", d={"corpus": [str(corpus)]})
    r = Retriever("d", cfg, embedder)
    first = r.ingest(progress=False)
    assert first.documents_added == 6 and first.embedded == first.chunks_added > 0
    before = [(p.chunk_id, round(p.score, 6)) for p in r.search("renewal notice days", k=5)]

    again = r.ingest(progress=False)
    assert again.embedded == 0 and again.documents_unchanged == 6 and again.chunks_added == 0

    reopened = Retriever("d", cfg, embedder)  # reload from disk
    assert [(p.chunk_id, round(p.score, 6)) for p in reopened.search("renewal notice days", k=5)] == before

    (corpus / "doc0001.txt").write_text("1. Changed\nThe insurance clause requires ten million dollars of cover.\n")
    (corpus / "doc0002.txt").unlink()
    rep = r.ingest(progress=False)
    assert (rep.documents_updated, rep.documents_removed, rep.documents_unchanged) == (1, 1, 4)
    assert rep.embedded == 1
    docs = {p.doc_id for p in r.search("insurance ten million", k=50)}
    assert "doc0002" not in docs
    assert r.search("insurance ten million dollars", k=1)[0].doc_id == "doc0001"


def test_bad_files_are_skipped_and_reported(tmp_path: Path, embedder: Any) -> None:
    from test_loaders import make_mixed_corpus

    make_mixed_corpus(tmp_path / "c")
    cfg = make_config(tmp_path / "home", m={"corpus": [str(tmp_path / "c")]})
    r = Retriever("m", cfg, embedder)
    rep = r.ingest(progress=False)
    reasons = " | ".join(s.reason for s in rep.skipped)
    assert rep.documents_added == 8  # plain, notes, page, memo, scan, rec-1, rec-2, latin1
    assert "binary" in reasons and "empty" in reasons and "PDF" in reasons and "unsupported" in reasons
    assert ("latin1", "invalid-utf8") in rep.flagged
    assert r.search("prior written consent", k=1, mode="lexical")[0].doc_id == "rec-1"
    # a file that fails to load later keeps its previous chunks
    (tmp_path / "c" / "plain.txt").write_bytes(b"\x00\x00broken")
    rep2 = r.ingest(progress=False)
    assert rep2.documents_removed == 0 and any(d == "plain" for d in {p.doc_id for p in r.search("Delaware", k=20)})


def test_mismatched_embedder_is_refused(tmp_path: Path, embedder: Any) -> None:
    from rolora.models import resolve_embedder

    corpus = tmp_path / "c"
    _write_corpus(corpus, 2)
    cfg = make_config(tmp_path / "home", d={"corpus": [str(corpus)]})
    Retriever("d", cfg, embedder).ingest(progress=False)
    other = cfg.model_copy(deep=True)
    other.models.embedder = str(resolve_embedder("all-minilm-l6-v2"))  # same weights, another declared model
    with pytest.raises(IndexError_) as e:
        Retriever("d", other).search("payment", k=3)
    assert "--rebuild" in str(e.value) and "all-minilm-l6-v2" in str(e.value)
    with pytest.raises(IndexError_, match="--rebuild"):
        Retriever("d", other).ingest(progress=False)
    rep = Retriever("d", other).ingest(progress=False, rebuild=True)
    assert rep.documents_added == 2 and Retriever("d", other).search("payment", k=1)


def test_damaged_index_is_refused_then_rebuilt(tmp_path: Path, embedder: Any) -> None:
    corpus = tmp_path / "c"
    _write_corpus(corpus, 3)
    cfg = make_config(tmp_path / "home", d={"corpus": [str(corpus)]})
    Retriever("d", cfg, embedder).ingest(progress=False)
    gen = next((tmp_path / "home" / "indexes" / "d").glob("gen-*"))
    with open(gen / "dense.faiss", "r+b") as f:
        f.seek(64)
        f.write(b"\xff" * 16)
    with pytest.raises(IndexError_, match=r"checksum.*--rebuild"):
        Retriever("d", cfg, embedder).search("payment", k=2)
    Retriever("d", cfg, embedder).ingest(progress=False, rebuild=True)
    assert Retriever("d", cfg, embedder).search("payment", k=2)


def test_interrupted_persist_is_completed_from_the_store(tmp_path: Path, embedder: Any) -> None:
    corpus = tmp_path / "c"
    _write_corpus(corpus, 3)
    cfg = make_config(tmp_path / "home", d={"corpus": [str(corpus)]})
    r = Retriever("d", cfg, embedder)
    r.ingest(progress=False)
    expected = [p.chunk_id for p in r.search("audit insurance", k=3)]
    (tmp_path / "home" / "indexes" / "d" / "manifest.json").unlink()  # as if killed before the manifest swap
    assert [p.chunk_id for p in Retriever("d", cfg, embedder).search("audit insurance", k=3)] == expected


# A real `kill -9` of `rolora ingest` at a chosen point: the child wraps one function of the ingest path so that it
# SIGKILLs its own process there (nothing in rolora knows about it). "old": the next open sees the last good state;
# "new": the store had committed, so the next open rebuilds the indexes from it.
_KILL_AT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    import rolora.retrieval.index as index_mod
    import rolora.retrieval.ingest as ingest_mod
    from rolora.cli import main
    from rolora.retrieval.store import Store

    def die(*_a, **_k):
        os.kill(os.getpid(), signal.SIGKILL)

    point = sys.argv.pop(1)
    if point == "embedding":  # after the first batch of new vectors was committed to the cache
        put = Store.put_embeddings
        Store.put_embeddings = lambda self, *a: (put(self, *a), die())
    elif point == "index-write":  # the new generation's folder half written, inside the store transaction
        save = index_mod.LexicalIndex.save
        index_mod.LexicalIndex.save = lambda self, folder: (save(self, folder), die())
    elif point == "after-commit":  # the store committed, the manifest not switched yet
        ingest_mod.publish_generation = die
    elif point == "manifest-swap":  # the new manifest written to its temp file, not renamed yet
        def half(path, text):
            Path(path).with_name(".manifest.json.x.tmp").write_text(text)
            die()
        index_mod.atomic_write_text = half
    main()
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "point, sees",
    [
        ("embedding", "old"),
        ("index-write", "old"),
        ("after-commit", "new"),
        ("manifest-swap", "new"),
    ],
)
def test_kill_9_during_ingest_leaves_a_good_state(tmp_path: Path, embedder: Any, point: str, sees: str) -> None:
    corpus = tmp_path / "c"
    _write_corpus(corpus, 4, seed=1)
    home = tmp_path / "home"
    (tmp_path / "rolora.yaml").write_text(
        f"home: {home}\ndomains:\n  d:\n    corpus: [{corpus}]\nretrieval:\n  batch_size: 4\n"
    )
    cfg = make_config(home, d={"corpus": [str(corpus)]})
    cfg.retrieval.batch_size = 4
    Retriever("d", cfg, embedder).ingest(progress=False)
    before = [(p.chunk_id, round(p.score, 5)) for p in Retriever("d", cfg, embedder).search("payment cap", k=4)]
    _write_corpus(corpus / "more", 12, seed=2)
    env = {**os.environ, "ROLORA_CONFIG": str(tmp_path / "rolora.yaml")}
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_AT, point, "ingest", "--domain", "d"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    after = Retriever("d", cfg, embedder)
    if sees == "old":
        assert [(p.chunk_id, round(p.score, 5)) for p in after.search("payment cap", k=4)] == before
        assert after.stats()["documents"] == 4
    else:
        assert after.stats()["documents"] == 16 and after.search("payment cap", k=4)
    rep = after.ingest(progress=False)  # the rerun completes what the killed one started, reusing its vectors
    assert rep.documents_added == (12 if sees == "old" else 0)
    if point == "embedding":
        assert rep.embedding_cache_hits >= 12
    dom = home / "indexes" / "d"
    assert len(list(dom.glob("gen-*"))) == 1 and not list(dom.glob(".gen-tmp-*"))
    assert Retriever("d", cfg, embedder).stats()["documents"] == 16


def test_power_loss_with_the_manifest_ahead_of_the_store(tmp_path: Path, embedder: Any) -> None:
    """A power loss can take back SQLite's last commit (WAL, synchronous=NORMAL) after the manifest naming its index
    reached the disk: the index then holds chunk ids the store lacks. The next open rebuilds from the store (the
    source of truth) instead of failing with a KeyError, and the next ingest brings the lost documents back."""
    corpus = tmp_path / "c"
    _write_corpus(corpus, 4, seed=5)
    cfg = make_config(tmp_path / "home", d={"corpus": [str(corpus)]})
    r = Retriever("d", cfg, embedder)
    r.ingest(progress=False)
    before = [(p.chunk_id, round(p.score, 5)) for p in r.search("audit insurance", k=4)]
    dom = tmp_path / "home" / "indexes" / "d"
    snapshot = tmp_path / "store-gen1.sqlite"
    with sqlite3.connect(dom / "store.sqlite") as src, sqlite3.connect(snapshot) as dst:
        src.backup(dst)
    _write_corpus(corpus / "more", 6, seed=6)
    r.ingest(progress=False)
    r.close()
    manifest = json.loads((dom / "manifest.json").read_text())
    assert manifest["generation"] == 2 and manifest["documents"] == 10
    for f in dom.glob("store.sqlite*"):  # the store as the power loss left it: generation 1
        f.unlink()
    shutil.copyfile(snapshot, dom / "store.sqlite")

    again = Retriever("d", cfg, embedder)
    assert [(p.chunk_id, round(p.score, 5)) for p in again.search("audit insurance", k=4)] == before
    assert again.stats()["documents"] == 4
    assert json.loads((dom / "manifest.json").read_text())["generation"] == 1
    rep = again.ingest(progress=False)
    assert rep.documents_added == 6 and again.stats()["documents"] == 10


def test_domain_isolation(tmp_path: Path, embedder: Any) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    _write_corpus(a, 8, seed=3)
    _write_corpus(b, 8, seed=4)
    for f in b.iterdir():
        f.rename(f.with_name("b_" + f.name))
    cfg = make_config(tmp_path / "home", a={"corpus": [str(a)]}, b={"corpus": [str(b)]})
    ra, rb = Retriever("a", cfg, embedder), Retriever("b", cfg, embedder)
    ra.ingest(progress=False)
    rb.ingest(progress=False)
    rng = random.Random(7)
    words = "party payment renewal notice cap delaware audit licence insurance days".split()
    for _ in range(40):
        q = " ".join(rng.sample(words, 3))
        for mode in ("hybrid", "dense", "lexical"):
            assert all(not p.doc_id.startswith("b_") for p in ra.search(q, k=20, mode=mode))  # type: ignore[arg-type]
            assert all(p.doc_id.startswith("b_") for p in rb.search(q, k=20, mode=mode))  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_other_index_kinds_agree_with_flat(tmp_path: Path, embedder: Any, kind: str) -> None:
    corpus = tmp_path / "c"
    _write_corpus(corpus, 300, seed=5, words=40)
    flat_cfg = make_config(tmp_path / "flat", d={"corpus": [str(corpus)]})
    other_cfg = make_config(tmp_path / kind, d={"corpus": [str(corpus)]})
    other_cfg.retrieval.index = kind  # type: ignore[assignment]
    flat, other = Retriever("d", flat_cfg, embedder), Retriever("d", other_cfg, embedder)
    flat.ingest(progress=False)
    other.ingest(progress=False)
    assert other.stats()["index"] == kind
    overlap = []
    for q in ["payment invoice fee", "renewal notice months", "audit insurance texas"]:
        f = {p.chunk_id for p in flat.search(q, k=10, mode="dense")}
        o = {p.chunk_id for p in other.search(q, k=10, mode="dense")}
        overlap.append(len(f & o) / 10)
    assert statistics.mean(overlap) >= 0.7
    hits = other.search("payment", k=5, mode="dense", filters={"doc_id": "doc0007"})
    assert hits and {p.doc_id for p in hits} == {"doc0007"}


def test_cli_ingest_search_and_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rolora.cli import app, main

    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "lease.txt").write_text("1. Rent\nThe monthly rent is $5,000 payable on the first day.\n")
    (corpus / "junk.bin").write_bytes(b"\x00\x01")
    cfg = tmp_path / "rolora.yaml"
    cfg.write_text(f"home: {tmp_path / 'home'}\ndomains:\n  leases:\n    corpus: [{corpus}]\n")
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", "--domain", "leases", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "+1 new" in res.output and "junk.bin" in res.output
    res = runner.invoke(app, ["search", "monthly rent", "--domain", "leases", "-k", "2", "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "lease[0:" in res.output and "$5,000" in res.output
    # the `rolora` entry point itself (what `python -m rolora.cli` runs): a user error is one line and exit code 2
    monkeypatch.setattr(sys, "argv", ["rolora", "search", "x", "--domain", "nope", "--config", str(cfg)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "domain 'nope' is not configured" in lines[0]


def test_search_without_index_says_what_to_run(tmp_path: Path, embedder: Any) -> None:
    cfg = make_config(tmp_path / "home", d={"corpus": [str(tmp_path)]})
    with pytest.raises(IndexError_, match="rolora ingest"):
        Retriever("d", cfg, embedder).search("x")
    with pytest.raises(UserError, match="no such file"):
        Retriever("d", cfg, embedder).ingest([tmp_path / "missing"], progress=False)
