"""The analyst's citation correctness (issue: "groundedness that means correct"): a citation counts when its quote
is in the cited passage AND its exact span overlaps gold evidence; on the real sample index."""

from __future__ import annotations

from typing import Any

from rolora.adapters.role_eval import ROLE_GATED_EXTRA, _cited_span, _overlaps_gold


def test_a_cited_quote_maps_to_its_exact_span_and_is_checked_against_gold(examples_retriever: Any) -> None:
    text = examples_retriever.document_text("nda_mutual")
    gold_start = text.index("This Mutual Non-Disclosure Agreement")
    gold = [("nda_mutual", gold_start, gold_start + 120)]
    passages = [("nda_mutual", 0, 2000), ("loan_agreement", 0, 500)]
    quote = text[gold_start : gold_start + 60]
    span = _cited_span({"passage": 1, "quote": quote}, passages, examples_retriever)
    assert span == ("nda_mutual", gold_start, gold_start + 60)
    assert _overlaps_gold(span, gold)
    other = examples_retriever.document_text("loan_agreement")[100:160]
    wrong = _cited_span({"passage": 2, "quote": other}, passages, examples_retriever)
    assert wrong == ("loan_agreement", 100, 160) and not _overlaps_gold(wrong, gold)  # valid, but the wrong clause
    assert _cited_span({"passage": 2, "quote": quote}, passages, examples_retriever) is None  # not in passage 2
    assert _cited_span({"passage": 9, "quote": quote}, passages, examples_retriever) is None
    assert _cited_span({"passage": "x"}, passages, examples_retriever) is None
    assert ROLE_GATED_EXTRA["analyst"] == ("citation_correctness",)


def test_several_role_metrics_are_each_a_gate() -> None:
    from rolora.adapters.gates import GateResult, gate_role_metric

    results = [gate_role_metric("answer_f1", 0.4, 0.1), gate_role_metric("citation_correctness", 0.5, 0.7)]
    assert [r.passed for r in results] == [True, False]
    assert isinstance(results[1], GateResult) and "citation_correctness 0.5 vs base 0.7" in results[1].summary


def test_sentence_format_replies_are_scored_by_the_sentences_they_name(examples_retriever: Any) -> None:
    """Role metrics of sentence-format rows (built by the real builder on the real index): a reply is read as the
    graph reads it — numbers name sentences, and an answer stated word for word is cited by its own sentence. The
    replies are given (the real model's metric runs in the training tests); what is checked here is the scoring."""
    import json

    from rolora.adapters.data import BUILDERS, BuildContext, doc_split, load_qa
    from rolora.adapters.role_eval import role_metrics
    from rolora.adapters.serving.base import GenerationResult

    from conftest import EXAMPLES

    ctx = BuildContext(
        examples_retriever, load_qa(EXAMPLES / "qa.jsonl"), seed=0, limit=10, analyst_format="sentence", progress=False
    )
    rows = [
        {"prompt": e.prompt, "completion": e.completion, "meta": e.meta}
        for e in BUILDERS["analyst"]().build(ctx, lambda d: doc_split(d, 0))["test"]
    ]
    answered = [r for r in rows if not json.loads(r["completion"][0]["content"])["not_found"]]
    assert len(answered) >= 3

    class Replay:  # answers each request with a reply made from its row's target
        def __init__(self, make: Any) -> None:
            self.make = make

        def generate(self, reqs: Any) -> list[Any]:
            out = []
            for req, row in zip(reqs, answered, strict=True):
                assert req.json_schema["properties"]["evidence"]["items"]["enum"]  # the row's own numbers
                reply = self.make(json.loads(row["completion"][0]["content"]))
                out.append(GenerationResult(json.dumps(reply), reply, 1, 1, "stop", 0.0, None, "replay"))
            return out

    exact = role_metrics("analyst", Replay(lambda t: t), None, answered, examples_retriever)
    assert exact["answer_f1"] == 1.0 and exact["citation_correctness"] == 1.0 and exact["citation_validity"] == 1.0
    # pointing at sentence 1 whatever the question: right only where the answer's own words move the citation
    pointed = role_metrics("analyst", Replay(lambda t: {**t, "evidence": [1]}), None, answered, examples_retriever)
    print(pointed)
    assert 0.5 <= pointed["citation_correctness"] <= 1.0 and pointed["answer_f1"] == 1.0
    refused = role_metrics(
        "analyst",
        Replay(lambda t: {"evidence": [1], "answer": "Not in the provided clauses.", "not_found": True}),
        None,
        answered,
        examples_retriever,
    )
    assert refused["answer_f1"] < 0.2 and refused["citation_correctness"] == 0.0  # a refusal is not a cited answer
