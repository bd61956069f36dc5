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


def test_the_critic_is_scored_on_verdicts_and_on_the_correct_drafts_it_rejects(role_datasets: Any) -> None:
    """Critic rows from the real builder (perturbed drafts, so labels are known); replies given, as above."""
    import json

    from rolora.adapters.role_eval import role_metrics
    from rolora.adapters.serving.base import GenerationResult

    lines = (role_datasets["critic"] / "train.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines if line.strip()]
    gold = [json.loads(r["completion"][0]["content"])["verdict"] for r in rows]
    assert "supported" in gold and "unsupported" in gold

    class Replay:
        def __init__(self, verdict_of: Any) -> None:
            self.verdict_of = verdict_of

        def generate(self, reqs: Any) -> list[Any]:
            replies = [{"verdict": self.verdict_of(g), "reasons": []} for g in gold]
            return [GenerationResult(json.dumps(r), r, 1, 1, "stop", 0.0, None, "replay") for r in replies]

    exact = role_metrics("critic", Replay(lambda g: g), None, rows)
    assert exact["verdict_accuracy"] == 1.0 and exact["false_rejection"] == 0.0
    lenient = role_metrics("critic", Replay(lambda g: "supported"), None, rows)  # what the base critic does
    assert lenient["false_rejection"] == 0.0
    assert lenient["verdict_accuracy"] == gold.count("supported") / len(gold) < 0.5
    strict = role_metrics("critic", Replay(lambda g: "unsupported"), None, rows)
    assert strict["false_rejection"] == 1.0 and strict["verdict_accuracy"] == gold.count("unsupported") / len(gold)


def test_the_critique_checks_pass_good_drafts_and_catch_changed_numbers(
    role_datasets: Any, examples_retriever: Any
) -> None:
    """The critique node's deterministic stage (rolora.agents.citations.draft_problem) on the critic builder's real
    rows: each citation verified against the source text, then the answer's words and numbers against its quotes."""
    import json

    from rolora.agents.citations import draft_problem
    from rolora.agents.nodes.critique import MIN_SUPPORT
    from rolora.agents.types import PassageRef

    source = examples_retriever.document_text
    lines = (role_datasets["critic"] / "train.jsonl").read_text().splitlines()
    rejected: dict[str, list[bool]] = {}
    for row in (json.loads(line) for line in lines if line.strip()):
        passages = [PassageRef(doc_id=d, start=s, end=e, text=source(d)[s:e]) for d, s, e in row["meta"]["passages"]]
        problem = draft_problem(row["meta"]["draft"], passages, source, MIN_SUPPORT)
        rejected.setdefault(row["source"], []).append(problem is not None)
    assert not any(rejected["supported"])  # a good cited answer always goes through
    rates = {kind: sum(flags) / len(flags) for kind, flags in rejected.items()}
    print(rates)
    assert len(rejected["perturb:number"]) >= 5 and rates["perturb:number"] >= 0.9  # changed numbers are caught
    assert rates["perturb:citation"] >= 0.9 and rates["perturb:outside"] >= 0.9  # and answers their quotes lack


def test_a_critic_that_rejects_correct_drafts_fails_its_gate_whatever_its_accuracy() -> None:
    """What training on the example corpus produced at step 32: every draft called "unsupported" — verdict accuracy
    above the base's (the rows are mostly perturbations), every correct draft sent back."""
    from rolora.adapters.gates import GateThresholds, gate_role_metrics
    from rolora.adapters.role_eval import ROLE_GATED_EXTRA

    assert ROLE_GATED_EXTRA["critic"] == ("false_rejection",)
    thr = GateThresholds()
    always_no = gate_role_metrics([("verdict_accuracy", 0.65, 0.30), ("false_rejection", 1.0, 0.0)], thr)
    assert [g.name for g in always_no] == ["role_metric", "role_metric:false_rejection"]
    assert [g.passed for g in always_no] == [True, False]
    assert "false_rejection 1 vs base 0" in always_no[1].summary
    within = gate_role_metrics([("verdict_accuracy", 0.8, 0.3), ("false_rejection", 0.10, 0.0)], thr)
    assert all(g.passed for g in within)  # at most max_false_rejection_rise (0.10) above the base
    assert not gate_role_metrics([("false_rejection", 0.15, 0.0)], thr)[0].passed
    assert gate_role_metrics([("false_rejection", 0.15, 0.0)], GateThresholds(max_false_rejection_rise=0.2))[0].passed
