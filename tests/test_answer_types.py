"""Short answers of the kind a question asks for (rolora.roles.answer_types), on clauses of the example contracts and
on CUAD's question templates."""

from __future__ import annotations

import pytest

from rolora.roles.answer_types import (
    about_the_contract,
    answer_type,
    answer_values,
    iso_dates,
    short_answer,
    typed_values,
)

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
        ("Which individual is a party to the Settlement Agreement?", "party"),
        ("Consider the Supply Agreement between A and B. Who are the parties to the contract?", "party"),
        (NAMED + "which party is a Delaware corporation?", "party"),
        # no typed answer: which party does something, a purpose, what happens, a yes/no question
        (NAMED + "which party must give notice of a claim?", None),
        ("for what purpose may Customer's Authorized Users access and use the Service?", None),
        ("what happens to the unpaid Settlement Sum if a payment is missed?", None),
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
    assert short_answer("What happens if a payment is missed?", "Acme Corp pays within two (2) years", evidence) is None
    # a party question: the parties the answer names
    assert short_answer("Who are the parties?", "Acme Corp and Beta LLC, for two (2) years", evidence) == (
        "Acme Corp; Beta LLC",
        "answer",
    )


def _preamble(name: str, end: str) -> str:
    text = (EXAMPLES / name).read_text(encoding="utf-8")
    return text[: text.index(end)]


def test_parties_are_read_from_the_preamble_as_it_names_them() -> None:
    nda = _preamble("nda_mutual.txt", "RECITALS")
    lease = _preamble("commercial_lease.txt", "RECITALS")
    settlement = _preamble("settlement_agreement.txt", "BACKGROUND")
    assert [nda[a:b] for a, b in typed_values(nda, "party")] == [
        "Halvorsen Geospatial, Inc.",
        "Quillfeather Biologics Ltd.",
    ]
    # capitals, a comma before the suffix; "a Delaware limited partnership" describes a party and names none
    assert [lease[a:b] for a, b in typed_values(lease, "party")] == [
        "CALDERA POINT REALTY PARTNERS, L.P.",
        "THISTLEWOOD CLINICAL RESEARCH, LLC",
    ]
    # an individual has no company suffix: named by what follows the name (an address, "an individual")
    assert [settlement[a:b] for a, b in typed_values(settlement, "party")] == [
        "BRACKENFIELD ENGINEERING LIMITED",
        "SOLWICK MARINE COMPONENTS LTD",
        "GARETH ALDOUS PENROSE",
    ]
    # a statute "of 2016" is no individual, "The Company" no company
    nda_all = (EXAMPLES / "nda_mutual.txt").read_text(encoding="utf-8")
    assert "Defend Trade Secrets Act" not in {nda_all[a:b] for a, b in typed_values(nda_all, "party")}
    employment = (EXAMPLES / "employment_agreement.txt").read_text(encoding="utf-8")
    assert not any("The Company" in employment[a:b] for a, b in typed_values(employment, "party"))


def test_a_party_question_gets_the_party_it_asks_for_or_all_of_them() -> None:
    nda = _preamble("nda_mutual.txt", "RECITALS")
    settlement = _preamble("settlement_agreement.txt", "BACKGROUND")
    # a sentence naming only companies states no answer to "which individual": the typed reader passes it over
    individual = "Which individual is a party to the Settlement Agreement?"
    assert answer_values(individual, "party", nda) == []
    assert [settlement[a:b] for a, b in answer_values(individual, "party", settlement)] == ["GARETH ALDOUS PENROSE"]
    assert short_answer(NAMED + "which party is a Delaware corporation?", nda) == (
        "Halvorsen Geospatial, Inc.",
        "answer",
    )
    assert short_answer("Which individual is a party to the Settlement Agreement?", settlement) == (
        "GARETH ALDOUS PENROSE",
        "answer",
    )
    assert short_answer("Consider the Settlement Agreement. Who are the parties to the contract?", settlement) == (
        "BRACKENFIELD ENGINEERING LIMITED; SOLWICK MARINE COMPONENTS LTD; GARETH ALDOUS PENROSE",
        "answer",
    )


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("July 11, 2006", "2006-07-11"),
        ("the 11th day of July, 2006", "the 2006-07-11"),
        ("14 September 2022", "2022-09-14"),
        ("Sept. 3, 2019", "2019-09-03"),
        ("7/11/06", "2006-07-11"),  # CUAD's gold dates: month first, two-digit years
        ("5/22/99", "1999-05-22"),
        ("31/12/2020", "2020-12-31"),  # the first number cannot be a month: day first
        ("2020-01-05", "2020-01-05"),
        ("13/13/2020", "13/13/2020"),  # no date
    ],
)
def test_dates_read_the_same_however_they_are_written(text: str, iso: str) -> None:
    assert iso_dates(text) == iso


@pytest.mark.parametrize(
    ("question", "clause", "about"),
    [
        ("What is the effective date of the Mutual Non-Disclosure Agreement?", "What is the effective date?", True),
        ("Who are the parties to the Supply Agreement?", "Who are the parties?", True),
        (NAMED + "which party is a Delaware corporation?", "which party is a Delaware corporation?", True),
        # a date of something in the contract, a period: what the clause says, not the contract itself
        ("What is the Maturity Date of the term loan?", "What is the Maturity Date of the term loan?", False),
        (NAMED + "how many days' notice must Client give?", "how many days' notice must Client give?", False),
    ],
)
def test_a_question_about_the_contract_itself_asks_for_its_date_or_parties(
    question: str, clause: str, about: bool
) -> None:
    assert about_the_contract(question, clause) is about
