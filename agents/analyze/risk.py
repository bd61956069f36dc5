"""Risk notes: one deterministic keyword rule per clause category, applied to the quote and the clause holding it.

A rule takes ``(found, text)``, where ``text`` is the quote, :data:`QUOTE_END`, then the whole clause (empty when
nothing was found), and returns ``(risk, note)``. These are heuristics that flag what to review, not legal advice.

>>> RISK_RULES["Cap On Liability"](False, "")
('high', 'no liability cap found: exposure may be unlimited')
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from rolora.roles import split_sentences

__all__ = ["HEURISTIC_NOTE", "QUOTE_END", "RISK_RULES", "Risk", "RiskRule"]

Risk = Literal["low", "medium", "high", "unknown"]
HEURISTIC_NOTE = (
    "Risk notes are deterministic keyword heuristics on the cited clause (or on its absence from the passages "
    "searched); they flag what to review and are not legal advice."
)
_NUM = r"(\d{1,4})\s*\)?\s*"
_DURATION = re.compile(_NUM + r"(?:calendar\s+|business\s+)?(day|month|year)s?\b", re.IGNORECASE)
_JURISDICTION = re.compile(
    r"laws?\s+of\s+(?:the\s+)?((?:State|Commonwealth|Province|Republic|Kingdom)\s+of\s+)?"
    r"([A-Z][A-Za-z.]*(?:\s+[A-Z][A-Za-z.]*)*)"
)


def _durations(text: str) -> list[int]:
    factor = {"day": 1, "month": 30, "year": 365}
    return [int(n) * factor[unit.lower()] for n, unit in _DURATION.findall(text)]


_UNIT = r"(?:calendar\s+|business\s+)?(day|month|year)s?\b"
_NOTICE = (
    re.compile(r"notice[^.;]{0,100}?" + _NUM + _UNIT, re.IGNORECASE),  # notice ... at least ninety (90) days
    re.compile(
        _NUM + _UNIT + r"['’]?\s+(?:prior\s+|advance\s+)?(?:written\s+)?notice", re.IGNORECASE
    ),  # 30 days' notice
)
_FACTOR = {"day": 1, "month": 30, "year": 365}


def _days(text: str, near: str | None = None) -> list[int]:
    """Durations in days (``thirty (30) days`` -> 30, ``12 months`` -> 360, ``2 years`` -> 730) from the quote,
    else from the clause (``text`` is ``quote + QUOTE_END + clause``); with ``near``, only from sentences that
    match that regex."""
    quote, _, clause = text.partition(QUOTE_END)
    for part in (quote, clause):
        sentences = [s.text for s in split_sentences(part) if near is None or re.search(near, s.text, re.IGNORECASE)]
        found = [d for s in sentences for d in _durations(s)]
        if found:
            return found
    return []


def _notice_days(text: str) -> list[int]:
    """Notice periods in days (``thirty (30) days' prior written notice``), from the quote, else the clause."""
    quote, _, clause = text.partition(QUOTE_END)
    for part in (quote, clause):
        found = [int(m.group(1)) * _FACTOR[m.group(2).lower()] for p in _NOTICE for m in p.finditer(part)]
        if found:
            return found
    return []


def _has(text: str, *patterns: str) -> bool:
    return any(re.search(p, text, re.IGNORECASE) for p in patterns)


QUOTE_END = "\n\u2029\n"  # a rule's text is the quote, this separator, then the whole clause
RiskRule = Callable[[bool, str], tuple[Risk, str]]  # (found, quote + QUOTE_END + clause) -> (risk, note)


def _rule_parties(found: bool, t: str) -> tuple[Risk, str]:
    return ("low", "parties identified") if found else ("medium", "parties not identified in the passages searched")


def _rule_date(found: bool, t: str) -> tuple[Risk, str]:
    if found:
        return "low", "date stated"
    return "medium", "no date found: when obligations start may be unclear"


def _rule_expiration(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "no term or expiry found"
    if _has(t, r"perpetu", r"indefinite", r"until terminated"):
        return "medium", "no fixed end: runs until terminated"
    return "low", "fixed initial term"


def _rule_renewal(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "low", "no renewal clause found: the agreement ends at expiry"
    if _has(t, r"(?:not|no)\s+(?:be\s+)?(?:automatic\w*\s+)?renew\w*(?:\s+automatically)?", r"no automatic renewal"):
        return "low", "does not renew automatically"
    if _has(t, r"automatic\w*\s+(?:be\s+)?(?:renew|extend)", r"renew\w*\s+automatically", r"successive"):
        notice = max(_notice_days(t), default=0)
        if notice >= 90:
            return "high", f"auto-renews and stopping it needs about {notice} days' notice"
        return "medium", "auto-renews unless a party gives notice"
    return "low", "renewal needs an affirmative choice"


def _rule_renewal_notice(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "low", "no notice period to stop renewal found"
    days = max(_notice_days(t), default=0)
    if days >= 90:
        return "high", f"long notice period to stop renewal ({days} days): easy to miss"
    if days >= 60:
        return "medium", f"notice period to stop renewal of {days} days"
    if days:
        return "low", f"notice period to stop renewal of {days} days"
    return "medium", "notice period to stop renewal not stated in days"


def _rule_convenience(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "no termination for convenience found: bound until expiry or breach"
    days = min(_notice_days(t), default=0)
    when = f" on {days} days' notice" if days else ""
    return "medium", f"a party may terminate without cause{when}: check which party and the wind-down"


def _rule_cause(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "high", "no termination for breach found"
    if _has(t, r"cure"):
        return "low", "termination for breach with a cure period"
    return "medium", "termination for breach without a stated cure period"


def _rule_governing_law(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "high", "no governing-law clause found: which law applies is open to dispute"
    m = _JURISDICTION.search(t)
    where = (m.group(1) or "") + m.group(2) if m else "a named jurisdiction"
    return "low", f"governed by the laws of {where.strip()}"


def _rule_assignment(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "no assignment clause found: assignability falls back to the default rules"
    for sentence in (part for s in split_sentences(t) for part in s.text.split(";")):
        permits = _has(sentence, r"freely assign", r"may assign[^.;]{0,120}without[^.;]{0,40}consent")
        if permits and not _has(sentence, r"\b(?:neither|nor|not|no)\b[^.;]{0,60}\bmay (?:freely )?assign"):
            return "high", "a party may assign without the other's consent"
    if _has(t, r"consent", r"approval"):
        return "low", "assignment needs the other party's consent"
    return "medium", "assignment clause without a consent requirement"


def _rule_change_of_control(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "low", "no change-of-control clause found"
    return "medium", "a change of control triggers consent, notice or termination rights"


def _rule_confidentiality(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "high", "no confidentiality obligation found"
    if _has(t, r"perpetu", r"indefinite"):
        return "medium", "confidentiality obligations last indefinitely"
    years = max(_days(t), default=0) // 365
    return "low", f"confidentiality obligations for about {years} years" if years else "confidentiality obligations"


def _rule_indemnification(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "no indemnity found: third-party claims are not allocated"
    if _has(t, r"unlimited", r"uncapped", r"without limit"):
        return "high", "indemnity appears unlimited"
    return "medium", "indemnity obligations: check their scope and whether the liability cap applies"


def _rule_cap(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "high", "no liability cap found: exposure may be unlimited"
    if _has(t, r"shall not exceed", r"not to exceed", r"limited to", r"in no event[^.]{0,200}exceed", r"maximum"):
        return "low", "liability is capped"
    return "medium", "limitation-of-liability language without a clear cap"


def _rule_uncapped(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "low", "no uncapped carve-outs found"
    kinds = [
        label
        for label, pattern in (
            ("gross negligence", r"gross(?:ly)? neglig"),
            ("wilful misconduct", r"will?ful"),
            ("indemnities", r"indemn"),
            ("confidentiality", r"confidential"),
            ("data protection", r"data|privacy"),
            ("IP infringement", r"infring"),
            ("fraud", r"fraud"),
        )
        if _has(t, pattern)
    ]
    what = f" ({', '.join(kinds)})" if kinds else ""
    return "high", f"some liabilities are excluded from the cap and uncapped{what}"


def _rule_payment(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "no payment terms found"
    days = [d for d in _days(t, near=r"pa(?:y|id)|invoice|due") if d <= 180]
    late = _has(t, r"interest", r"late (?:fee|charge|payment)")
    if days and max(days) >= 60:
        return "medium", f"long payment terms ({max(days)} days)"
    extra = "; late payments carry interest or fees" if late else ""
    return "low", (f"payment within {max(days)} days" if days else "payment terms stated") + extra


def _rule_non_compete(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "low", "no non-compete found"
    days = max(_days(t), default=0)
    if days >= 365:
        return "high", f"non-compete restriction of about {days // 365} year(s)"
    return "medium", "non-compete restriction: check its scope, territory and duration"


def _rule_no_solicit(found: bool, t: str) -> tuple[Risk, str]:
    return ("medium", "restriction on soliciting or hiring employees") if found else ("low", "no employee non-solicit")


def _rule_ip(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "ownership of work product is not addressed"
    if _has(
        t, r"assign\w*[^.;]{0,80}right,? title", r"work made for hire", r"shall (?:be|become) the (?:sole )?property"
    ):
        return "medium", "IP created under the agreement transfers: check background-IP carve-outs and licences back"
    return "low", "IP ownership addressed"


def _rule_warranty(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "medium", "no warranty period found"
    if _has(t, r"\bas[ -]is\b") and not _days(t):
        return "high", "warranties disclaimed (as is)"
    days = max(_days(t), default=0)
    if days and days < 90:
        return "medium", f"short warranty period ({days} days)"
    return "low", f"warranty period of {days} days" if days else "warranty given"


def _rule_audit(found: bool, t: str) -> tuple[Risk, str]:
    if not found:
        return "low", "no audit right found"
    if _has(t, r"at any time", r"without (?:prior )?notice"):
        return "medium", "broad audit right (at any time or without notice)"
    return "low", "audit right on notice"


def _rule_insurance(found: bool, t: str) -> tuple[Risk, str]:
    return ("low", "insurance required") if found else ("medium", "no insurance requirement found")


RISK_RULES: dict[str, RiskRule] = {
    "Parties": _rule_parties,
    "Agreement Date": _rule_date,
    "Effective Date": _rule_date,
    "Expiration Date": _rule_expiration,
    "Renewal Term": _rule_renewal,
    "Notice Period To Terminate Renewal": _rule_renewal_notice,
    "Termination For Convenience": _rule_convenience,
    "Termination For Cause": _rule_cause,
    "Governing Law": _rule_governing_law,
    "Anti-Assignment": _rule_assignment,
    "Change Of Control": _rule_change_of_control,
    "Confidentiality": _rule_confidentiality,
    "Indemnification": _rule_indemnification,
    "Cap On Liability": _rule_cap,
    "Uncapped Liability": _rule_uncapped,
    "Payment Terms": _rule_payment,
    "Non-Compete": _rule_non_compete,
    "No-Solicit Of Employees": _rule_no_solicit,
    "Ip Ownership Assignment": _rule_ip,
    "Warranty Duration": _rule_warranty,
    "Audit Rights": _rule_audit,
    "Insurance": _rule_insurance,
}
