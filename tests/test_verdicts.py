"""Yes/no questions and their verdicts (rolora.roles.verdicts), on real CUAD and example-corpus questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rolora.agents.types import Answer
from rolora.evals.datasets import EvalQuestion
from rolora.evals.metrics import answer_scores
from rolora.roles.verdicts import (
    NOT_MENTIONED,
    answered_verdict,
    asked_sentence,
    evidence_query,
    gold_verdict,
    is_yes_no,
    verdict_of,
)

REPO = Path(__file__).resolve().parents[1]
CUAD_ASK = (
    'Consider the Distributor Agreement between Wireless Links Inc ("WLI"); Jaguar Investments, Inc. ("Power2Ship"). '
    "Is consent or notice required of a party if the contract is assigned to a third party?"
)


@pytest.mark.parametrize(
    ("question", "expected"),
    [
        (CUAD_ASK, True),
        ("Does the agreement allow the receiving party to disclose Confidential Information to its advisers?", True),
        ("Under the Consulting Agreement, may the Consultant use a subcontractor?", False),  # "Under" opens it
        ("Which law governs the Mutual Non-Disclosure Agreement?", False),
        ("Is there a cap on liability", False),  # no question mark: not a question
        ("Consider the Lease between A and B. What is the rent?", False),
    ],
)
def test_a_yes_no_question_is_one_whose_asking_sentence_opens_with_an_auxiliary(question: str, expected: bool) -> None:
    assert is_yes_no(question) is expected


def test_the_asking_sentence_drops_the_contract_context_before_it() -> None:
    # and a note after it: CUAD explains some questions after their question mark
    capped = (
        "Consider the Supply Agreement between A; B. Does the contract include a cap on liability upon the breach of a "
        "party's obligation? This includes time limitation for the counterparty to bring claims."
    )
    assert (
        asked_sentence(capped)
        == "Does the contract include a cap on liability upon the breach of a party's obligation?"
    )
    assert is_yes_no(capped)
    assert asked_sentence(CUAD_ASK) == (
        "Is consent or notice required of a party if the contract is assigned to a third party?"
    )
    assert evidence_query(CUAD_ASK, "Is") == asked_sentence(CUAD_ASK)  # too little left: the asking sentence
    # a question about the contract itself with two content words left ("effective", "date"): its names stay
    named = "What is the effective date of the Mutual Non-Disclosure Agreement between A Inc. and B Ltd.?"
    assert evidence_query(named, "What is the effective date?", about_the_contract=True) == named
    assert evidence_query(named, "What is the effective date?") == "What is the effective date?"
    assert evidence_query(CUAD_ASK, "Is consent or notice required") == "Is consent or notice required"


@pytest.mark.parametrize(
    ("question", "tidy"),
    [
        (
            "What is the notice period for termination under the Mutual Non-Disclosure Agreement between Halvorsen "
            "Geospatial, Inc. and Quillfeather Biologics Ltd.?",
            "What is the notice period for termination?",
        ),
        (
            "Under the Master Services Agreement between Corvane Digital Systems LLC and Ashgrove Mutual Insurance "
            "Company, how many days' notice must Client give to terminate for convenience?",
            "how many days' notice must give to terminate for convenience?",
        ),
        (
            "What is the cap on each party's total liability under the Supply Agreement between A and B?",
            "What is the cap on each party's total liability?",
        ),
        (CUAD_ASK, "Is consent or notice required of a party if the contract is assigned to a third party?"),
    ],
)
def test_the_evidence_query_drops_the_names_and_what_connected_them(question: str, tidy: str) -> None:
    """What the evidence gate compares with the passages' sentences: the asking sentence without the contract's
    names and without the words and punctuation left between them ("of the between , . and .?")."""
    from rolora.retrieval.resolve import clause_words

    asked = asked_sentence(question)
    assert clause_words(asked, tidy=True) == tidy
    assert evidence_query(question, clause_words(asked, tidy=True)) == tidy


def test_the_verdict_is_not_mentioned_below_the_threshold_and_no_only_when_a_permission_is_forbidden() -> None:
    allow = "Does the agreement allow the Consultant to use a subcontractor?"
    forbids = "Consultant shall not use any subcontractor without the Company's prior written consent."
    grants = "Either Party may terminate this Agreement at any time upon thirty (30) days' prior written notice."
    assert verdict_of(allow, 0.7, forbids, 0.5) == "No"
    assert verdict_of("May either party terminate the agreement for convenience?", 0.7, grants, 0.5) == "Yes"
    assert verdict_of(allow, 0.49, forbids, 0.5) == NOT_MENTIONED
    assert verdict_of(allow, None, None, 0.5) == NOT_MENTIONED
    # a restriction the question asks about is there ("Is there a non-compete?"): Yes, though the clause says "not"
    assert (
        verdict_of("Is there a restriction on competing?", 0.7, "Supplier shall not compete with Buyer.", 0.5) == "Yes"
    )


def test_gold_verdicts_of_real_cuad_questions(cuad_dir: Path) -> None:
    rows = [json.loads(line) for line in (cuad_dir / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    yes_no = [r for r in rows if is_yes_no(r["question"])]
    assert len(yes_no) > 0.5 * len(rows)  # most of CUAD's questions ask whether a clause is there
    answerable = [r for r in yes_no if r["answerable"]]
    # CUAD marks a clause the contract lacks as unanswerable; an answerable yes/no question's gold answer is "Yes"
    assert {gold_verdict(r["answers"], True) for r in answerable} == {"Yes"}
    assert all(gold_verdict(r["answers"], False) == NOT_MENTIONED for r in yes_no if not r["answerable"])
    assert not any(is_yes_no(r["question"]) for r in rows if r["category"] in ("Parties", "Governing Law"))


def _answer(text: str, not_found: bool, yes_no: str | None = None) -> Answer:
    return Answer(question=CUAD_ASK, domain="cuad", answer=text, not_found=not_found, yes_no=yes_no)  # type: ignore[arg-type]


def test_verdict_accuracy_scores_answers_with_and_without_a_verdict() -> None:
    ev = [{"doc_id": "d", "start": 0, "end": 10}]
    yes = EvalQuestion(id="q1", question=CUAD_ASK, answers=["Yes"], evidence=ev, answerable=True)  # type: ignore[arg-type]
    absent = EvalQuestion(id="q2", question=CUAD_ASK, answers=[], evidence=[], answerable=False)
    other = EvalQuestion(id="q3", question="Which law governs it?", answers=["Delaware"], evidence=ev, answerable=True)  # type: ignore[arg-type]
    assert answer_scores(yes, _answer("Yes", False, "Yes"))["verdict_accuracy"] == 1.0
    assert answer_scores(yes, _answer("Yes", False, "Yes"))["token_f1"] == 1.0
    assert answer_scores(yes, _answer(NOT_MENTIONED, True, NOT_MENTIONED))["verdict_accuracy"] == 0.0
    assert answer_scores(absent, _answer(NOT_MENTIONED, True, NOT_MENTIONED))["verdict_accuracy"] == 1.0
    # a graph without verdicts: an extractive answer reads as "Yes", a refusal as "Not mentioned"
    assert answer_scores(yes, _answer("Any assignment requires consent.", False))["verdict_accuracy"] == 1.0
    assert answer_scores(absent, _answer("Any assignment requires consent.", False))["verdict_accuracy"] == 0.0
    assert answered_verdict("No, it may not.", False, None) == "No"
    assert answer_scores(other, _answer("Delaware", False))["verdict_accuracy"] is None


@pytest.mark.parametrize(
    ("answer", "nothing"),
    [
        ("the", True),
        ("", True),
        ("No", True),
        ("of the", True),
        ("yes, no", True),
        ("Landlord's interest", False),
        ("two (2) years", False),
        ("No more than once a year", False),
    ],
)
def test_an_answer_without_a_content_word_says_nothing(answer: str, nothing: bool) -> None:
    from rolora.roles.verdicts import says_nothing

    assert says_nothing(answer) is nothing
