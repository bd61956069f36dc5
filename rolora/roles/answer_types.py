"""Short answers of the kind a question asks for: "For how long ...?" is answered "two (2) years", not the sentence
that says so (``agent.short_answers``).

A question asking for a date, a period, an amount of money, a percentage, the governing law or who a party is
("Who are the parties to the contract?", "Which individual is a party ...?") has an answer *type* (:func:`answer_type`,
read from its asking sentence). When the analyst's answer states a value of that type among
other words, or is a whole sentence of the passages (an extractive answer: the analyst declined and the nearest
sentence answers), the answer becomes that value as the text writes it (:func:`short_answer`), with what qualifies
it ("per month", "from the Delivery Date"). Several values: the one whose neighbouring words share most with the
question. A party is named as the preamble names it (a company by its suffix, "Inc.", "LIMITED", "L.P.", an individual
by what follows the name, "an individual", an address); a question asking for every party gets all of them ("A Inc.;
B Ltd."). Nothing changes for a question of no type, or when no value of its type is stated.

Both annotated corpora answer such questions with the value alone (the example contracts' "two (2) years", CUAD's
"60 days", "New York"), which a user reads faster than a clause, and the citation still points at the clause.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal, get_args

from .verdicts import asked_sentence, content_words

__all__ = [
    "ANSWER_TYPES",
    "AnswerType",
    "about_the_contract",
    "answer_type",
    "answer_values",
    "asks_every_party",
    "iso_dates",
    "short_answer",
    "typed_values",
]

AnswerType = Literal["date", "period", "money", "percent", "law", "party"]
ANSWER_TYPES: tuple[str, ...] = get_args(AnswerType)

# what the asking sentence asks for, tried in this order (a percentage question often says "rate" or "amount")
_ASKS: tuple[tuple[AnswerType, re.Pattern[str]], ...] = (
    # who the contracting parties are ("Who are the parties to the contract?", "Which party is a Delaware
    # corporation?"), not which party does something ("Which party must give notice?": answered by the analyst)
    (
        "party",
        re.compile(
            r"\bwho (?:are|is) (?:the |a )?(?:contracting )?part(?:y|ies)\b|\bparties to (?:the|this) (?:contract|"
            r"agreement)\b|\bwhich (?:party|individual|company|entity|person) (?:is|was) (?:a|an)\b",
            re.I,
        ),
    ),
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
# a party's name as a contract's preamble writes it: a company ("Rogers Cable Communications Inc.", "KALVANE WATER
# SYSTEMS PTE. LTD.", "Skype Communications, S.A.") or an individual ("MARGARET ELLISON THORNE, an individual", "GARETH
# ALDOUS PENROSE of 14 Hythe Lane"), with the name the contract gives it when that follows at once ("Licensor")
_SP = r"(?:[ \t]+|[ \t]*\n[ \t]*)"  # a name may wrap onto the next line, not run past a blank one
_NAME_WORD = r"(?!(?:The|This|That|Such|Each|Any|All|Between|And)\b)(?:[A-Z][\w'’&-]*\.?|&|of|de|la|du|van|von)"
_COMPANY_SUFFIX = (  # capitalised: "a Delaware corporation" describes a party, it does not name one
    r"(?-i:(?=[A-Z]))(?:Inc|Incorporated|Corp|Corporation|Company|Co|LLC|L\.L\.C|Ltd|Limited|LP|L\.P|LLP|L\.L\.P|PLC|GmbH|AG|S\.A|"
    r"SA|N\.V|B\.V|S\.p\.A|SARL|S\.A\.R\.L|Pte\.?[ \t]+Ltd|Pty\.?[ \t]+Ltd|Limited[ \t]+Partnership)\b\.?"
)
_DEFINED_AS = r"(?:\s*,?\s*\((?:the\s+)?[\"“][^\"”()]{1,40}[\"”]\))?"
_NOT_A_NAME = r"(?!(?:The|This|That|Such|Each|Any|All|A|An|Said|Our|Its|Their|Other|Between|And)\b)"
_COMPANY = (
    rf"{_NOT_A_NAME}(?-i:[A-Z][\w'’.&-]*)(?:{_SP}(?-i:{_NAME_WORD})){{0,7}}?,?{_SP}{_COMPANY_SUFFIX}"
    rf"(?:\s*\([A-Z]+\))?{_DEFINED_AS}"
)
_INDIVIDUAL = (
    rf"{_NOT_A_NAME}(?-i:[A-Z][A-Za-z'’.-]+(?:[ \t]+[A-Z][A-Za-z'’.-]+){{1,3}})"
    r"(?=,?\s+(?:an individual|of \d{1,5}\s+(?-i:[A-Z])|residing\b))"
)
_PARTY = re.compile(rf"(?<![\w.])(?:{_COMPANY}|{_INDIVIDUAL})", re.I)

_VALUES: dict[AnswerType, re.Pattern[str]] = {
    "party": _PARTY,
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


_CONTRACT_WORDS = frozenset("party parties agreement contract".split())


def about_the_contract(question: str, clause_words: str) -> bool:
    """``question`` asks about the contract itself: for its date or a party, with fewer than three content words left
    once the contract's names are gone (``clause_words`` of its asking sentence: "What is the effective date?", "Who
    are the parties?"). Its opening states the answer, and shares the names with the question, not the words."""
    words = [w for w in content_words(clause_words) if w not in _CONTRACT_WORDS]
    return answer_type(question) in ("date", "party") and len(words) < 3


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


# the question asks for every party ("Who are the parties?"), or for an individual among them
_ASKS_ALL_PARTIES = re.compile(r"\bwho are the\b|\bparties to\b", re.I)
_ASKS_INDIVIDUAL = re.compile(r"\b(?:individual|person)\b", re.I)
_IS_COMPANY = re.compile(rf"{_COMPANY_SUFFIX}(?:\s*\([A-Z]+\))?{_DEFINED_AS}\s*$", re.I)


def asks_every_party(question: str) -> bool:
    """``question`` asks for every party ("Who are the parties to the contract?"), not for one of them."""
    return answer_type(question) == "party" and bool(_ASKS_ALL_PARTIES.search(asked_sentence(question)))


def _all_parties(found: Sequence[tuple[str, tuple[int, int]]]) -> str:
    """Every party named, once each, in order: "A Inc. ("Licensor"); B Ltd."."""
    names: dict[str, str] = {}
    for text, (start, end) in found:
        value = text[start:end].strip()
        names.setdefault(" ".join(_WORD.findall(value.lower())), value)
    return "; ".join(names.values())


def answer_values(question: str, kind: AnswerType, text: str) -> list[tuple[int, int]]:
    """The spans of ``text`` stating a value that can answer ``question`` (of type ``kind``): every value of that
    type, but only an individual's name when it asks which individual (or person) is a party."""
    spans = typed_values(text, kind)
    if kind == "party" and _ASKS_INDIVIDUAL.search(asked_sentence(question)):
        spans = [(a, b) for a, b in spans if not _IS_COMPANY.search(text[a:b])]
    return spans


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
    individual = kind == "party" and bool(_ASKS_INDIVIDUAL.search(asked))

    def score(found: tuple[str, tuple[int, int]]) -> float:
        text, (start, end) = found
        if kind == "period":  # a notice period answers a notice question
            same_role = _is_notice(text, (start, end)) == notice
        elif kind == "party":  # an individual answers a question asking for one
            same_role = not individual or not _IS_COMPANY.search(text[start:end])
        else:
            same_role = True
        return 10.0 * same_role + _context_score(text, (start, end), stems)

    for where, texts in (("answer", [answer]), ("evidence", list(evidence))):
        found = [(t, s) for t in texts for s in typed_values(t, kind)]
        if not found:
            continue
        if kind == "party" and _ASKS_ALL_PARTIES.search(asked):
            value = _all_parties(found)
            return None if value == answer.strip() else (value, where)
        text, span = max(found, key=score)  # max keeps the first of ties
        value = text[span[0] : span[1]].strip().rstrip(",;:'’")
        return None if value == answer.strip() else (value, where)
    return None


_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), start=1)}
_DATE_PARTS = re.compile(
    rf"(?P<mname1>{_MONTH})\s+(?P<d1>\d{{1,2}})(?:st|nd|rd|th)?,?\s+(?P<y1>\d{{4}})|"
    rf"(?P<d2>\d{{1,2}})(?:st|nd|rd|th)?\s+(?:day\s+of\s+)?(?P<mname2>{_MONTH}),?\s+(?P<y2>\d{{4}})|"
    r"(?P<m3>\d{1,2})/(?P<d3>\d{1,2})/(?P<y3>\d{2,4})|(?P<y4>\d{4})-(?P<m4>\d{2})-(?P<d4>\d{2})",
    re.I,
)


def _iso(m: re.Match[str]) -> str:
    g = m.groupdict()
    if g["mname1"] or g["mname2"]:
        month = _MONTHS.get((g["mname1"] or g["mname2"]).lower()[:3], 0)
        day, year = int(g["d1"] or g["d2"]), int(g["y1"] or g["y2"])
    elif g["m3"]:
        month, day, year = int(g["m3"]), int(g["d3"]), int(g["y3"])
        if month > 12 >= day:  # 31/12/2020: day first
            month, day = day, month
        if year < 100:  # "7/11/06"
            year += 2000 if year < 50 else 1900
    else:
        year, month, day = int(g["y4"]), int(g["m4"]), int(g["d4"])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return m.group()
    return f"{year:04d}-{month:02d}-{day:02d}"


def iso_dates(text: str) -> str:
    """``text`` with each date it states written as ``YYYY-MM-DD``, so the same date reads the same however it is
    written ("July 11, 2006", "11th day of July, 2006", "7/11/06"; a numeric date is month first, as in US contracts,
    unless its first number cannot be a month). The answer metrics compare dates this way.

    >>> iso_dates("made as of July 11, 2006 and ends 6/30/10")
    'made as of 2006-07-11 and ends 2010-06-30'
    """
    return _DATE_PARTS.sub(_iso, text)
