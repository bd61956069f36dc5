"""Contract resolution, scoped search (--doc, doc_ids) and contextual chunks on a small seeded CUAD sample.

Real MiniLM, real FAISS + BM25, real SQLite. The sample: the six smallest endorsement agreements (similar contracts:
one clause vocabulary, one title) and the six smallest hosting agreements of CUAD (The Atticus Project, CC BY 4.0),
read in place through symlinks; the index is cached under the test home.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from conftest import TEST_HOME, make_config

DOMAIN = "cuad-res"


def _sample(cuad_dir: Path) -> list[str]:
    files = sorted((cuad_dir / "contracts").glob("*.txt"))
    out: list[str] = []
    for word in ("endorsement", "hosting"):
        same = sorted((f.stat().st_size, f.stem) for f in files if word in f.stem.lower())
        out += [stem for _, stem in same[:6]]
    return sorted(out)


@pytest.fixture(scope="session")
def res_sample(cuad_dir: Path) -> list[str]:
    return _sample(cuad_dir)


@pytest.fixture(scope="session")
def res_corpus(cuad_dir: Path, res_sample: list[str]) -> Path:
    folder = TEST_HOME / "corpora" / DOMAIN
    folder.mkdir(parents=True, exist_ok=True)
    for doc_id in res_sample:
        link = folder / f"{doc_id}.txt"
        if not link.exists():
            link.symlink_to(cuad_dir / "contracts" / f"{doc_id}.txt")
    return folder


@pytest.fixture(scope="session")
def res_retriever(embedder: Any, res_corpus: Path) -> Any:
    from rolora.retrieval import Retriever

    r = Retriever(DOMAIN, make_config(TEST_HOME, **{DOMAIN: {"corpus": [str(res_corpus)]}}), embedder)
    r.ingest(progress=False)
    return r


@pytest.fixture(scope="session")
def res_questions(cuad_dir: Path, res_sample: list[str]) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (cuad_dir / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    keep = set(res_sample)
    return [r for r in rows if r["doc_id"] in keep]


def test_resolution_picks_the_named_contract_among_similar_ones(
    res_retriever: Any, res_questions: list[dict[str, Any]], res_sample: list[str]
) -> None:
    assert res_retriever.stats()["documents"] == len(res_sample) == 12
    resolved, right = 0, 0
    for q in res_questions:
        scope = res_retriever.resolve(q["question"])
        if scope:
            resolved += 1
            right += q["doc_id"] in {d for d, _ in scope}
            assert abs(sum(c for _, c in scope) - 1.0) < 1e-3
    assert resolved / len(res_questions) >= 0.8
    assert right / resolved >= 0.95


def test_a_question_naming_no_contract_is_not_resolved(res_retriever: Any, res_sample: list[str]) -> None:
    assert res_retriever.resolve("What is the notice period to terminate the agreement?") == []
    assert res_retriever.resolve("Which law governs the contract?") == []
    # the file name written out names its contract outright
    doc = res_sample[3]
    assert res_retriever.resolve(f"In {doc}, who may terminate?") == [(doc, 1.0)]


def test_resolved_search_stays_inside_the_named_contract(
    res_retriever: Any, res_questions: list[dict[str, Any]]
) -> None:
    q = next(r for r in res_questions if r["category"] == "Governing Law")
    scope = res_retriever.resolve(q["question"])
    assert [d for d, _ in scope] == [q["doc_id"]]
    hits = res_retriever.search(q["question"], k=10, doc_ids=[d for d, _ in scope])
    assert hits and {p.doc_id for p in hits} == {q["doc_id"]}


def test_unknown_doc_id_is_refused(res_retriever: Any) -> None:
    from rolora.errors import UserError

    with pytest.raises(UserError, match="not in domain"):
        res_retriever.search("termination", doc_ids=["no_such_contract"])


def test_contextual_chunks_keep_exact_offsets(res_retriever: Any, embedder: Any, res_sample: list[str]) -> None:
    import numpy as np

    from rolora.retrieval.store import indexed_text, text_hash

    store = res_retriever.store
    rows = store.db.execute(
        'SELECT doc_id, start, "end", text, context, text_hash FROM chunks ORDER BY doc_id, start'
    ).fetchall()
    assert rows
    with_context = 0
    for doc_id, start, end, text, context, h in rows:
        assert store.document_text(doc_id)[start:end] == text  # the stored span is the source text, untouched
        assert h == text_hash(indexed_text(context, text))  # the cache key is what was embedded
        with_context += bool(context)
    assert with_context / len(rows) > 0.9
    # the vector is the embedding of context + text, not of the text alone
    doc_id, start, end, text, context, h = next(r for r in rows if r[4])
    [vec] = store.get_embeddings(embedder.name, [h], embedder.dim)
    want = embedder.embed([indexed_text(context, text)])[0]
    assert float(np.dot(vec, want)) > 0.999
    # a passage is the exact span: no context in its text
    p = res_retriever.search(text[:200], k=1, doc_ids=[doc_id])[0]
    assert res_retriever.document_text(p.doc_id)[p.start : p.end] == p.text
    assert not p.text.startswith(context)
    profile = store.profiles()[doc_id]
    assert profile.title and profile.title in context


def test_cli_search_doc_scoping_and_resolution(
    tmp_path: Path, res_retriever: Any, res_corpus: Path, res_sample: list[str]
) -> None:
    from typer.testing import CliRunner

    from rolora.cli import app

    cfg = tmp_path / "rolora.yaml"
    cfg.write_text(f"home: {TEST_HOME}\ndomains:\n  {DOMAIN}:\n    corpus: [{res_corpus}]\n")
    a, b = res_sample[0], res_sample[7]
    runner = CliRunner()
    res = runner.invoke(
        app, ["search", "termination notice", "-d", DOMAIN, "-k", "8", "--doc", a, "--doc", b, "-c", str(cfg), "--json"]
    )
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["scope"] == "explicit" and out["doc_ids"] == [a, b]
    assert out["passages"] and {p["doc_id"] for p in out["passages"]} <= {a, b}
    res = runner.invoke(app, ["search", "termination", "-d", DOMAIN, "--doc", "nope", "-c", str(cfg)])
    assert res.exit_code != 0 and "not in domain" in str(res.exception)
    # a query naming a contract by its file name is resolved to it
    res = runner.invoke(app, ["search", f"termination in {a}", "-d", DOMAIN, "-c", str(cfg), "--json"])
    out = json.loads(res.output)
    assert out["scope"] == "resolved" and out["doc_ids"] == [a]
    assert {p["doc_id"] for p in out["passages"]} == {a}


def test_old_index_is_refused_with_the_rebuild_command_and_ingest_upgrades_it(tmp_path: Path, embedder: Any) -> None:
    from rolora.errors import IndexError_
    from rolora.retrieval import Retriever
    from rolora.retrieval.index import MANIFEST

    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "lease_acme.txt").write_text(
        'LEASE AGREEMENT\n\nBetween Acme Inc. ("Landlord") and Bo Ltd. ("Tenant").\n'
    )
    (corpus / "nda.txt").write_text("NON-DISCLOSURE AGREEMENT\n\n1. Term\nThis agreement lasts two years.\n")
    r = Retriever("old", make_config(tmp_path / "home", old={"corpus": [str(corpus)]}), embedder)
    r.ingest(progress=False)
    assert r.search("two years", k=1)
    # what an index written before versioning looks like: store schema 1, a manifest without a version
    manifest = json.loads((r.dir / MANIFEST).read_text())
    for key in ("version", "stemmer", "contextual"):
        manifest.pop(key)
    (r.dir / MANIFEST).write_text(json.dumps(manifest))
    r.store.set_meta("schema_version", "1")
    r.close()
    old = Retriever("old", make_config(tmp_path / "home", old={"corpus": [str(corpus)]}), embedder)
    with pytest.raises(IndexError_, match=r"rolora ingest PATH --domain old --rebuild"):
        old.search("two years")
    report = old.ingest(progress=False)  # an ingest upgrades it in place: a rebuild from the cached vectors
    assert report.embedded == 0 and report.documents_added == 2
    assert old.search("two years", k=1)[0].doc_id == "nda"
    assert old.resolve("What is the rent under lease_acme?") == [("lease_acme", 1.0)]
    assert old.resolve("What is the rent under the lease?") == []
    old.close()


def test_resolution_scores_are_stable(res_retriever: Any, res_questions: list[dict[str, Any]]) -> None:
    """Same question, same answer: resolution is deterministic (no model, a fixed BM25 index)."""
    qs = [q["question"] for q in res_questions[:20]]
    first = [res_retriever.resolve(q) for q in qs]
    assert first == [res_retriever.resolve(q) for q in qs]
    assert statistics.mean(bool(x) for x in first) > 0.5


_DECLINE: dict[str, Any] = {
    "queries": [],
    "citations": [],
    "answer": "Not in the provided clauses.",
    "not_found": True,
    "verdict": "supported",
    "reasons": [],
}


class _DeclineBackend:
    """Every role declines (no queries, no citations): enough to run the graph through retrieve without a model."""

    name = "decline"

    async def agenerate(self, requests: Any) -> list[Any]:
        from rolora.adapters.serving.base import GenerationResult

        text = json.dumps(_DECLINE)
        return [GenerationResult(text, dict(_DECLINE), 1, 1, "stop", 0.0, None, self.name) for _ in requests]

    def generate(self, requests: Any) -> list[Any]:
        import asyncio

        return asyncio.run(self.agenerate(requests))

    async def stream(self, request: Any) -> Any:
        yield json.dumps(_DECLINE)

    def close(self) -> None:
        return None


def test_agent_doc_ids_scope_retrieval_and_the_trace_shows_resolution(
    res_retriever: Any, embedder: Any, res_corpus: Path, res_sample: list[str], res_questions: list[dict[str, Any]]
) -> None:
    from rolora.agents import Agent

    cfg = make_config(TEST_HOME, **{DOMAIN: {"corpus": [str(res_corpus)]}})
    cfg = cfg.model_copy(update={"agent": cfg.agent.model_copy(update={"checkpointer": "memory", "min_relevance": 0})})
    roles = {"query_writer": None, "analyst": None, "critic": None}
    agent = Agent.from_config(cfg, backend=_DeclineBackend(), adapters=roles, embedder=embedder)
    q = next(r for r in res_questions if r["category"] == "Governing Law")
    other = next(d for d in res_sample if d != q["doc_id"])
    try:
        scoped = agent.ask("Which law governs the contract?", DOMAIN, doc_ids=[other])
        resolved = agent.ask(q["question"], DOMAIN)
    finally:
        agent.close()
    step = next(s for s in scoped.trace if s.node == "retrieve" and "scope" in s.detail).detail
    assert step["scope"] == "explicit" and step["doc_ids"] == [other]
    assert step["passages"] and all(c.startswith(f"{other}[") for c in step["passages"])
    step = next(s for s in resolved.trace if s.node == "retrieve" and "scope" in s.detail).detail
    assert step["scope"] == "resolved" and step["resolution"][0]["doc_id"] == q["doc_id"]
    assert all(c.startswith(f"{q['doc_id']}[") for c in step["passages"])
