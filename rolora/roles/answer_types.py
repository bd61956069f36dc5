"""Short answers of the kind a question asks for: "For how long ...?" is answered "two (2) years", not the sentence
that says so (``agent.short_answers``).

A question asking for a date, a period, an amount of money, a percentage or the governing law has an answer *type*
(:func:`answer_type`, read from its asking sentence). When the analyst's answer states a value of that type among
other words, or is a whole sentence of the passages (an extractive answer: the analyst declined and the nearest
sentence answers), the answer becomes that value as the text writes it (:func:`short_answer`), with what qualifies
it ("per month", "from the Delivery Date"). Several values: the one whose neighbouring words share most with the
question. Nothing changes for a question of no type, or when no value of its type is stated.

Both annotated corpora answer such questions with the value alone (the example contracts' "two (2) years", CUAD's
"60 days", "New York"), which a user reads faster than a clause, and the citation still points at the clause.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, get_args

from .verdicts import asked_sentence

__all__ = ["ANSWER_TYPES", "AnswerType", "answer_type", "short_answer", "typed_values"]

AnswerType = Literal["date", "period", "money", "percent", "law"]
ANSWER_TYPES: tuple[str, ...] = get_args(AnswerType)

# what the asking sentence asks for, tried in this order (a percentage question often says "rate" or "amount")
_ASKS: tuple[tuple[AnswerType, re.Pattern[str]], ...] = (
    ("percent", re.compile(r"\b(?:percent\w*|interest rate|rate of interest|at what rate|what rate)\b", re.I)),
    ("law", re.compile(r"\b(?:whose|which|what)\b[^?]{0,40}\blaws?\b|\bgoverning law\b|\blaw governs\b", re.I)),
    (
        "period",
        re.compile(
            r"\bhow long\b|\bhow (?:far|much) in advance\b|\bhow many (?:calendar |business )?(?:hours|days|weeks|"
            r"months|years)\b|\bhow much (?:advance |prior )?notice\b|\b(?:what|which) (?:length|period|duration)\b|"
            r"\bnotice period\b|\brenewal term\b|\b(?:within|for) (?:how long|what period)\b|\bduration\b",
            re.I,
        ),
    ),
    (
        "date",
        re.compile(
            r"\b(?:what|which) (?:is the )?(?:\w+ )?date\b|\bwhen does\b[^?]*\beffective\b|\bon what date\b|"
            r"\bas of what date\b|\bdate of the (?:contract|agreement)\b",
            re.I,
        ),
    ),
    (
        "money",
        re.compile(
            r"\bhow much\b|\b(?:what|which)\s+(?:is|are|was|were)\b[^?]{0,60}\b(?:fees?|price|amount|sum|"
            r"instal+ment|payment|cap|damages|limits?|commitment|spend|rent|salary|compensation|cost)\b|"
            r"\bwhat\s+(?:[\w'-]+\s+){0,4}(?:fees?|price|damages|limits|commitment|payment)\b",
            re.I,
        ),
    ),
)

_NUMBER_WORD = (
    r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen|sixteen|seventeen|"
    r"eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|thousand|a|an)"
)
_NUMBER_WORDS = rf"{_NUMBER_WORD}(?:(?:[- ]|\s+and\s+){_NUMBER_WORD})*"
# "thirty (30)", "30", "thirty", "one and one-half (1.5)"
_NUMBER = rf"(?:{_NUMBER_WORDS}(?:\s*\(\d[\d,.]*\))?|\d[\d,.]*)"
# a capitalised defined term a period runs from: "from the Delivery Date", "after the Settlement Date"
_FROM_TERM = (
    r"(?:\s+(?:from|after|following|of|before|prior to)\s+(?:the\s+)?(?-i:(?:[A-Z][\w-]*\s+){0,3}[A-Z][\w-]*))?"
)
_PER = r"(?:\s+(?:per|a|each|every)\s+(?:annum|year|month|week|day|hour|occurrence|claim|breach|event))?"
_MONTH = (
    r"(?:January|February|March|April|May|June|July|August|September|October|November|December|Jan|Feb|Mar|Apr|"
    r"Jun|Jul|Aug|Sept?|Oct|Nov|Dec)\.?"
)
_VALUES: dict[AnswerType, re.Pattern[str]] = {
    "period": re.compile(
        rf"\b{_NUMBER}\s+(?:\(\d+\)\s+)?(?:full\s+)?(?:calendar\s+|business\s+|working\s+|consecutive\s+)?"
        rf"(?:hours?|days?|weeks?|months?|years?|Business\s+Days?)\b(?:'|’)?{_FROM_TERM}",
        re.I,
    ),
    "date": re.compile(
        rf"\b(?:{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:day\s+of\s+)?{_MONTH},?"
        rf"\s+\d{{4}}|\d{{1,2}}/\d{{1,2}}/\d{{2,4}}|\d{{4}}-\d{{2}}-\d{{2}})"
    ),
    "money": re.compile(
        rf"(?:(?:US|U\.S\.|USD|GBP|EUR|CAD|AUD)\s?)?[$£€]\s?\d[\d,]*(?:\.\d+)?(?:\s?(?:million|billion|thousand|[MK]))?"
        rf"(?:\s*\([^()]{{1,40}}\))?{_PER}|\b\d[\d,]*(?:\.\d+)?\s+(?:dollars|pounds|euros)\b{_PER}",
        re.I,
    ),
    "percent": re.compile(
        rf"\b(?:{_NUMBER_WORDS}(?:[- ]quarters?|[- ]half|[- ]hal(?:f|ves))?\s+percent(?:\s*\(\d[\d.]*\s?%\))?|"
        rf"\d[\d.]*\s?%|\d[\d.]*\s+percent){_PER}",
        re.I,
    ),
    "law": re.compile(
        r"\b(?:the\s+)?(?:State|Commonwealth|Province|Republic|Kingdom)\s+of\s+[A-Z][\w.]*(?:\s+[A-Z][\w.]*)*|"
        r"(?<=\blaws of )(?!the\b)[A-Z][\w.]*(?:(?:\s+|\s+and\s+)[A-Z][\w.]*)*"
    ),
}

_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    "a an the of to in on for by with and or is are be was were does do did must may shall will can what which who how "
    "long much many when this that under any each its their his her it as at from after before party parties "
    "agreement contract".split()
)


def answer_type(question: str) -> AnswerType | None:
    """The kind of value ``question``'s asking sentence asks for, or None (not a question with a typed answer)."""
    asked = asked_sentence(question)
    for kind, pattern in _ASKS:
        if pattern.search(asked):
            return kind
    return None


def typed_values(text: str, kind: AnswerType) -> list[tuple[int, int]]:
    """The ``(start, end)`` spans of ``text`` that state a value of ``kind``, in order."""
    spans = []
    for m in _VALUES[kind].finditer(text):
        value = m.group().rstrip(".") if kind == "law" else m.group()  # "... of the State of New York."
        if value.strip():
            spans.append((m.start(), m.start() + len(value)))
    return spans


def _stem(word: str) -> str:
    return word[:5]


def _context_score(text: str, span: tuple[int, int], question_stems: set[str], words: int = 12) -> float:
    """How near the question's content words (stems) are to ``span``: each one found among the ``words`` words on
    either side counts 1/d, d its distance in words (the nearest occurrence)."""
    before = [_stem(w) for w in _WORD.findall(text[: span[0]].lower())][-words:][::-1]
    after = [_stem(w) for w in _WORD.findall(text[span[1] :].lower())][:words]
    best: dict[str, float] = {}
    for side in (before, after):
        for d, stem in enumerate(side, start=1):
            if stem in question_stems:
                best[stem] = max(best.get(stem, 0.0), 1.0 / d)
    return sum(best.values())


# a notice period: the question asks how much notice; a value of the text is one when notice is named just before it
# or it is followed by "before", "prior", "notice" ("sixty (60) days before the end", "fourteen (14) days' notice")
_ASKS_NOTICE = re.compile(r"\b(?:notice|notify|notif\w+|in advance)\b", re.I)
_NOTICE_BEFORE = re.compile(r"\b(?:notice|notify|notifies|notification)\b", re.I)
_NOTICE_AFTER = re.compile(r"^\W*(?:(?:prior\s+)?(?:written\s+)?notice|before|prior|in\s+advance)\b", re.I)


def _is_notice(text: str, span: tuple[int, int]) -> bool:
    before = " ".join(_WORD.findall(text[: span[0]].lower())[-6:])
    return bool(_NOTICE_BEFORE.search(before) or _NOTICE_AFTER.match(text[span[1] :]))


def short_answer(question: str, answer: str, evidence: Sequence[str] = ()) -> tuple[str, str] | None:
    """``(short answer, where it was found: "answer" | "evidence")`` when ``question`` asks for a typed value
    (:func:`answer_type`) that ``answer`` states among other words, or, when ``answer`` states none, that one of the
    ``evidence`` sentences (the answer's cited sentences) states; None when nothing changes."""
    kind = answer_type(question)
    if kind is None or not answer.strip():
        return None
    asked = asked_sentence(question)
    stems = {_stem(w) for w in _WORD.findall(asked.lower()) if w not in _STOP}
    notice = kind == "period" and bool(_ASKS_NOTICE.search(asked))

    def score(found: tuple[str, tuple[int, int]]) -> float:
        same_role = kind != "period" or _is_notice(*found) == notice  # a notice period answers a notice question
        return 10.0 * same_role + _context_score(found[0], found[1], stems)

    for where, texts in (("answer", [answer]), ("evidence", list(evidence))):
        found = [(t, s) for t in texts for s in typed_values(t, kind)]
        if not found:
            continue
        text, span = max(found, key=score)  # max keeps the first of ties
        value = text[span[0] : span[1]].strip().rstrip(",;:'’")
        return None if value == answer.strip() else (value, where)
    return None
