"""Each role's own metric on its test split, for an adapter and for the base model (gate 4 until the eval suite).

analyst: answer token-F1 (:func:`rolora.evals.metrics.token_f1`) and citation validity; critic: verdict accuracy
and the share of correct drafts it rejects; query writer: gold-chunk recall@5 of the question plus the written
queries fused by reciprocal rank (how the agent graph uses them).
Generation goes through the serving ``Backend`` (so the same code evaluates in-process or on vLLM).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from typing import Any

from rolora.evals.metrics import token_f1
from rolora.roles import ANALYST_SCHEMA, CRITIC_SCHEMA, QUERY_SCHEMA, AnalystCall, analyst_call, reply_citations

from .serving.base import Backend, GenerationRequest

__all__ = ["ROLE_GATED_EXTRA", "ROLE_METRIC", "role_metrics", "role_replies"]

ROLE_METRIC = {"analyst": "answer_f1", "critic": "verdict_accuracy", "query_writer": "gold_recall@5"}
# gated besides ROLE_METRIC: an analyst must also not cite the wrong clause more often than the base model does, and a
# critic must not send back many more correct drafts than the base model (one that calls everything "unsupported"
# beats the base's verdict accuracy on rows that are mostly perturbations)
ROLE_GATED_EXTRA: dict[str, tuple[str, ...]] = {"analyst": ("citation_correctness",), "critic": ("false_rejection",)}
_SCHEMAS = {"analyst": ANALYST_SCHEMA, "critic": CRITIC_SCHEMA, "query_writer": QUERY_SCHEMA}
_MAX_TOKENS = {"analyst": 160, "critic": 60, "query_writer": 60}


def _fused_top(retriever: Any, queries: Sequence[str], k: int, rrf_k: int = 60) -> list[Any]:
    """Top ``k`` passages of the reciprocal-rank fusion of each query's ranking (one entry per chunk)."""
    from rolora.retrieval import rrf_fuse_items

    rankings = [retriever.search(q, k=2 * k) for q in dict.fromkeys(q.strip() for q in queries if q.strip())]
    return [h for h, _ in rrf_fuse_items(rankings, lambda h: h.chunk_id, rrf_k)[:k]]


def _cited_span(cite: Any, passages: Sequence[Sequence[Any]], retriever: Any) -> tuple[str, int, int] | None:
    """The exact ``(doc_id, start, end)`` of a ``{"passage": n, "quote": ...}`` citation, or None when the quote is
    not in passage n."""
    try:
        i = int(cite.get("passage", 0)) - 1
    except (AttributeError, TypeError, ValueError):
        return None
    quote = str(cite.get("quote", ""))
    if not quote or not 0 <= i < len(passages):
        return None
    doc, s, e = passages[i]
    at = retriever.document_text(doc)[s:e].find(quote)
    return None if at < 0 else (doc, s + at, s + at + len(quote))


class _Text:
    def __init__(self, text: str) -> None:
        self.text = text


def _analyst_call(row: dict[str, Any], retriever: Any) -> AnalystCall | None:
    """The call a row was built with, in its format (its passages' sentences, and for the sentence format the
    numbered prompt's narrowed schema); None without a retriever to read the passages."""
    if retriever is None:
        return None
    passages = [_Text(retriever.document_text(d)[s:e]) for d, s, e in row["meta"]["passages"]]
    return analyst_call(row.get("meta", {}).get("format", "quote"), "", passages, min_citations=0)


def _overlaps_gold(span: tuple[str, int, int], evidence: Sequence[Sequence[Any]]) -> bool:
    doc, s, e = span
    return any(d == doc and s < ge and gs < e for d, gs, ge in evidence)


def role_replies(
    role: str, backend: Backend, adapter: str | None, rows: Sequence[dict[str, Any]], retriever: Any = None
) -> list[dict[str, Any] | None]:
    """Each row's reply of ``adapter`` (None = base model), parsed (None where it is not JSON), as
    :func:`role_metrics` scores them: one per row, in order (a critic's ``verdict``, an analyst's answer and
    citations)."""
    calls = [_analyst_call(r, retriever) if role == "analyst" else None for r in rows]
    reqs = [
        GenerationRequest(
            r["prompt"],
            adapter=adapter,
            max_tokens=_MAX_TOKENS[role],
            # the quote format keeps the open schema its gate has always read; numbers need the row's own list
            json_schema=c.schema if c is not None and c.format == "sentence" else _SCHEMAS[role],
        )
        for r, c in zip(rows, calls, strict=True)
    ]
    outs = backend.generate(reqs)
    parsed = [o.json if isinstance(o.json, dict) else None for o in outs]
    # the citations as the graph takes them (rolora.roles.reply_citations): a number names its sentence, and an
    # answer stated word for word in a sentence is cited by it
    parsed = [
        {**p, "citations": reply_citations(p, c)} if p is not None and c is not None else p
        for p, c in zip(parsed, calls, strict=True)
    ]
    return parsed


def role_metrics(
    role: str, backend: Backend, adapter: str | None, rows: Sequence[dict[str, Any]], retriever: Any = None
) -> dict[str, float]:
    """Metrics of ``adapter`` (None = base model) on test rows written by the role's data builder."""
    if not rows:
        return {}
    parsed = role_replies(role, backend, adapter, rows, retriever)
    targets = [json.loads(r["completion"][0]["content"]) for r in rows]
    out: dict[str, float] = {"parse_rate": sum(p is not None for p in parsed) / len(rows)}
    if role == "analyst":
        f1, valid, correct = [], [], []
        for p, t, r in zip(parsed, targets, rows, strict=True):
            gold = [t["answer"]]
            f1.append(token_f1((p or {}).get("answer", ""), gold))
            cites = (p or {}).get("citations", [])
            if cites and retriever is not None:
                spans = [_cited_span(c, r["meta"]["passages"], retriever) for c in cites]
                valid.append(sum(sp is not None for sp in spans) / len(cites))
                evidence = r["meta"].get("evidence") or []
                if evidence and not (p or {}).get("not_found"):  # an answer that cites: is it the right clause?
                    correct.append(any(sp is not None and _overlaps_gold(sp, evidence) for sp in spans))
        out["answer_f1"] = statistics.mean(f1)
        out["citation_validity"] = statistics.mean(valid) if valid else 0.0
        # the cited span overlaps a gold evidence span (of answered rows that have gold evidence)
        out["citation_correctness"] = statistics.mean(correct) if correct else 0.0
    elif role == "critic":
        out["verdict_accuracy"] = statistics.mean(
            (p or {}).get("verdict") == t["verdict"] for p, t in zip(parsed, targets, strict=True)
        )
        # of the drafts that are correct (gold verdict "supported"), the share the critic does not call supported:
        # each of them would send a right answer back for another round
        rejected = [
            (p or {}).get("verdict") != "supported"
            for p, t in zip(parsed, targets, strict=True)
            if t["verdict"] == "supported"
        ]
        if rejected:
            out["false_rejection"] = statistics.mean(rejected)
    elif role == "query_writer":
        # as the graph uses the role: the question itself plus the written queries, fused by reciprocal rank
        hits = []
        for p, r in zip(parsed, rows, strict=True):
            question = r["prompt"][-1]["content"].removeprefix("Question: ").split("\n")[0]
            queries = [q for q in (p or {}).get("queries", []) if isinstance(q, str) and q.strip()][:3]
            gold = r["meta"]["evidence"]
            top = _fused_top(retriever, [question, *queries], 5) if retriever is not None else []
            hits.append(any(h.doc_id == d and h.start < e and s < h.end for h in top for d, s, e in gold))
        out["gold_recall@5"] = statistics.mean(hits)
    return out
