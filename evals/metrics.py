"""Deterministic RAG metrics per question (retrieval, answer, grounding, cost) and the critic judge kept apart.

A span is ``(doc_id, start, end)`` with ``end`` exclusive. Every metric has one value per question, or ``None`` where
it does not apply (retrieval and answer metrics need gold evidence or answers; refusal accuracy needs an
unanswerable question), so configurations can be compared question by question (paired bootstrap).

- retrieval, chunk level (pytrec_eval): ``recall@k``, ``precision@k``, ``ndcg@k``, ``mrr``; a retrieved chunk is
  relevant when it overlaps a gold evidence span, and recall counts every such chunk of the index.
- retrieval, character level (as LegalBench-RAG measures it): ``span_recall@k`` = share of gold evidence characters
  covered by the top-k passages, ``span_precision@k`` = share of their characters that are gold.
- answer: ``exact_match`` (SQuAD-normalised), ``token_f1``, ``rouge_l`` (rouge-score, F) against the best gold
  answer (exact match and token F1 read a date however it is written as the same date: "July 11, 2006" is CUAD's
  "7/11/06"), a refusal counting as the empty answer; ``refusal_accuracy`` on unanswerable questions, and
  ``false_refusal_rate`` on answerable ones; ``verdict_accuracy`` on yes/no questions ("Yes", "No" or "Not
  mentioned" against the verdict the annotation implies, :mod:`rolora.roles.verdicts`; an answer without a verdict
  is read as one: a refusal is "Not mentioned").
- grounding: ``citation_precision`` (final citations overlapping gold evidence), ``citation_validity`` (the draft's
  citations that lie inside a retrieved passage whose text holds the quote), ``all_verified`` (answers with at least
  one citation, all of them valid).
- judge: the critic's verdict on the final answer, ``unsupported_rate`` and ``supported_rate`` (a model's opinion,
  reported apart from the deterministic metrics).
- cost: ``latency_s``, ``tokens_per_step``, ``tokens_total``, ``llm_steps``, ``iterations``.

>>> span_recall([("d", 0, 10)], [("d", 5, 20)])
0.5
"""

from __future__ import annotations

import re
import string
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from rolora.roles import locate_quote
from rolora.roles.answer_types import iso_dates
from rolora.roles.verdicts import answered_verdict, gold_verdict, is_yes_no

if TYPE_CHECKING:
    from rolora.agents.types import Answer

    from .datasets import EvalQuestion

__all__ = [
    "GROUPS",
    "MetricInfo",
    "Span",
    "answer_scores",
    "chunk_key",
    "chunk_scores",
    "citation_checks",
    "exact_match",
    "merge_spans",
    "metric_catalogue",
    "rouge_l",
    "score_questions",
    "span_precision",
    "span_recall",
    "token_f1",
]

Span = tuple[str, int, int]
Group = Literal["retrieval", "answer", "grounding", "judge", "cost"]
GROUPS: tuple[Group, ...] = ("retrieval", "answer", "grounding", "judge", "cost")


# -- character spans ------------------------------------------------------------------------------------------------
def merge_spans(spans: Iterable[Span]) -> dict[str, list[tuple[int, int]]]:
    """Union of spans per document, as sorted, disjoint intervals."""
    by_doc: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for doc, s, e in spans:
        if e > s:
            by_doc[doc].append((s, e))
    merged: dict[str, list[tuple[int, int]]] = {}
    for doc, ivs in by_doc.items():
        ivs.sort()
        out = [ivs[0]]
        for s, e in ivs[1:]:
            if s <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], e))
            else:
                out.append((s, e))
        merged[doc] = out
    return merged


def _overlap(a: dict[str, list[tuple[int, int]]], b: dict[str, list[tuple[int, int]]]) -> int:
    total = 0
    for doc, ivs in a.items():
        other = b.get(doc)
        if not other:
            continue
        i = j = 0
        while i < len(ivs) and j < len(other):
            lo, hi = max(ivs[i][0], other[j][0]), min(ivs[i][1], other[j][1])
            if hi > lo:
                total += hi - lo
            if ivs[i][1] < other[j][1]:
                i += 1
            else:
                j += 1
    return total


def _length(m: dict[str, list[tuple[int, int]]]) -> int:
    return sum(e - s for ivs in m.values() for s, e in ivs)


def span_recall(gold: Sequence[Span], retrieved: Sequence[Span]) -> float | None:
    """Share of gold evidence characters covered by the retrieved spans; ``None`` when there is no gold."""
    g = merge_spans(gold)
    total = _length(g)
    if total == 0:
        return None
    return _overlap(g, merge_spans(retrieved)) / total


def span_precision(gold: Sequence[Span], retrieved: Sequence[Span]) -> float | None:
    """Share of retrieved characters that are gold evidence; ``None`` when nothing was retrieved."""
    r = merge_spans(retrieved)
    total = _length(r)
    if total == 0:
        return None
    return _overlap(merge_spans(gold), r) / total


def _overlaps(span: Span, gold: Sequence[Span]) -> bool:
    return any(span[0] == d and span[1] < e and s < span[2] for d, s, e in gold)


# -- the catalogue ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricInfo:
    name: str  # "group.metric", e.g. "retrieval.span_recall@5"
    group: Group
    higher_is_better: bool
    applies_to: str  # which questions have a value
    description: str

    @property
    def short(self) -> str:
        return self.name.split(".", 1)[1]


def metric_catalogue(ks: Sequence[int]) -> dict[str, MetricInfo]:
    """Every metric this module computes for the cut-offs ``ks``, by name, in report order."""
    out: list[MetricInfo] = []

    def add(name: str, group: Group, hib: bool, applies: str, desc: str) -> None:
        out.append(MetricInfo(f"{group}.{name}", group, hib, applies, desc))

    for k in ks:
        add(f"span_recall@{k}", "retrieval", True, "answerable", f"share of gold characters in the top {k} passages")
    for k in ks:
        add(f"span_precision@{k}", "retrieval", True, "answerable", f"share of top-{k} characters that are gold")
    for k in ks:
        add(f"recall@{k}", "retrieval", True, "answerable", f"gold-overlapping chunks in the top {k} / all of them")
    for k in ks:
        add(f"precision@{k}", "retrieval", True, "answerable", f"gold-overlapping chunks in the top {k} / {k}")
    for k in ks:
        add(f"ndcg@{k}", "retrieval", True, "answerable", f"nDCG of the top {k} chunks (binary relevance)")
    add("mrr", "retrieval", True, "answerable", "reciprocal rank of the first gold-overlapping chunk")
    add("exact_match", "answer", True, "answerable with gold answers", "normalised answer equals a gold answer")
    add("token_f1", "answer", True, "answerable with gold answers", "token F1 against the best gold answer")
    add("rouge_l", "answer", True, "answerable with gold answers", "ROUGE-L F against the best gold answer")
    add("refusal_accuracy", "answer", True, "unanswerable", "share of unanswerable questions refused (not found)")
    add("false_refusal_rate", "answer", False, "answerable", "share of answerable questions refused")
    add("verdict_accuracy", "answer", True, "yes/no questions", "Yes / No / Not mentioned equals the gold verdict")
    add("citation_precision", "grounding", True, "answerable, cited", "final citations overlapping gold evidence")
    add("citation_validity", "grounding", True, "cited", "draft citations inside a retrieved passage with the quote")
    add("all_verified", "grounding", True, "answered", "answers with >= 1 citation, every one valid")
    add("unsupported_rate", "judge", False, "answered, judged", "critic judge: verdict unsupported")
    add("supported_rate", "judge", True, "answered, judged", "critic judge: verdict supported")
    add("latency_s", "cost", False, "all", "wall-clock seconds per question")
    add("tokens_per_step", "cost", False, "all", "prompt + completion tokens per LLM step")
    add("tokens_total", "cost", False, "all", "prompt + completion tokens per question")
    add("llm_steps", "cost", False, "all", "LLM calls per question")
    add("iterations", "cost", False, "all", "analyse/critique rounds per question")
    return {m.name: m for m in out}


# -- retrieval -------------------------------------------------------------------------------------------------------
def chunk_key(doc_id: str, start: int, end: int, chunk_id: str = "") -> str:
    """The id of a chunk in ranking metrics: its ``chunk_id``, else ``doc_id[start:end]``."""
    return chunk_id or f"{doc_id}[{start}:{end}]"


def chunk_scores(
    gold_chunks: Sequence[set[str]], ranked: Sequence[Sequence[str]], ks: Sequence[int]
) -> list[dict[str, float | None]]:
    """Chunk-level recall@k, precision@k, nDCG@k and MRR per question, computed with pytrec_eval (trec_eval's
    definitions: precision@k divides by k, nDCG@k uses log2 discounts).

    ``gold_chunks[i]``: every chunk of the index relevant to question i (empty: no gold, every value ``None``);
    ``ranked[i]``: the retrieved chunk ids in rank order (duplicates count once, at their first rank).
    """
    names = [f"{m}@{k}" for m in ("recall", "precision", "ndcg") for k in ks] + ["mrr"]
    out: list[dict[str, float | None]] = [dict.fromkeys(names) for _ in gold_chunks]
    qrels: dict[str, dict[str, int]] = {}
    run: dict[str, dict[str, float]] = {}
    for i, (gold, ids) in enumerate(zip(gold_chunks, ranked, strict=True)):
        if not gold:
            continue
        unique = list(dict.fromkeys(ids))
        if not unique:  # nothing retrieved: every metric is 0 (trec_eval skips an empty ranking)
            out[i] = dict.fromkeys(names, 0.0)
            continue
        qrels[str(i)] = dict.fromkeys(gold, 1)
        run[str(i)] = {cid: float(len(unique) - r) for r, cid in enumerate(unique)}
    if run:
        import pytrec_eval

        cut = ",".join(str(k) for k in ks)
        measures = {f"recall.{cut}", f"P.{cut}", f"ndcg_cut.{cut}", "recip_rank"}
        scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
        trec = {"recall": "recall", "precision": "P", "ndcg": "ndcg_cut"}  # our name -> trec_eval's
        for qid, row in scores.items():
            for m, t in trec.items():
                for k in ks:
                    out[int(qid)][f"{m}@{k}"] = float(row[f"{t}_{k}"])
            out[int(qid)]["mrr"] = float(row["recip_rank"])
    return out


# -- answers ---------------------------------------------------------------------------------------------------------
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def _normalise_answer(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", iso_dates(text).lower().translate(_PUNCT)).split())


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the SQuAD-normalised prediction equals a normalised gold answer."""
    p = _normalise_answer(prediction)
    return float(any(p == _normalise_answer(g) for g in golds))


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+", iso_dates(text).lower())


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """SQuAD-style token F1 against the best-matching gold answer (1.0 when both are empty).

    Dates count as the same tokens however they are written (:func:`rolora.roles.answer_types.iso_dates`):

    >>> round(token_f1("thirty (30) days", ["within thirty (30) days"]), 3)
    0.857
    >>> token_f1("July 11, 2006", ["7/11/06"])
    1.0
    """
    pred = _tokens(prediction)
    best = 0.0
    for gold in golds or [""]:
        g = _tokens(gold)
        if not pred and not g:
            return 1.0
        common = sum((Counter(pred) & Counter(g)).values())
        if common == 0:
            continue
        p, r = common / len(pred), common / len(g)
        best = max(best, 2 * p * r / (p + r))
    return best


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, golds: Sequence[str]) -> float:
    """ROUGE-L F-measure against the best gold answer (0 for an empty prediction)."""
    if not golds:
        return 0.0
    scorer = _rouge()
    return max(float(scorer.score(g, prediction)["rougeL"].fmeasure) for g in golds)


def answer_scores(q: EvalQuestion, answer: Answer) -> dict[str, float | None]:
    """Exact match, token F1, ROUGE-L, refusal accuracy and false refusals of one answer."""
    pred = "" if answer.not_found else answer.answer
    has_gold = q.answerable and any(a.strip() for a in q.answers)
    golds = [a for a in q.answers if a.strip()]
    return {
        "exact_match": exact_match(pred, golds) if has_gold else None,
        "token_f1": token_f1(pred, golds) if has_gold else None,
        "rouge_l": rouge_l(pred, golds) if has_gold else None,
        "refusal_accuracy": None if q.answerable else float(answer.not_found),
        "false_refusal_rate": float(answer.not_found) if q.answerable else None,
        "verdict_accuracy": (
            float(
                answered_verdict(answer.answer, answer.not_found, answer.yes_no)
                == gold_verdict(q.answers, q.answerable)
            )
            if is_yes_no(q.question)
            else None
        ),
    }


# -- grounding -------------------------------------------------------------------------------------------------------


def _valid_in_passages(doc: str, start: int, end: int, quote: str, answer: Answer) -> bool:
    """The span lies inside a retrieved passage and the passage's text there holds the quote."""
    if end <= start or start < 0:
        return False
    for p in answer.passages:
        if p.doc_id == doc and p.start <= start and end <= p.end:
            text = p.text[start - p.start : end - p.start]
            return bool(quote.strip()) and locate_quote(text, quote) is not None
    return False


def citation_checks(answer: Answer) -> list[tuple[Span, bool]]:
    """Every citation of the final draft with its validity.

    The draft's citations (verified or not) are read from the analyst's last trace step (``detail["citations"]``:
    dicts with doc_id/start/end/quote, re-checked here against the passages); without such a step, the answer's
    final citations are re-checked.
    """
    raw: list[Any] | None = None
    for step in reversed(answer.trace):
        cites = step.detail.get("citations") if step.role == "analyst" else None
        if isinstance(cites, list):
            raw = cites
            break
    out: list[tuple[Span, bool]] = []
    if raw is None:
        for c in answer.citations:
            out.append(((c.doc_id, c.start, c.end), _valid_in_passages(c.doc_id, c.start, c.end, c.quote, answer)))
        return out
    for item in raw:
        if isinstance(item, dict) and {"doc_id", "start", "end"} <= item.keys():
            span = (str(item["doc_id"]), int(item["start"]), int(item["end"]))
            quote = str(item.get("quote", ""))
            ok = _valid_in_passages(*span, quote, answer) if quote else bool(item.get("verified"))
            out.append((span, ok))
    return out


def grounding_scores(q: EvalQuestion, answer: Answer) -> dict[str, float | None]:
    checks = citation_checks(answer)
    final = [(c.doc_id, c.start, c.end) for c in answer.citations]
    gold = q.gold_spans
    answered = not answer.not_found
    return {
        "citation_precision": (sum(_overlaps(s, gold) for s in final) / len(final)) if final and gold else None,
        "citation_validity": (sum(ok for _, ok in checks) / len(checks)) if checks else None,
        "all_verified": float(bool(checks) and all(ok for _, ok in checks)) if answered else None,
    }


# -- cost ------------------------------------------------------------------------------------------------------------
def cost_scores(answer: Answer, wall_s: float | None = None) -> dict[str, float | None]:
    llm = [s for s in answer.trace if s.role]
    tokens = [s.tokens_in + s.tokens_out for s in llm]
    return {
        "latency_s": wall_s if wall_s is not None else answer.latency_s,
        "tokens_per_step": sum(tokens) / len(tokens) if tokens else None,
        "tokens_total": float(sum(tokens)),
        "llm_steps": float(len(llm)),
        "iterations": float(answer.iterations),
    }


def judge_scores(answer: Answer, verdict: str | None) -> dict[str, float | None]:
    if answer.not_found or verdict not in ("supported", "unsupported", "partial"):
        return {"unsupported_rate": None, "supported_rate": None}
    return {"unsupported_rate": float(verdict == "unsupported"), "supported_rate": float(verdict == "supported")}


# -- everything ------------------------------------------------------------------------------------------------------
def score_questions(
    questions: Sequence[EvalQuestion],
    answers: Sequence[Answer],
    gold_chunks: Sequence[set[str]],
    ks: Sequence[int],
    *,
    wall_s: Sequence[float | None] | None = None,
    judge: Sequence[str | None] | None = None,
) -> list[dict[str, float | None]]:
    """Every metric of the catalogue for each (question, answer), keyed ``group.metric``."""
    n = len(questions)
    if not (len(answers) == len(gold_chunks) == n):
        raise ValueError("questions, answers and gold_chunks must have the same length")
    ranked = [[chunk_key(p.doc_id, p.start, p.end, p.chunk_id) for p in a.passages] for a in answers]
    relevant = [g if q.answerable else set() for q, g in zip(questions, gold_chunks, strict=True)]
    chunk = chunk_scores(relevant, ranked, ks)
    rows: list[dict[str, float | None]] = []
    for i, (q, a) in enumerate(zip(questions, answers, strict=True)):
        row: dict[str, float | None] = {}
        spans = [(p.doc_id, p.start, p.end) for p in a.passages]
        gold = q.gold_spans
        for k in ks:
            row[f"retrieval.span_recall@{k}"] = span_recall(gold, spans[:k]) if q.answerable else None
        for k in ks:
            prec = span_precision(gold, spans[:k]) if q.answerable else None
            row[f"retrieval.span_precision@{k}"] = 0.0 if q.answerable and prec is None else prec
        row.update({f"retrieval.{name}": v for name, v in chunk[i].items()})
        row.update({f"answer.{name}": v for name, v in answer_scores(q, a).items()})
        row.update({f"grounding.{name}": v for name, v in grounding_scores(q, a).items()})
        verdict = judge[i] if judge is not None else None
        row.update({f"judge.{name}": v for name, v in judge_scores(a, verdict).items()})
        row.update({f"cost.{name}": v for name, v in cost_scores(a, wall_s[i] if wall_s else None).items()})
        rows.append(row)
    return rows
