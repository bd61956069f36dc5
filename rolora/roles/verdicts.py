"""Yes/no questions and their verdicts: "Does the agreement allow the receiving party to ...?" is answered "Yes",
"No" or "Not mentioned", with the clause that decides it cited (``agent.yes_no``).

The verdict rests on the passages, not on the model's wording: a question is *mentioned* when one of the passages'
sentences is near enough what it asks (cosine of the retrieval embedder, at least ``agent.min_evidence_similarity``,
chosen on the validation splits by ``bench/verdicts.py``; below it any question is refused). The nearest sentence
decides it, without a model call, and it is "No" only when the question asks whether something is allowed and that
clause forbids it. CUAD's yes/no questions ("Is there a clause ...?")
are answered "Yes" when the contract has the clause and are unanswerable otherwise, so there "Not mentioned" is the
refusal the eval counts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, get_args

__all__ = [
    "NOT_MENTIONED",
    "YES_NO",
    "YesNo",
    "answered_verdict",
    "asked_sentence",
    "content_words",
    "evidence_query",
    "gold_verdict",
    "is_yes_no",
    "says_nothing",
    "verdict_of",
]

YesNo = Literal["Yes", "No", "Not mentioned"]
YES_NO: tuple[str, ...] = get_args(YesNo)
NOT_MENTIONED: YesNo = "Not mentioned"

# the auxiliary a yes/no question opens with ("Is there ...", "Does a party ...", "May the licensee ...")
_AUX = ("is are was were am does do did can could may might must shall should will would has have had").split()
_OPENS_YES_NO = re.compile(rf"^(?:{'|'.join(_AUX)})\b", re.IGNORECASE)
# the last sentence of a question that opens with context ("Consider the Supply Agreement between A and B. Is ...?")
_SENTENCES = re.compile(r"(?<=[.?!])\s+(?=[A-Z\"“(])")
# the question asks whether something is allowed
_PERMISSION = re.compile(r"\b(?:allow\w*|permit\w*|may|can|entitled|right to|free to)\b", re.IGNORECASE)
# the clause forbids it
_FORBIDS = re.compile(
    r"\b(?:shall|will|may|must|can|could|should)\s+not\b|\b(?:cannot|can't|won't|shan't)\b|\bnot\s+(?:be\s+)?"
    r"(?:permitted|allowed|entitled)\b|\b(?:prohibited|forbidden)\b|\bno\s+(?:\w+\s+){0,3}(?:shall|may|will)\b",
    re.IGNORECASE,
)


def asked_sentence(question: str) -> str:
    """The sentence of ``question`` that asks: its last question (ending "?"), else its last sentence. Context before
    it, such as the contract it is about, says nothing about the answer, and neither does a note after it ("Does the
    contract include a cap on liability ...? This includes time limitation ...", CUAD's wording)."""
    parts = [p.strip() for p in _SENTENCES.split(question.strip()) if p.strip()]
    asking = [p for p in parts if p.endswith("?")]
    return asking[-1] if asking else (parts[-1] if parts else question.strip())


def is_yes_no(question: str) -> bool:
    """A question answered by yes or no: its asking sentence opens with an auxiliary verb and ends with "?"
    ("Does the agreement allow ...?", "Is there a clause ...?"; not "Which law governs ...?")."""
    asked = asked_sentence(question)
    return asked.endswith("?") and bool(_OPENS_YES_NO.match(asked))


# words that say nothing about a clause: what is left of an asking sentence without them is what it asks about
_FUNCTION_WORDS = frozenset(
    "a an the of to in on for by with and or is are be been was were does do did must may shall will would can could "
    "what which who whom whose how when where why this that these those under any each its their his her it as at "
    "from after before".split()
)


def content_words(text: str) -> list[str]:
    """The words of ``text`` that say something about a clause (lower case; no question or function words)."""
    return [w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _FUNCTION_WORDS]


def evidence_query(question: str, clause_words: str, about_the_contract: bool = False) -> str:
    """What a sentence of the passages must be near to say something about what ``question`` asks (any question,
    ``agent.min_evidence_similarity``): the asking sentence without the contract's naming words (``clause_words`` of
    it), or the asking sentence itself when fewer than three words are left or the question is
    ``about_the_contract`` itself (:func:`rolora.roles.answer_types.about_the_contract`: "What is the effective date
    of the Mutual Non-Disclosure Agreement between A and B?" shares the names with the preamble that answers it, not
    "effective date")."""
    if about_the_contract or len(clause_words.split()) < 3:
        return asked_sentence(question)
    return clause_words


def says_nothing(answer: str) -> bool:
    """An answer without a content word ("the", "of the", "") or one that is only a yes or a no: it answers no
    question that asks for something other than a verdict."""
    return all(w in ("yes", "no", "not") for w in content_words(answer))


def verdict_of(question: str, similarity: float | None, clause: str | None, min_similarity: float) -> YesNo:
    """The verdict for ``question`` when the passages' deciding sentence ``clause`` is ``similarity`` near it (None:
    no sentence): "Not mentioned" below ``min_similarity``; "No" when the question asks whether something is
    allowed and the clause forbids it; "Yes" otherwise."""
    if clause is None or similarity is None or similarity < min_similarity:
        return NOT_MENTIONED
    if _PERMISSION.search(asked_sentence(question)) and _FORBIDS.search(clause):
        return "No"
    return "Yes"


def gold_verdict(answers: Sequence[str], answerable: bool) -> YesNo:
    """The verdict a yes/no question's annotation implies: "Not mentioned" when it is unanswerable (CUAD marks a
    clause the contract lacks that way), its gold answer when that is "Yes" or "No", else "Yes" (a gold span
    answers it)."""
    if not answerable:
        return NOT_MENTIONED
    for a in answers:
        word = a.strip().rstrip(".").lower()
        if word in ("yes", "no"):
            return "Yes" if word == "yes" else "No"
    return "Yes"


def answered_verdict(answer: str, not_found: bool, verdict: str | None) -> YesNo:
    """The verdict an answer gives: its own when the graph decided one, else read from it (a refusal is "Not
    mentioned", an answer opening with "No" is "No", any other answer "Yes") - so a graph without verdicts is scored
    on the same footing."""
    if verdict in YES_NO:
        return verdict  # type: ignore[return-value]
    if not_found:
        return NOT_MENTIONED
    return "No" if re.match(r"^\s*no\b", answer, re.IGNORECASE) else "Yes"
