"""The analyst's two output formats, one request builder and one reply reader for both.

- ``quote``: the analyst copies a sentence of a passage, ``{"citations": [{"passage": n, "quote": "..."}], ...}``;
  the grammar allows only the passages' sentences, but the model writes them token by token and commits to one by
  its first tokens.
- ``sentence``: every quotable sentence of the passages is numbered in the prompt (``[S7] The Agreement shall be
  governed ...``) and the analyst names the numbers, ``{"evidence": [7], "answer": "...", "not_found": false}``;
  the grammar allows only the numbers shown, and the reply maps each number back to the exact sentence. One or two
  tokens per citation instead of ~60.

Both number the same units, :func:`rolora.roles.quotes.quote_spans`, so the data builders, the graph, ``rolora
analyze`` and the role evals agree on what a citation can be whatever the format. An adapter records the format it
was trained on (``training_config.analyst_format``); the base model uses ``agent.analyst_format``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .prompts import (
    ANALYST_SCHEMA,
    DATA_NOTE,
    NOT_FOUND,
    analyst_messages,
    is_refusal,
    narrow_analyst_schema,
    passage_blocks,
)
from .quotes import Quote, is_heading, quote_spans

__all__ = [
    "ANALYST_FORMATS",
    "SENTENCE_ANALYST_SCHEMA",
    "AnalystCall",
    "AnalystFormat",
    "analyst_call",
    "analyst_schema_for",
    "answer_sentences",
    "evidence_ids",
    "nearest_sentence",
    "reply_citations",
    "sentence_similarities",
    "trained_format",
]

AnalystFormat = Literal["quote", "sentence"]
ANALYST_FORMATS: tuple[AnalystFormat, ...] = ("quote", "sentence")
MAX_SENTENCE_ID = 200  # quote_spans' own limit

SENTENCE_ANALYST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "evidence": {
            "type": "array",
            "maxItems": 3,
            "items": {"type": "integer", "minimum": 1, "maximum": MAX_SENTENCE_ID},
        },
        "answer": {"type": "string", "maxLength": 400},
        "not_found": {"type": "boolean"},
    },
    "required": ["evidence", "answer", "not_found"],
    "additionalProperties": False,
}

_SENTENCE_SYSTEM = (
    "You are a contract analyst. Answer the question only from the numbered clauses; each of their sentences is "
    "numbered [S1], [S2], ... First give the numbers of the sentences that answer it, then a short answer. Reply "
    'with JSON: {"evidence": [int], "answer": str, "not_found": bool}. If the clauses do not answer it, reply with '
    f'no evidence, answer "{NOT_FOUND}" and not_found true.'
)


def analyst_schema_for(fmt: AnalystFormat) -> dict[str, Any]:
    """The format's schema, not narrowed to any passages (role evals, documentation)."""
    return ANALYST_SCHEMA if fmt == "quote" else SENTENCE_ANALYST_SCHEMA


def trained_format(training_config: Mapping[str, Any]) -> str:
    """The output format an adapter was trained in, from its manifest's ``training_config``; "quote" for one trained
    before there was a choice."""
    return str(training_config.get("analyst_format", "quote"))


def _check(fmt: str) -> AnalystFormat:
    if fmt not in ANALYST_FORMATS:
        raise ValueError(f"analyst format must be one of {', '.join(ANALYST_FORMATS)} (got {fmt!r})")
    return fmt


def _numbered(text: str, quotes: Sequence[tuple[int, Quote]]) -> str:
    """``text`` with ``[S<id>] `` before each quote that starts in it (``quotes``: (id, quote) in text order)."""
    out: list[str] = []
    at = 0
    for i, q in quotes:
        out += [text[at : q.start], f"[S{i}] "]
        at = q.start
    out.append(text[at:])
    return "".join(out)


@dataclass(frozen=True)
class AnalystCall:
    """One analyst request: its messages and grammar, and the sentences (``quotes``, id = index + 1) a reply may
    cite. ``allowed``: the ids the grammar allows (all when None)."""

    format: AnalystFormat
    messages: list[dict[str, str]]
    schema: dict[str, Any]
    quotes: list[Quote]


def analyst_call(
    fmt: str,
    question: str,
    passages: Sequence[Any],
    feedback: str | None = None,
    *,
    defended: bool = True,
    constrain: bool = True,
    allowed: Sequence[str] | None = None,
    max_citations: int = 3,
    min_citations: int = 0,
    answer_chars: int | None = None,
) -> AnalystCall:
    """The analyst's messages and schema for ``passages`` in format ``fmt``. ``constrain``: citations only among
    the passages' sentences (:func:`quote_spans`; a sentence addressing the model is never one when ``defended``);
    ``allowed``: a further restriction to these sentence texts (``rolora analyze`` offers the few most similar)."""
    fmt = _check(fmt)
    quotes = quote_spans(passages, exclude_injected=defended)
    only = None if allowed is None else set(allowed)
    # a heading is numbered like any sentence (it says where a clause is) but is never evidence
    citable = [q for q in quotes if not is_heading(q.text) and (only is None or q.text in only)]
    texts = [q.text for q in citable]
    if fmt == "quote":
        schema = narrow_analyst_schema(
            texts if constrain else None,
            max_citations=max_citations,
            min_citations=min_citations if texts or not constrain else 0,
            passages=len(passages),
            answer_chars=answer_chars,
        )
        if constrain and not texts:
            schema["properties"]["citations"]["maxItems"] = 0
        return AnalystCall(fmt, analyst_messages(question, passages, feedback, defended=defended), schema, quotes)
    keep = {id(q) for q in citable}
    ids = [i for i, q in enumerate(quotes, start=1) if id(q) in keep]
    schema = copy.deepcopy(SENTENCE_ANALYST_SCHEMA)
    props = schema["properties"]
    evidence = props["evidence"]
    evidence["maxItems"] = max_citations if ids else 0
    if ids and min_citations:
        evidence["minItems"] = min_citations
    evidence["items"] = {"enum": ids} if ids else {"type": "integer"}
    if answer_chars is not None:
        props["answer"]["maxLength"] = answer_chars
    by_passage: dict[int, list[tuple[int, Quote]]] = {}
    for i, q in enumerate(quotes, start=1):
        by_passage.setdefault(q.passage, []).append((i, q))
    blocks = passage_blocks(passages, defended=defended, rewrite=lambda n, text: _numbered(text, by_passage.get(n, [])))
    user = f"Question: {question}\n\nClauses:\n{blocks}"
    if feedback:
        user += f"\n\nA reviewer rejected the previous answer: {feedback}"
    system = f"{_SENTENCE_SYSTEM} {DATA_NOTE}" if defended else _SENTENCE_SYSTEM
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return AnalystCall(fmt, messages, schema, quotes)


_SPACE = re.compile(r"\s+")


def _norm(text: str) -> str:
    return _SPACE.sub(" ", text).strip().strip(" .,;:\"'“”‘’()").lower()


def answer_sentences(answer: str, quotes: Sequence[Quote]) -> list[Quote]:
    """The sentences among ``quotes`` that state ``answer`` word for word (case and whitespace aside), in passage
    order; none for a refusal or an answer shorter than 3 characters. Never a fuzzy match."""
    needle = _norm(answer)
    if len(needle) < 3 or is_refusal(answer):
        return []
    return [q for q in quotes if needle in _norm(q.text) and not is_heading(q.text)]


def reply_citations(reply: dict[str, Any], call: AnalystCall, *, attribute: bool = True) -> list[dict[str, Any]]:
    """The reply's citations as ``[{"passage": n, "quote": text}]`` whatever the format (an unknown sentence
    number is dropped; a quote is passed on as written, for the graph to locate and verify).

    An answer stated word for word in a sentence of the passages is cited by that sentence: when none of the
    model's citations states it but another sentence does, the sentence that states the answer is the citation (the
    first in passage order, i.e. retrieval rank). A small model's answer is often right while the sentence it points
    at is not (measured: issue #14); the answer's own words decide. ``attribute=False``: the model's citations only."""
    if call.format == "quote":
        cites = [c for c in reply.get("citations") or [] if isinstance(c, dict)]
    else:
        cites = []
        for raw in reply.get("evidence") or []:
            try:
                i = int(raw)
            except (TypeError, ValueError):
                continue
            if 1 <= i <= len(call.quotes):
                q = call.quotes[i - 1]
                cite = {"passage": q.passage, "quote": q.text}
                if cite not in cites:
                    cites.append(cite)
    if not attribute or reply.get("not_found") is True:
        return cites
    stated = answer_sentences(str(reply.get("answer") or ""), call.quotes)
    if not stated:
        return cites
    keys = {(q.passage, q.text) for q in stated}
    if any((c.get("passage"), c.get("quote")) in keys for c in cites):
        return cites  # the model's own citations already hold the sentence that states the answer
    return [{"passage": stated[0].passage, "quote": stated[0].text}]


def sentence_similarities(
    query: str, quotes: Sequence[Quote], embed: Callable[[list[str]], Any]
) -> list[tuple[Quote, float]]:
    """Each of ``quotes`` but headings with its cosine to ``query``, in passage order: ``embed`` is an
    :class:`~rolora.retrieval.embedder.Embedder`'s (normalised vectors, so the dot product is the cosine), e.g. the
    domain's retrieval embedder."""
    citable = [q for q in quotes if not is_heading(q.text)]
    if not citable:
        return []
    vectors = embed([query] + [q.text for q in citable])
    return list(zip(citable, (float(x) for x in vectors[1:] @ vectors[0]), strict=True))


def nearest_sentence(question: str, quotes: Sequence[Quote], embed: Callable[[list[str]], Any]) -> Quote | None:
    """The sentence among ``quotes`` (headings aside) whose embedding is nearest the question's
    (:func:`sentence_similarities`); None when there is none. Ties keep passage order. The extractive answer of an
    analyst that declined although it had to cite (``agent.declined_answer``)."""
    scored = sentence_similarities(question, quotes, embed)
    return max(scored, key=lambda qs: qs[1])[0] if scored else None


def evidence_ids(citations: Sequence[dict[str, Any]], quotes: Sequence[Quote]) -> list[int]:
    """Quote-format citations as sentence numbers (the sentence format's training target); a citation that is not
    one of ``quotes`` raises ``ValueError`` (a target the graph would not let the model write)."""
    index = {(q.passage, q.text): i for i, q in enumerate(quotes, start=1)}
    out = []
    for c in citations:
        key = (int(c["passage"]), str(c["quote"]))
        if key not in index:
            raise ValueError(f"citation {key} is not a numbered sentence of its passages")
        out.append(index[key])
    return out
