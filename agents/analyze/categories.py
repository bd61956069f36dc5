"""The clause categories ``rolora analyze`` looks for, loaded from the table ``categories.yaml`` (package data)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from rolora.errors import UserError

__all__ = ["CATEGORIES", "ClauseCategory", "load_categories", "select_categories"]


@dataclass(frozen=True)
class ClauseCategory:
    """One clause category: the question the analyst answers, the search query and the heading keywords."""

    name: str  # CUAD's name where CUAD has the category (its qa.jsonl spelling), else our own
    question: str
    query: str
    headings: tuple[str, ...]  # heading words (regex fragments) that mark a chunk as a candidate
    cue: str  # regex a sentence stating this clause nearly always matches (the keyword fallback)
    cuad: bool = True
    lead: bool = False  # the contract's opening chunk is always a candidate (parties, dates)

    def heading_pattern(self) -> re.Pattern[str]:
        return re.compile(r"\b(?:" + "|".join(self.headings) + r")", re.IGNORECASE)


_FIELDS = {"name", "question", "query", "headings", "cue", "cuad", "lead"}


def load_categories(text: str | None = None, where: str = "categories.yaml") -> tuple[ClauseCategory, ...]:
    """The category table (``text``: YAML, default the shipped ``categories.yaml``); one error lists every problem."""
    if text is None:
        text = resources.files(__package__).joinpath("categories.yaml").read_text(encoding="utf-8")
    rows: Any = yaml.safe_load(text)
    if not isinstance(rows, list):
        raise UserError(f"{where}: expected a list of categories")
    out: list[ClauseCategory] = []
    problems: list[str] = []
    for i, row in enumerate(rows):
        name = row.get("name", f"#{i + 1}") if isinstance(row, dict) else f"#{i + 1}"
        if not isinstance(row, dict):
            problems.append(f"{name}: expected a mapping")
            continue
        unknown = sorted(set(row) - _FIELDS)
        missing = sorted({"name", "question", "query", "headings", "cue"} - set(row))
        if unknown:
            problems.append(f"{name}: unknown keys {', '.join(unknown)} (known: {', '.join(sorted(_FIELDS))})")
        if missing:
            problems.append(f"{name}: missing {', '.join(missing)}")
        if unknown or missing:
            continue
        for pattern in [*row["headings"], row["cue"]]:
            try:
                re.compile(pattern)
            except re.error as e:
                problems.append(f"{name}: bad regex {pattern!r}: {e}")
        out.append(
            ClauseCategory(
                str(row["name"]),
                str(row["question"]),
                str(row["query"]),
                tuple(str(h) for h in row["headings"]),
                str(row["cue"]),
                bool(row.get("cuad", True)),
                bool(row.get("lead", False)),
            )
        )
    names = [c.name.lower() for c in out]
    problems += [f"{n}: listed twice" for n in sorted({n for n in names if names.count(n) > 1})]
    if problems:
        raise UserError(f"{where}: " + "; ".join(problems))
    return tuple(out)


CATEGORIES: tuple[ClauseCategory, ...] = load_categories()
_BY_NAME = {c.name.lower(): c for c in CATEGORIES}


def select_categories(names: Sequence[str] | None = None) -> list[ClauseCategory]:
    """The named categories (case-insensitive), all of them for None; one error lists every unknown name."""
    if not names:
        return list(CATEGORIES)
    out: list[ClauseCategory] = []
    unknown: list[str] = []
    for name in names:
        cat = _BY_NAME.get(name.strip().lower())
        if cat is None:
            unknown.append(name)
        elif cat not in out:
            out.append(cat)
    if unknown:
        known = ", ".join(c.name for c in CATEGORIES)
        raise UserError(f"unknown clause categories: {', '.join(unknown)}; choose from: {known}")
    return out
