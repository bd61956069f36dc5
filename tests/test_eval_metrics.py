"""Each eval metric on small hand-computed cases: empty retrievals, overlapping spans, unanswerable questions."""

from __future__ import annotations

import math
from typing import Any

import pytest

from rolora.agents.types import Answer, Citation, PassageRef, TraceStep
from rolora.evals.datasets import EvalQuestion
from rolora.evals.metrics import (
    answer_scores,
    chunk_scores,
    citation_checks,
    exact_match,
    grounding_scores,
    merge_spans,
    metric_catalogue,
    rouge_l,
    score_questions,
    span_precision,
    span_recall,
    token_f1,
)

DOC = "The Supplier shall pay the Buyer a fee of $5,000 within thirty (30) days. Governing law: Delaware."


def question(answerable: bool = True, spans: list[tuple[str, int, int]] | None = None, **kw: Any) -> EvalQuestion:
    spans = spans if spans is not None else ([("d", 32, 48)] if answerable else [])
    return EvalQuestion(
        id=kw.pop("id", "q1"),
        question=kw.pop("question", "What fee is paid?"),
        answers=kw.pop("answers", ["$5,000"] if answerable else []),
        evidence=[{"doc_id": d, "start": s, "end": e} for d, s, e in spans],  # type: ignore[misc]
        answerable=answerable,
        category=kw.pop("category", "Payment Terms"),
        **kw,
    )


def passage(start: int, end: int, doc: str = "d", cid: str = "") -> PassageRef:
    return PassageRef(doc_id=doc, start=start, end=end, text=DOC[start:end], chunk_id=cid or f"c{start}")


def answer(text: str = "$5,000", not_found: bool = False, **kw: Any) -> Answer:
    return Answer(question="q", domain="contracts", answer=text, not_found=not_found, **kw)


# -- character spans -------------------------------------------------------------------------------------------------
def test_merge_spans_unions_overlapping_and_touching_spans_per_document() -> None:
    merged = merge_spans([("a", 10, 20), ("a", 15, 30), ("a", 30, 35), ("a", 40, 41), ("b", 0, 5), ("b", 3, 3)])
    assert merged == {"a": [(10, 35), (40, 41)], "b": [(0, 5)]}


def test_span_recall_and_precision_by_hand() -> None:
    gold = [("d", 0, 10), ("d", 20, 30)]  # 20 gold characters
    retrieved = [("d", 5, 25), ("d", 8, 12), ("x", 0, 100)]  # d: 5..25 = 20 chars (overlaps merged), x: 100
    assert span_recall(gold, retrieved) == pytest.approx(10 / 20)  # 5..10 and 20..25
    assert span_precision(gold, retrieved) == pytest.approx(10 / 120)


def test_span_metrics_on_empty_retrieval_and_no_gold() -> None:
    assert span_recall([("d", 0, 10)], []) == 0.0
    assert span_precision([("d", 0, 10)], []) is None  # nothing retrieved: precision undefined
    assert span_recall([], [("d", 0, 10)]) is None  # unanswerable: recall undefined
    assert span_precision([], [("d", 0, 10)]) == 0.0


def test_overlapping_gold_spans_are_not_counted_twice() -> None:
    gold = [("d", 0, 10), ("d", 5, 15)]  # 15 distinct characters
    assert span_recall(gold, [("d", 0, 15)]) == 1.0
    assert span_recall(gold, [("d", 10, 15)]) == pytest.approx(5 / 15)


# -- chunk ranking (pytrec_eval) ----------------------------------------------------------------------------------
def test_chunk_scores_by_hand() -> None:
    [row] = chunk_scores([{"a", "b"}], [["x", "a", "b"]], [1, 3])
    assert row["recall@1"] == 0.0
    assert row["recall@3"] == 1.0
    assert row["precision@1"] == 0.0
    assert row["precision@3"] == pytest.approx(2 / 3)
    assert row["mrr"] == 0.5
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    idcg = 1 + 1 / math.log2(3)
    assert row["ndcg@3"] == pytest.approx(dcg / idcg)


def test_chunk_scores_empty_retrieval_is_zero_and_no_gold_is_none() -> None:
    empty, no_gold, dupes = chunk_scores([{"a"}, set(), {"a"}], [[], ["a"], ["x", "x", "a"]], [1, 2])
    assert set(empty.values()) == {0.0}
    assert set(no_gold.values()) == {None}
    # a chunk retrieved twice counts once, at its first rank: "a" is second
    assert dupes["recall@2"] == 1.0
    assert dupes["mrr"] == 0.5


def test_chunk_scores_keep_question_order() -> None:
    gold = [{f"g{i}"} for i in range(12)]
    ranked = [[f"g{i}"] if i % 3 == 0 else ["other"] for i in range(12)]
    rows = chunk_scores(gold, ranked, [1])
    assert [r["recall@1"] for r in rows] == [1.0 if i % 3 == 0 else 0.0 for i in range(12)]


# -- answers -------------------------------------------------------------------------------------------------------
def test_exact_match_normalises_case_punctuation_and_articles() -> None:
    assert exact_match("The March 14, 2023.", ["march 14 2023"]) == 1.0
    assert exact_match("March 15, 2023", ["March 14, 2023"]) == 0.0
    assert exact_match("anything", []) == 0.0
    # the same date however it is written (CUAD's gold dates are "7/11/06")
    assert exact_match("July 11, 2006", ["7/11/06"]) == 1.0
    assert exact_match("July 12, 2006", ["7/11/06"]) == 0.0


def test_token_f1_and_rouge_l_by_hand() -> None:
    # pred tokens: thirty, 30, days (3); gold: within, thirty, 30, days (4); common 3 -> P 1, R .75
    assert token_f1("thirty (30) days", ["within thirty (30) days"]) == pytest.approx(2 * 0.75 / 1.75)
    # dates compare as year, month, day: "as of the 2006-07-11" against "2006-07-11" -> P 3/6, R 1
    assert token_f1("as of the 11th day of July, 2006", ["7/11/06"]) == pytest.approx(2 * 0.5 / 1.5)
    assert token_f1("June 30, 2010", ["7/11/06"]) == 0.0
    # LCS("the cat sat", "the cat sat on the mat") = 3: P = 3/3, R = 3/6 -> F = 2/3
    assert rouge_l("the cat sat", ["the cat sat on the mat"]) == pytest.approx(2 / 3)
    assert rouge_l("the cat sat", ["dog", "the cat sat on the mat"]) == pytest.approx(2 / 3)  # best gold
    assert rouge_l("", ["x"]) == 0.0


def test_answer_scores_answerable_and_refused() -> None:
    s = answer_scores(question(), answer("a fee of $5,000"))
    assert s["exact_match"] == 0.0
    # pred tokens a, fee, of, 5, 000; gold 5, 000: P = 2/5, R = 1
    assert s["token_f1"] == pytest.approx(2 * 0.4 / 1.4)
    assert s["refusal_accuracy"] is None
    assert s["false_refusal_rate"] == 0.0
    refused = answer_scores(question(), answer("Not in the provided clauses.", not_found=True))
    assert refused["token_f1"] == 0.0  # a refusal is the empty answer
    assert refused["false_refusal_rate"] == 1.0


def test_answer_scores_unanswerable_measure_refusal_only() -> None:
    s = answer_scores(question(answerable=False), answer("Not in the provided clauses.", not_found=True))
    assert s == {
        "exact_match": None,
        "token_f1": None,
        "rouge_l": None,
        "refusal_accuracy": 1.0,
        "false_refusal_rate": None,
        "verdict_accuracy": None,  # not a yes/no question
    }
    wrong = answer_scores(question(answerable=False), answer("Delaware"))
    assert wrong["refusal_accuracy"] == 0.0


def test_answerable_without_gold_answers_has_no_answer_metrics() -> None:
    s = answer_scores(question(answers=[]), answer("x"))
    assert s["token_f1"] is None and s["false_refusal_rate"] == 0.0


# -- grounding -------------------------------------------------------------------------------------------------------
def _analyst_step(citations: list[Any]) -> TraceStep:
    return TraceStep(node="analyse", role="analyst", adapter="base", detail={"citations": citations})


def test_citation_precision_counts_final_citations_overlapping_gold() -> None:
    q = question(spans=[("d", 32, 48)])
    a = answer(
        citations=[
            Citation(doc_id="d", start=30, end=40, quote=DOC[30:40], verified=True),  # overlaps gold
            Citation(doc_id="d", start=75, end=97, quote=DOC[75:97], verified=True),  # elsewhere
        ],
        passages=[passage(0, 97)],
    )
    assert grounding_scores(q, a)["citation_precision"] == 0.5


def test_citation_validity_reads_the_analysts_checks_from_the_trace() -> None:
    a = answer(
        passages=[passage(0, 60)],
        trace=[
            _analyst_step(  # without a quote to re-check, the graph's own verdict counts
                [{"doc_id": "d", "start": 32, "end": 48, "verified": True}, {"doc_id": "d", "start": 0, "end": 3}]
            ),
            TraceStep(node="finalise", detail={"citations": [{"doc_id": "d", "start": 9, "end": 12}]}),  # ignored
        ],
    )
    checks = citation_checks(a)
    assert checks == [(("d", 32, 48), True), (("d", 0, 3), False)]
    g = grounding_scores(question(), a)
    assert g["citation_validity"] == 0.5
    assert g["all_verified"] == 0.0


def test_citation_dicts_are_rechecked_against_the_passages() -> None:
    p = passage(0, 60)
    good = {"doc_id": "d", "start": 32, "end": 48, "quote": DOC[32:48], "verified": True}
    outside = {"doc_id": "d", "start": 75, "end": 97, "quote": DOC[75:97], "verified": True}  # not retrieved
    wrong_quote = {"doc_id": "d", "start": 0, "end": 12, "quote": "Buyer pays", "verified": True}
    a = answer(passages=[p], trace=[_analyst_step([good, outside, wrong_quote])])
    assert [ok for _, ok in citation_checks(a)] == [True, False, False]


def test_without_a_trace_the_final_citations_are_rechecked() -> None:
    a = answer(
        passages=[passage(0, 60)],
        citations=[Citation(doc_id="d", start=32, end=48, quote=DOC[32:48], verified=True)],
    )
    g = grounding_scores(question(), a)
    assert g["citation_validity"] == 1.0 and g["all_verified"] == 1.0


def test_uncited_answer_is_not_verified_and_refusal_is_not_counted() -> None:
    g = grounding_scores(question(), answer("$5,000"))
    assert g == {"citation_precision": None, "citation_validity": None, "all_verified": 0.0}
    r = grounding_scores(question(), answer("Not in the provided clauses.", not_found=True))
    assert r["all_verified"] is None


# -- everything together ---------------------------------------------------------------------------------------------
CITED = {"doc_id": "d", "start": 32, "end": 48, "quote": DOC[32:48], "verified": True}


def test_score_questions_end_to_end_on_hand_made_answers() -> None:
    qs = [question(id="a"), question(answerable=False, id="u"), question(id="e")]
    trace = [
        TraceStep(node="retrieve", role="query_writer", tokens_in=60, tokens_out=20),
        TraceStep(node="retrieve"),
        TraceStep(node="analyse", role="analyst", tokens_in=300, tokens_out=40, detail={"citations": [CITED]}),
    ]
    answers = [
        answer(
            "$5,000",
            passages=[passage(60, 97, cid="c2"), passage(0, 60, cid="c1")],
            citations=[Citation(doc_id="d", start=32, end=48, quote=DOC[32:48], verified=True)],
            trace=trace,
            iterations=2,
        ),
        answer("Not in the provided clauses.", not_found=True, passages=[passage(0, 60, cid="c1")]),
        answer("Not in the provided clauses.", not_found=True),  # empty retrieval
    ]
    rows = score_questions(
        qs, answers, [{"c1"}, set(), {"c1"}], [1, 2], wall_s=[1.5, 0.5, None], judge=["supported", None, None]
    )
    a, u, e = rows
    assert set(a) == set(metric_catalogue([1, 2]))
    assert a["retrieval.span_recall@1"] == 0.0 and a["retrieval.span_recall@2"] == 1.0
    assert a["retrieval.span_precision@2"] == pytest.approx(16 / 97)
    assert a["retrieval.recall@1"] == 0.0 and a["retrieval.mrr"] == 0.5
    assert a["answer.exact_match"] == 1.0 and a["grounding.citation_precision"] == 1.0
    assert a["grounding.all_verified"] == 1.0
    assert a["judge.supported_rate"] == 1.0 and a["judge.unsupported_rate"] == 0.0
    assert a["cost.latency_s"] == 1.5
    assert a["cost.tokens_per_step"] == pytest.approx((80 + 340) / 2)
    assert a["cost.llm_steps"] == 2.0 and a["cost.iterations"] == 2.0
    # unanswerable: no retrieval or answer metrics, refusal counted, refusal not judged
    assert u["retrieval.span_recall@1"] is None and u["retrieval.ndcg@2"] is None
    assert u["answer.refusal_accuracy"] == 1.0 and u["judge.unsupported_rate"] is None
    # answerable with nothing retrieved: zero recall, zero precision, a false refusal
    assert e["retrieval.span_recall@2"] == 0.0 and e["retrieval.span_precision@2"] == 0.0
    assert e["retrieval.recall@2"] == 0.0 and e["answer.false_refusal_rate"] == 1.0
