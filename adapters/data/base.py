"""Per-role training data: one builder per role behind a small Protocol, registered by name.

Every builder turns a domain's corpus (through its real ``Retriever``) and its annotated questions into chat
examples ``{"prompt": [messages], "completion": [assistant message]}`` (TRL's conversational prompt-completion
format, so the loss falls on the completion only). Splits are by document, so no contract leaks across
train/validation/test; the same seed gives the same data; a data card (counts, sources, hashes) is saved beside it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from rolora.errors import UserError
from rolora.fileutil import atomic_write_text

__all__ = [
    "BUILDERS",
    "BuildContext",
    "DataBuilder",
    "DataCard",
    "Example",
    "QARow",
    "Split",
    "build_role_splits",
    "doc_split",
    "load_qa",
    "register_builder",
    "save_dataset",
]

Split = Literal["train", "validation", "test"]
Role = Literal["analyst", "critic", "query_writer", "domain"]


@dataclass(frozen=True)
class QARow:
    """One annotated question in the project's eval format (examples/contracts/qa.jsonl, CUAD's qa.jsonl)."""

    id: str
    doc_id: str
    category: str
    question: str
    answers: tuple[str, ...]
    evidence: tuple[tuple[str, int, int], ...]
    answerable: bool


def load_qa(path: Path) -> list[QARow]:
    """Read a QA JSONL file; a bad line is a one-line error naming the file and line."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            ev = tuple((e["doc_id"], int(e["start"]), int(e["end"])) for e in r.get("evidence", []))
            rows.append(
                QARow(
                    str(r["id"]),
                    r["doc_id"],
                    r.get("category", ""),
                    r["question"],
                    tuple(r.get("answers", [])),
                    ev,
                    bool(r.get("answerable", bool(ev))),
                )
            )
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"{path}:{n}: not a QA row ({e}); expected {{id, doc_id, question, answers, evidence}}"
            ) from e
    return rows


def doc_split(doc_id: str, seed: int = 0, validation: float = 0.1, test: float = 0.2) -> Split:
    """Deterministic split of a document by a hash of (seed, doc_id): every example of a doc lands together."""
    h = int(hashlib.sha256(f"{seed}:{doc_id}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if h < test:
        return "test"
    if h < test + validation:
        return "validation"
    return "train"


@dataclass
class Example:
    prompt: list[dict[str, str]]
    completion: list[dict[str, str]]
    doc_id: str
    role: str
    source: str  # "qa" | "clause" | "perturb:<kind>" | ...
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BuildContext:
    """What a builder gets: the domain's retriever, its QA rows and the settings."""

    retriever: Any  # rolora.retrieval.Retriever of the domain
    qa: list[QARow]
    seed: int = 0
    limit: int | None = None  # max examples per split (quick runs)
    distractors: int = 3
    oracle_rate: float = 0.8  # RAFT: share of examples whose context holds the gold chunk
    # most the training split may hold of "not in the provided clauses" targets (no-oracle + unanswerable): short
    # runs on a mix where that one string dominates learn to refuse everything. None: the data's own mix.
    max_refusal_share: float | None = 0.25
    # questions generated from each contract's own text (rolora.adapters.data.generated); 0: annotated ones only
    generated_per_document: int = 0
    # the analyst's output format (rolora.roles.formats): "quote" copies a sentence, "sentence" names its number
    analyst_format: str = "quote"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


class DataBuilder(Protocol):
    """Builds one role's examples; ``split_of(doc_id)`` decides where each document goes."""

    role: str

    def build(self, ctx: BuildContext, split_of: Callable[[str], Split]) -> dict[Split, list[Example]]: ...


BUILDERS: dict[str, Callable[[], DataBuilder]] = {}


def register_builder(role: str) -> Callable[[Callable[[], DataBuilder]], Callable[[], DataBuilder]]:
    def deco(factory: Callable[[], DataBuilder]) -> Callable[[], DataBuilder]:
        BUILDERS[role] = factory
        return factory

    return deco


def build_role_splits(role: str, ctx: BuildContext) -> dict[Split, list[Example]]:
    """``role``'s examples as ``rolora train`` builds them: by the registered builder, with clause questions generated
    from every annotated contract, each contract's examples in its ``doc_split(doc_id, ctx.seed)`` split. ``role``
    is one of ``BUILDERS`` (``rolora train`` checks it before anything is loaded)."""
    ctx.extra["clause_docs"] = sorted({q.doc_id for q in ctx.qa})
    return BUILDERS[role]().build(ctx, lambda d: doc_split(d, ctx.seed))


@dataclass
class DataCard:
    role: str
    domain: str
    seed: int
    counts: dict[str, int]
    sources: dict[str, int]
    documents: dict[str, list[str]]
    hashes: dict[str, str]
    qa_file: str | None = None

    @property
    def digest(self) -> str:
        return _digest(self.hashes)


def _digest(hashes: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()[:16]


def dataset_digest(folder: Path) -> str | None:
    """The digest a :class:`DataCard` would have for the split files in ``folder`` now (None when one is missing)."""
    hashes = {}
    for split in ("train", "validation", "test"):
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            return None
        hashes[split] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _digest(hashes)


def save_dataset(
    out: Path, role: str, domain: str, seed: int, splits: dict[Split, list[Example]], qa_file: str | None
) -> DataCard:
    """Write ``train/validation/test.jsonl`` and ``data_card.json`` atomically; returns the card."""
    out.mkdir(parents=True, exist_ok=True)
    hashes, counts, docs = {}, {}, {}
    sources: dict[str, int] = {}
    for split in ("train", "validation", "test"):
        rows = splits.get(split, [])
        text = "".join(json.dumps(e.to_json(), ensure_ascii=False) + "\n" for e in rows)
        atomic_write_text(out / f"{split}.jsonl", text)
        hashes[split] = hashlib.sha256(text.encode()).hexdigest()
        counts[split] = len(rows)
        docs[split] = sorted({e.doc_id for e in rows})
        for e in rows:
            key = e.source.split(":")[0] if not e.source.startswith("perturb") else e.source
            sources[key] = sources.get(key, 0) + 1
    card = DataCard(role, domain, seed, counts, sources, docs, hashes, qa_file)
    atomic_write_text(out / "data_card.json", json.dumps({**asdict(card), "digest": card.digest}, indent=2))
    return card
