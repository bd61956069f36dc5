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
