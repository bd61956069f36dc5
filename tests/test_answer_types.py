"""Short answers of the kind a question asks for (rolora.roles.answer_types), on clauses of the example contracts and
on CUAD's question templates."""

from __future__ import annotations

import pytest

from rolora.roles.answer_types import answer_type, short_answer, typed_values

from conftest import EXAMPLES

NAMED = (
    "Under the Master Services Agreement between Corvane Digital Systems LLC and Ashgrove Mutual Insurance Company, "
)


@pytest.mark.parametrize(
    ("question", "kind"),
    [
        ("What is the effective date of the Mutual Non-Disclosure Agreement?", "date"),
        ("Consider the Supply Agreement between A and B. When does the contract become effective?", "date"),
        (
            "Consider the Supply Agreement between A and B. On what date does the contract's initial term expire?",
            "date",
        ),
        (NAMED + "how many days' notice must Client give to terminate for convenience?", "period"),
        (
            "Consider the Supply Agreement between A and B. What notice period is required to terminate renewal?",
            "period",
        ),
        (
            "Consider the Supply Agreement between A and B. What is the renewal term after the initial term expires?",
            "period",
        ),
        ("For how long does the Mutual Non-Disclosure Agreement remain in effect?", "period"),
        (NAMED + "what interest rate applies to undisputed amounts that Client pays late?", "percent"),
        ("Which state's law governs the SaaS Subscription Agreement?", "law"),
        (
            "Consider the Supply Agreement. Which state's or country's law governs the interpretation of the contract?",
            "law",
        ),
        ("What are the annual Subscription Fees for the first year of the Initial Subscription Term?", "money"),
        ("what liquidated damages must Crestline Packaging Co. pay for late delivery of Products?", "money"),
        # no typed answer: a party, a purpose, what happens, a yes/no question
        ("Which individual is a party to the Settlement Agreement?", None),
        ("for what purpose may Customer's Authorized Users access and use the Service?", None),
        ("what happens to the unpaid Settlement Sum if a payment is missed?", None),
        ("Consider the Supply Agreement between A and B. Who are the parties to the contract?", None),
        ("Does the agreement allow the receiving party to disclose Confidential Information to its advisers?", None),
    ],
)
def test_the_asking_sentence_decides_the_answer_type(question: str, kind: str | None) -> None:
    assert answer_type(question) == kind


def test_values_are_found_as_the_text_writes_them() -> None:
    text = (
        "Client shall pay interest at one percent (1%) per month on late amounts, and a fee of $186,000 per annum "
        "within thirty (30) days of the Invoice Date; this Agreement is dated March 14, 2023 and is governed by the "
        "laws of the State of New York."
    )

    def values(kind: str) -> list[str]:
        return [text[a:b] for a, b in typed_values(text, kind)]  # type: ignore[arg-type]

    assert values("percent") == ["one percent (1%) per month"]
    assert values("money") == ["$186,000 per annum"]
    assert values("period") == ["thirty (30) days of the Invoice Date"]  # a capitalised defined term it runs from
    assert values("date") == ["March 14, 2023"]
    assert values("law") == ["the State of New York"]


def _clause(doc_id: str, start: str) -> str:
    """The sentence of an example contract that begins with ``start``."""
    text = (EXAMPLES / f"{doc_id}.txt").read_text(encoding="utf-8")
    lo = text.index(start)
    return text[lo : text.index(".", text.index(" days", lo)) + 1]


def test_a_notice_question_gets_the_notice_period_and_a_term_question_the_term() -> None:
    """One renewal sentence states both the renewal term and the notice that stops it: each question gets its own
    (the notice period is the value notice is named beside)."""
    doc = next(
        p.stem
        for p in EXAMPLES.glob("*.txt")
        if "shall automatically renew for successive periods of two (2) years" in p.read_text(encoding="utf-8")
    )
    sentence = _clause(doc, "On the expiry of the Initial Term, this Agreement shall automatically renew")
    term = short_answer("How long is each automatic renewal term after the Initial Term expires?", sentence)
    notice = short_answer("How much notice of non-renewal must a party give?", sentence)
    assert term == ("two (2) years", "answer")
    assert notice is not None and notice[0].startswith("one hundred and eighty (180) days")


def test_a_short_answer_comes_from_the_answer_first_then_from_its_evidence() -> None:
    q = "For how long do the confidentiality obligations survive expiry or termination?"
    evidence = ["The obligations of this Section 3 shall survive for five (5) years from the date of expiry."]
    assert short_answer(q, "five (5) years from the date of expiry or termination", evidence) == (
        "five (5) years",
        "answer",
    )
    assert short_answer(q, "five (5) years", evidence) is None  # already the value
    assert short_answer(q, "the obligations survive", evidence) == ("five (5) years", "evidence")
    assert short_answer(q, "the obligations survive", ["No period is stated here."]) is None
    assert short_answer("Who are the parties?", "Acme Corp and Beta LLC, for two (2) years", evidence) is None
