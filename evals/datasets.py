"""Eval datasets: JSONL questions with gold answers and character-span evidence, validated line by line.

One question per line, the format of ``examples/contracts/qa.jsonl`` and of CUAD's ``qa.jsonl``::

    {"id": "ex1-001", "question": "...", "domain": "contracts", "answers": ["March 14, 2023"],
     "evidence": [{"doc_id": "nda_mutual", "start": 33, "end": 148}], "category": "Effective Date",
     "answerable": true}

``doc_id`` (the contract the question is about) and ``metadata`` are optional. An answerable question has at least
one evidence span; an unanswerable one has none (its gold behaviour is a refusal). Every bad line is reported at
once, by number, in one line.

>>> qs = load_dataset(Path("examples/contracts/qa.jsonl"))  # doctest: +SKIP
>>> held_out = select_questions(qs, split=["test"])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rolora.adapters.data.base import Split, doc_split
from rolora.errors import UserError

__all__ = ["EvalQuestion", "Evidence", "load_dataset", "select_questions"]

_MAX_REPORTED = 5  # bad lines named in the error; the count says how many more


class Evidence(BaseModel):
    """A gold span: ``document_text(doc_id)[start:end]`` (``end`` exclusive)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    doc_id: str = Field(min_length=1)
    start: int = Field(ge=0)
    end: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Evidence:
        if self.end <= self.start:
            raise ValueError(f"end ({self.end}) must be greater than start ({self.start})")
        return self

    @property
    def span(self) -> tuple[str, int, int]:
        return (self.doc_id, self.start, self.end)


class EvalQuestion(BaseModel):
    """One annotated question."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1)
    question: str = Field(min_length=1)
    domain: str | None = None
    answers: list[str]
    evidence: list[Evidence]
    category: str = ""
    answerable: bool
    doc_id: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> EvalQuestion:
        if self.answerable and not self.evidence:
            raise ValueError("answerable is true but evidence is empty; add the gold span or set answerable false")
        if not self.answerable and self.evidence:
            raise ValueError("answerable is false but evidence is given; remove it or set answerable true")
        return self

    @property
    def contract(self) -> str:
        """The contract the question is about: ``doc_id``, else the first evidence document, else ''."""
        if self.doc_id:
            return self.doc_id
        return self.evidence[0].doc_id if self.evidence else ""

    @property
    def gold_spans(self) -> list[tuple[str, int, int]]:
        return [e.span for e in self.evidence]


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parts.append(f"{loc}: unknown field (allowed: {', '.join(EvalQuestion.model_fields)})")
        elif e["type"] == "missing":
            parts.append(f"{loc}: missing")
        else:
            parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def load_dataset(path: Path) -> list[EvalQuestion]:
    """Read and validate a question file; raise one ``UserError`` naming every bad line (the first few in full)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: dataset not found; check the suite's datasets[].path")
    rows: list[EvalQuestion] = []
    bad: list[str] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as e:
            bad.append(f"line {n}: not JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(data, dict):
            bad.append(f"line {n}: expected a JSON object, got {type(data).__name__}")
            continue
        try:
            q = EvalQuestion.model_validate(data)
        except ValidationError as e:
            bad.append(f"line {n}: {_describe(e)}")
            continue
        if q.id in seen:
            bad.append(f"line {n}: id {q.id!r} repeats line {seen[q.id]}")
            continue
        seen[q.id] = n
        rows.append(q)
    if bad:
        more = f" (and {len(bad) - _MAX_REPORTED} more bad lines)" if len(bad) > _MAX_REPORTED else ""
        raise UserError(f"{path}: {' | '.join(bad[:_MAX_REPORTED])}{more}; fix these lines")
    if not rows:
        raise UserError(f"{path}: no questions; add one JSON object per line")
    return rows


def select_questions(
    questions: Sequence[EvalQuestion],
    *,
    split: Sequence[Split] | None = None,
    split_seed: int = 0,
    validation: float = 0.1,
    test: float = 0.2,
    contracts: int | None = None,
    answerable_per_contract: int | None = None,
    unanswerable_per_contract: int | None = None,
    seed: int = 0,
) -> list[EvalQuestion]:
    """A fixed, reproducible subset: contracts in ``split`` of ``doc_split(contract, split_seed, validation, test)``
    (the split adapters are trained with, so no training contract is evaluated), then ``contracts`` of them drawn
    with ``seed``, then up to N answerable / unanswerable questions per contract. File order is kept."""
    keep = list(questions)
    if split is not None:
        wanted = set(split)
        keep = [q for q in keep if doc_split(q.contract, split_seed, validation, test) in wanted]
    by_contract: dict[str, list[EvalQuestion]] = defaultdict(list)
    for q in keep:
        by_contract[q.contract].append(q)
    names = sorted(by_contract)
    if contracts is not None and contracts < len(names):
        names = sorted(random.Random(seed).sample(names, contracts))
    chosen: set[str] = set()
    rng = random.Random(seed + 1)
    for name in names:
        qs = by_contract[name]
        for flag, cap in ((True, answerable_per_contract), (False, unanswerable_per_contract)):
            group = [q for q in qs if q.answerable is flag]
            if cap is not None and cap < len(group):
                group = rng.sample(group, cap)
            chosen.update(q.id for q in group)
    return [q for q in keep if q.id in chosen]
