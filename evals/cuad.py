"""The official CUAD v1 JSON (The Atticus Project, CC BY 4.0) converted to this project's data layout.

Input: ``CUAD_v1.json``, SQuAD 2.0 style: ``data[].title``, ``data[].paragraphs[].context``,
``paragraphs[].qas[].{id, question, answers[{text, answer_start}], is_impossible}``; a question's id is
``<title>__<category>`` and its text ends with ``Details: <description of the category>``.

Output, in ``out``:

- ``contracts/<doc_id>.txt``: one file per contract, its text exactly as the JSON's context (paragraphs joined by a
  blank line); ``doc_id`` is the title with every character outside ``[A-Za-z0-9._-]`` replaced by ``_``.
- ``qa.jsonl``: one question a line, ``{id, domain, doc_id, category, question, answers, evidence, answerable}``,
  the fields of ``examples/contracts/qa.jsonl``; ``evidence`` holds ``{doc_id, start, end}`` spans with
  ``text[start:end] == answer``; ``id`` is the first 12 hex digits of the SHA-256 of CUAD's question id.
- ``category_descriptions.csv``: ``Category: <name>,Description: <details>`` per category, taken from the questions.

Every file is written atomically; ``qa.jsonl`` last, so a folder with a ``qa.jsonl`` is complete.

>>> from pathlib import Path
>>> from rolora.evals.cuad import convert_cuad
>>> report = convert_cuad(Path("CUAD_v1.json"), Path("data/cuad"))  # doctest: +SKIP
>>> report.contracts, report.questions  # doctest: +SKIP
(510, 20910)
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rolora.errors import UserError
from rolora.fileutil import atomic_write_text

__all__ = ["ConvertReport", "CuadContract", "CuadQuestion", "convert_cuad", "doc_id_of", "read_cuad_json"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_DETAILS = re.compile(r"Details:\s*(.*)\s*$", re.S)
PARAGRAPH_JOIN = "\n\n"


@dataclass(frozen=True)
class CuadQuestion:
    """One CUAD question; ``spans`` are ``(start, end)`` in the contract's text, one per answer, in answer order."""

    cuad_id: str
    category: str
    question: str
    answers: list[str]
    spans: list[tuple[int, int]]
    impossible: bool


@dataclass(frozen=True)
class CuadContract:
    """One contract: its title, its ``doc_id`` (file-name safe) and its text."""

    title: str
    doc_id: str
    text: str
    questions: list[CuadQuestion]


@dataclass
class ConvertReport:
    out: Path
    contracts: int = 0
    questions: int = 0
    answerable: int = 0
    categories: int = 0
    realigned: int = 0  # answers whose answer_start was off and that were found nearby in the text
    realigned_ids: list[str] = field(default_factory=list)


def doc_id_of(title: str) -> str:
    """The file-name-safe id of a CUAD title (``EX-10.B(01) License`` -> ``EX-10.B_01__License``)."""
    doc_id = _UNSAFE.sub("_", title.strip())
    if not doc_id.strip("._"):
        raise UserError(f"CUAD title {title!r} leaves no usable file name")
    return doc_id


def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected an object, got {type(obj).__name__}")
    if key not in obj:
        raise UserError(f"{where}: missing '{key}' (is this the CUAD v1 JSON?)")
    value = obj[key]
    if not isinstance(value, kind):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise UserError(f"{where}.{key}: expected {names}, got {type(value).__name__}")
    return value


def _locate(text: str, answer: str, start: int, where: str) -> tuple[int, bool]:
    """``answer``'s start in ``text``: ``start`` when it matches there, else the nearest occurrence (realigned)."""
    if text[start : start + len(answer)] == answer:
        return start, False
    hits = [m.start() for m in re.finditer(re.escape(answer), text)] if answer else []
    if not hits:
        raise UserError(f"{where}: answer {answer[:60]!r} is not in the contract's text")
    return min(hits, key=lambda h: abs(h - start)), True


def read_cuad_json(path: Path) -> tuple[list[CuadContract], list[str]]:
    """Parse and check a CUAD v1 JSON file; returns the contracts and the ids of realigned answers.

    Raises ``UserError`` naming the file and the place (``data[3].paragraphs[0].qas[2]``) of the first problem.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (the CUAD v1 release's CUAD_v1.json)")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    data = _need(doc, "data", list, str(path))
    if not data:
        raise UserError(f"{path}: 'data' is empty: no contracts")
    contracts: list[CuadContract] = []
    realigned: list[str] = []
    seen: dict[str, str] = {}
    for i, entry in enumerate(data):
        where = f"{path}: data[{i}]"
        title = _need(entry, "title", str, where)
        doc_id = doc_id_of(title)
        if doc_id in seen:
            raise UserError(f"{where}: title {title!r} gives the file name of {seen[doc_id]!r} ({doc_id}.txt)")
        seen[doc_id] = title
        paragraphs = _need(entry, "paragraphs", list, where)
        if not paragraphs:
            raise UserError(f"{where}.paragraphs: empty: the contract has no text")
        texts: list[str] = []
        offset = 0
        questions: list[CuadQuestion] = []
        for j, para in enumerate(paragraphs):
            pwhere = f"{where}.paragraphs[{j}]"
            context = _need(para, "context", str, pwhere)
            for k, qa in enumerate(_need(para, "qas", list, pwhere)):
                qwhere = f"{pwhere}.qas[{k}]"
                qid = _need(qa, "id", str, qwhere)
                question = _need(qa, "question", str, qwhere)
                impossible = bool(qa.get("is_impossible", False))
                answers, spans = [], []
                for n, ans in enumerate(_need(qa, "answers", list, qwhere)):
                    awhere = f"{qwhere}.answers[{n}]"
                    text = _need(ans, "text", str, awhere)
                    start = _need(ans, "answer_start", int, awhere)
                    if not text.strip():
                        continue  # an empty answer marks nothing
                    if not 0 <= start <= len(context):
                        raise UserError(f"{awhere}.answer_start: {start} is outside the context (0..{len(context)})")
                    start, moved = _locate(context, text, start, awhere)
                    if moved:
                        realigned.append(qid)
                    answers.append(text)
                    spans.append((offset + start, offset + start + len(text)))
                if impossible and answers:
                    raise UserError(f"{qwhere}: is_impossible is true but it has {len(answers)} answers")
                category = qid.rsplit("__", 1)[1] if "__" in qid else ""
                if not category:
                    raise UserError(f"{qwhere}.id: {qid!r} does not end with __<category> (CUAD's id format)")
                questions.append(CuadQuestion(qid, category, question, answers, spans, impossible or not answers))
            texts.append(context)
            offset += len(context) + len(PARAGRAPH_JOIN)
        contracts.append(CuadContract(title, doc_id, PARAGRAPH_JOIN.join(texts), questions))
    return contracts, realigned


def qa_rows(contracts: list[CuadContract], domain: str = "contracts") -> Iterator[dict[str, Any]]:
    """The ``qa.jsonl`` rows of ``contracts``, in file order."""
    for c in contracts:
        for q in c.questions:
            unique = list(dict.fromkeys(q.answers))
            spans = list(dict.fromkeys(q.spans))
            yield {
                "id": hashlib.sha256(q.cuad_id.encode("utf-8")).hexdigest()[:12],
                "domain": domain,
                "doc_id": c.doc_id,
                "category": q.category,
                "question": q.question,
                "answers": unique,
                "evidence": [{"doc_id": c.doc_id, "start": s, "end": e} for s, e in spans],
                "answerable": not q.impossible,
            }


def _category_csv(contracts: list[CuadContract]) -> str:
    described: dict[str, str] = {}
    for c in contracts:
        for q in c.questions:
            m = _DETAILS.search(q.question)
            described.setdefault(q.category, m.group(1).strip() if m else "")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["Category (incl. context and answer)", "Description"])
    for name, desc in described.items():
        w.writerow([f"Category: {name}", f"Description: {desc}"])
    return buf.getvalue()


def convert_cuad(
    source: Path, out: Path, *, domain: str = "contracts", force: bool = False, progress: bool = False
) -> ConvertReport:
    """Convert ``source`` (CUAD v1 JSON) into ``out`` (see the module docstring); returns what was written.

    An ``out`` that already holds a ``qa.jsonl`` is refused unless ``force``. ``progress`` shows a bar on stderr.
    """
    out = Path(out)
    if (out / "qa.jsonl").exists() and not force:
        raise UserError(f"{out} already holds a qa.jsonl; pass --force to overwrite it")
    contracts, realigned = read_cuad_json(Path(source))
    ids = [row["id"] for row in qa_rows(contracts, domain)]
    if len(set(ids)) != len(ids):
        raise UserError(f"{source}: two questions share an id (CUAD's question ids must be unique)")
    (out / "contracts").mkdir(parents=True, exist_ok=True)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]contracts"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not progress,
        transient=True,
    ) as bar:
        task = bar.add_task("write", total=len(contracts))
        for c in contracts:
            atomic_write_text(out / "contracts" / f"{c.doc_id}.txt", c.text)
            bar.advance(task)
    rows = list(qa_rows(contracts, domain))
    atomic_write_text(out / "category_descriptions.csv", _category_csv(contracts))
    atomic_write_text(out / "qa.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return ConvertReport(
        out=out,
        contracts=len(contracts),
        questions=len(rows),
        answerable=sum(r["answerable"] for r in rows),
        categories=len({r["category"] for r in rows}),
        realigned=len(realigned),
        realigned_ids=realigned,
    )
