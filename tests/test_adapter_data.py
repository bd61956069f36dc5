"""Per-role training data built from the real sample corpus with the real retriever."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from conftest import build_role_data


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_no_document_leaks_across_splits(role_datasets: dict[str, Path]) -> None:
    for role, folder in role_datasets.items():
        docs = {s: {r["doc_id"] for r in _rows(folder / f"{s}.jsonl")} for s in ("train", "validation", "test")}
        assert docs["train"] and docs["validation"], role
        assert not (docs["train"] & docs["validation"]) and not (docs["train"] & docs["test"])
        assert not (docs["validation"] & docs["test"])


def test_data_card_matches_files(role_datasets: dict[str, Path]) -> None:
    for folder in role_datasets.values():
        card = json.loads((folder / "data_card.json").read_text())
        for split in ("train", "validation", "test"):
            text = (folder / f"{split}.jsonl").read_text()
            assert card["hashes"][split] == hashlib.sha256(text.encode()).hexdigest()
            assert card["counts"][split] == len(text.splitlines())


def test_deterministic_given_a_seed(examples_retriever: Any, tmp_path: Path) -> None:
    build_role_data(examples_retriever, "critic", tmp_path / "a", seed=3)
    build_role_data(examples_retriever, "critic", tmp_path / "b", seed=3)
    build_role_data(examples_retriever, "critic", tmp_path / "c", seed=4)
    a, b, c = ((tmp_path / x / "train.jsonl").read_text() for x in "abc")
    assert a == b and a != c


def test_analyst_quotes_are_exact_and_raft_mix(role_datasets: dict[str, Path], examples_retriever: Any) -> None:
    rows = [r for s in ("train", "validation") for r in _rows(role_datasets["analyst"] / f"{s}.jsonl")]
    sources = {r["source"] for r in rows}
    assert {"qa", "clause", "no-oracle", "unanswerable"} <= sources
    for r in rows:
        target = json.loads(r["completion"][0]["content"])
        passages = r["meta"]["passages"]
        if r["source"] in ("no-oracle", "unanswerable"):
            assert target["not_found"] is True and target["citations"] == []
            gold = {tuple(e) for e in r["meta"]["evidence"]}
            for doc, s, e in passages:  # the oracle really is absent
                assert not any(g[0] == doc and g[1] < e and s < g[2] for g in gold)
            continue
        assert target["citations"] and not target["not_found"]
        for c in target["citations"]:
            doc, s, e = passages[c["passage"] - 1]
            assert c["quote"] in examples_retriever.document_text(doc)[s:e]


def test_critic_negatives_differ_from_positives(role_datasets: dict[str, Path]) -> None:
    rows = _rows(role_datasets["critic"] / "train.jsonl")
    by_qa: dict[str, dict[str, Any]] = {}
    for r in rows:
        by_qa.setdefault(r["meta"]["qa_id"], {})[r["source"]] = r
    verdicts = {r["meta"]["verdict"] for r in rows}
    assert verdicts == {"supported", "unsupported", "partial"}
    checked = 0
    for variants in by_qa.values():
        pos = variants.get("supported")
        if pos is None:
            continue
        for source, neg in variants.items():
            if source == "supported":
                continue
            assert neg["meta"]["draft"] != pos["meta"]["draft"]
            assert neg["meta"]["verdict"] in ("unsupported", "partial")
            checked += 1
    assert checked > 20


def test_query_writer_targets_are_measured(role_datasets: dict[str, Path], examples_retriever: Any) -> None:
    """Each target, fused with the question as the graph does, ranks the gold chunk strictly higher than the
    question alone, or is the question itself; re-measured here with the real retriever."""
    from rolora.retrieval import rrf_fuse_items

    rows = _rows(role_datasets["query_writer"] / "train.jsonl")
    assert rows
    improved = 0
    for r in rows:
        target = json.loads(r["completion"][0]["content"])["queries"]
        question = r["prompt"][-1]["content"].removeprefix("Question: ")
        if target == [question]:
            assert r["meta"]["best_rank"] == r["meta"]["base_rank"]
            continue
        gold = r["meta"]["evidence"]
        fused = rrf_fuse_items([examples_retriever.search(x, k=20) for x in [question, *target]], lambda h: h.chunk_id)
        rank = next(
            i
            for i, (h, _) in enumerate(fused, 1)
            if any(h.doc_id == d and h.start < e and s < h.end for d, s, e in gold)
        )
        assert rank == r["meta"]["best_rank"] < r["meta"]["base_rank"]
        improved += 1
    assert improved >= 1


def test_limit_samples_across_contracts_deterministically(examples_retriever: Any) -> None:
    from rolora.adapters.data import BuildContext, doc_split, load_qa
    from rolora.adapters.data.builders import AnalystBuilder

    from conftest import EXAMPLES

    qa = load_qa(EXAMPLES / "qa.jsonl")

    def sample() -> dict[str, list[str]]:
        ctx = BuildContext(examples_retriever, qa, seed=3, limit=4, progress=False)
        recs = AnalystBuilder().records(ctx, lambda d: doc_split(d, 3, validation=0.2, test=0.2))
        return {split: [r["q"].question for r in items] for split, items in recs.items()}

    first = sample()
    assert all(1 <= len(v) <= 4 for v in first.values())
    assert first == sample()  # same seed, same sample
    docs = {q.question: q.doc_id for q in qa}
    assert len({docs.get(q, q) for q in first["train"]}) > 1  # drawn across contracts, not the file's first rows


def test_refusal_share_of_the_training_mix_is_capped(examples_retriever: Any) -> None:
    """RAFT's no-oracle and unanswerable rows all have one target; the training split holds at most the cap."""
    from rolora.adapters.data import BuildContext, doc_split, load_qa
    from rolora.adapters.data.builders import AnalystBuilder

    from conftest import EXAMPLES

    qa = load_qa(EXAMPLES / "qa.jsonl")

    def mix(cap: float | None) -> tuple[float, int, int]:
        ctx = BuildContext(examples_retriever, qa, seed=0, max_refusal_share=cap, progress=False)
        ctx.extra["clause_docs"] = sorted({q.doc_id for q in qa})
        recs = AnalystBuilder().records(ctx, lambda d: doc_split(d, 0, validation=0.2, test=0.2))
        train = recs["train"]
        refusals = sum(1 for r in train if r["target"]["not_found"])
        return refusals / len(train), len(train), len(recs["test"])

    natural, n_natural, test_natural = mix(None)
    capped, n_capped, test_capped = mix(0.25)
    assert natural > 0.25 and 0 < capped <= 0.25, (natural, capped)
    assert n_capped < n_natural and test_capped == test_natural  # only refusals were left out, only of train


def test_analyst_training_quotes_are_what_the_graph_allows(
    role_datasets: dict[str, Path], examples_retriever: Any
) -> None:
    """One role contract: each training prompt is the graph's own prompt for its passages, and every training quote
    is a value of the graph's quote constraint there (whole sentences of the passages overlapping the evidence)."""
    from rolora.agents.nodes.analyse import analyst_schema
    from rolora.agents.types import PassageRef
    from rolora.roles import analyst_messages, split_sentences

    chunks: dict[tuple[str, int, int], Any] = {}
    checked = 0
    for split in ("train", "validation", "test"):
        for r in _rows(role_datasets["analyst"] / f"{split}.jsonl"):
            for doc in {d for d, _, _ in r["meta"]["passages"]} - {k[0] for k in chunks}:
                chunks.update({(c.doc_id, c.start, c.end): c for c in examples_retriever.document_chunks(doc)})
            passages = [PassageRef.from_passage(chunks[(d, s, e)]) for d, s, e in r["meta"]["passages"]]
            question = r["prompt"][-1]["content"].removeprefix("Question: ").split("\n")[0]
            assert r["prompt"] == analyst_messages(question, passages)
            schema = analyst_schema(passages, constrain_quotes=True)
            item = schema["properties"]["citations"]["items"]["properties"]
            target = json.loads(r["completion"][0]["content"])
            assert list(target) == list(schema["properties"])  # the schema's property order
            evidence = r["meta"]["evidence"]
            for c in target["citations"]:
                assert c["quote"] in item["quote"]["enum"], c["quote"]
                assert 1 <= c["passage"] <= item["passage"]["maximum"]
                p = passages[c["passage"] - 1]
                start = p.start + p.text.index(c["quote"])
                assert any(d == p.doc_id and s < start + len(c["quote"]) and start < e for d, s, e in evidence)
                # a whole sentence of the passage (or a piece of one longer than MAX_QUOTE_CHARS)
                assert any(c["quote"] in s.text for s in split_sentences(p.text))
                checked += 1
    assert checked > 20


def test_sentence_format_targets_name_the_evidence_sentences_the_graph_numbers(examples_retriever: Any) -> None:
    """The sentence format's training rows: each prompt is the graph's own sentence-format request for its passages,
    and each target's numbers are allowed by its grammar and name sentences overlapping the gold evidence."""
    from rolora.adapters.data import BUILDERS, BuildContext, doc_split, load_qa
    from rolora.agents.nodes.analyse import analyst_request
    from rolora.agents.types import PassageRef
    from rolora.roles import reply_citations

    from conftest import EXAMPLES

    ctx = BuildContext(
        examples_retriever, load_qa(EXAMPLES / "qa.jsonl"), seed=0, limit=12, analyst_format="sentence", progress=False
    )
    splits = BUILDERS["analyst"]().build(ctx, lambda d: doc_split(d, 0))
    chunks: dict[tuple[str, int, int], Any] = {}
    cited = 0
    for ex in (e for rows in splits.values() for e in rows):
        for doc in {d for d, _, _ in ex.meta["passages"]} - {k[0] for k in chunks}:
            chunks.update({(c.doc_id, c.start, c.end): c for c in examples_retriever.document_chunks(doc)})
        passages = [PassageRef.from_passage(chunks[(d, s, e)]) for d, s, e in ex.meta["passages"]]
        question = ex.prompt[-1]["content"].removeprefix("Question: ").split("\n")[0]
        call = analyst_request(question, passages, None, "sentence", constrain_quotes=True)
        assert ex.prompt == call.messages and ex.meta["format"] == "sentence"
        target = json.loads(ex.completion[0]["content"])
        assert list(target) == ["evidence", "answer", "not_found"]
        assert all(i in call.schema["properties"]["evidence"]["items"]["enum"] for i in target["evidence"])
        for c in reply_citations(target, call):
            p = passages[c["passage"] - 1]
            start = p.start + p.text.index(c["quote"])
            assert any(d == p.doc_id and s < start + len(c["quote"]) and start < e for d, s, e in ex.meta["evidence"])
            cited += 1
    assert cited >= 10
