"""The role builders: analyst (RAFT), critic (perturbation negatives), query writer (measured rewrites)."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from typing import Any

from rolora.retrieval.types import Passage
from rolora.roles import (
    NOT_FOUND,
    analyst_call,
    critic_messages,
    evidence_ids,
    is_heading,
    query_writer_messages,
    quote_spans,
    split_sentences,
)

from .base import BuildContext, Example, QARow, Split, register_builder
from .generated import generated_questions

__all__ = [
    "AnalystBuilder",
    "CriticBuilder",
    "QueryWriterBuilder",
    "clause_questions",
    "evidence_quotes",
    "gold_chunks",
]

# clause-type questions from headings and clause text (category -> heading/text keywords)
CLAUSE_KEYWORDS: dict[str, tuple[str, ...]] = {
    "Termination": ("termination", "terminate"),
    "Governing Law": ("governing law", "governed by"),
    "Indemnification": ("indemnif",),
    "Cap On Liability": ("limitation of liability", "liability cap", "aggregate liability"),
    "Anti-Assignment": ("assignment", "assign"),
    "Renewal Term": ("renewal", "renew"),
    "Payment Terms": ("payment", "fees", "invoice"),
    "Confidentiality": ("confidential",),
    "Warranty Duration": ("warrant",),
    "Insurance": ("insurance",),
    "Audit Rights": ("audit",),
}


def gold_chunks(retriever: Any, evidence: tuple[tuple[str, int, int], ...]) -> list[Passage]:
    """Chunks of the evidence documents that overlap an evidence span."""
    out: list[Passage] = []
    for doc_id, start, end in evidence:
        for c in retriever.document_chunks(doc_id):
            if c.start < end and start < c.end and c.chunk_id not in {o.chunk_id for o in out}:
                out.append(c)
    return out


def evidence_quotes(
    passages: list[Passage], evidence: tuple[tuple[str, int, int], ...], per_passage: int = 1
) -> list[dict[str, Any]]:
    """The analyst's training citations: in each passage, the quote candidates (:func:`rolora.roles.quote_spans` of
    all ``passages``, headings aside: the values the graph lets the analyst write) that overlap a gold evidence span,
    most overlap first, ``per_passage`` of them; ``[{"passage": n, "quote": text}]`` in passage order."""
    out: list[dict[str, Any]] = []
    by_passage: dict[int, list[tuple[int, str]]] = {}
    for q in quote_spans(passages):
        if is_heading(q.text):
            continue  # never evidence: the graph does not let the analyst cite a heading
        p = passages[q.passage - 1]
        lo, hi = p.start + q.start, p.start + q.end
        overlap = sum(max(0, min(hi, e) - max(lo, s)) for d, s, e in evidence if d == p.doc_id)
        if overlap > 0:
            by_passage.setdefault(q.passage, []).append((overlap, q.text))
    for n in sorted(by_passage):
        best = sorted(by_passage[n], key=lambda t: -t[0])[:per_passage]  # stable: earlier sentence on a tie
        out += [{"passage": n, "quote": text} for _, text in best]
    return out


def _first_sentence(text: str, min_chars: int = 30) -> tuple[int, str] | None:
    """``(offset, sentence)`` of the first sentence of a clause after its heading line, at least ``min_chars``."""
    head = text.find("\n")
    body = head + 1 if 0 <= head < 120 else 0
    first = next((s for s in split_sentences(text) if s.start >= body), None)
    return (first.start, first.text) if first and len(first.text) >= min_chars else None


def clause_questions(retriever: Any, doc_ids: list[str], rng: random.Random) -> list[QARow]:
    """Clause-type questions made from headings and clause text: the clause is the gold evidence."""
    rows: list[QARow] = []
    for doc_id in doc_ids:
        chunks = retriever.document_chunks(doc_id)
        if not chunks:
            continue
        title = retriever.document_text(doc_id).strip().split("\n", 1)[0][:80].strip()
        for category, keys in CLAUSE_KEYWORDS.items():
            hits = [c for c in chunks if any(k in c.heading_path.lower() for k in keys)]
            if not hits:
                continue
            c = hits[0]
            first = _first_sentence(c.text)
            if first is None:
                continue
            pos, sentence = first
            start = c.start + pos
            rows.append(
                QARow(
                    f"clause-{doc_id}-{category}",
                    doc_id,
                    category,
                    f"In the {title}, what does the contract provide on {category.lower()}?",
                    (sentence,),
                    ((doc_id, start, start + len(sentence)),),
                    True,
                )
            )
    rng.shuffle(rows)
    return rows


def _distractors(retriever: Any, question: str, exclude: set[str], n: int) -> list[Passage]:
    hits = retriever.search(question, k=n + len(exclude) + 4)
    return [h for h in hits if h.chunk_id not in exclude][:n]


def _limit(splits: dict[Split, list[Example]], limit: int | None) -> dict[Split, list[Example]]:
    if limit is None:
        return splits
    return {k: v[:limit] for k, v in splits.items()}


def _analyst_record(q: QARow, ctx: BuildContext, rng: random.Random) -> dict[str, Any] | None:
    r = ctx.retriever
    gold = gold_chunks(r, q.evidence) if q.answerable else []
    if q.answerable and not gold:
        return None
    with_oracle = bool(gold) and rng.random() < ctx.oracle_rate
    distractors = _distractors(r, q.question, {g.chunk_id for g in gold}, ctx.distractors)
    passages: list[Passage] = (gold[:2] if with_oracle else []) + distractors
    if with_oracle:
        rng.shuffle(passages)
        citations = evidence_quotes(passages, q.evidence)  # distractors never overlap the evidence
        if not citations:  # no quotable sentence overlaps the evidence: no target the graph would let it write
            return None
        answer = (q.answers[0] if q.answers else citations[0]["quote"] if citations else "")[:300]
        target = {"citations": citations, "answer": answer, "not_found": False}  # ANALYST_SCHEMA's order
        source = "clause" if q.id.startswith("clause-") else "generated" if q.id.startswith("gen-") else "qa"
    else:
        target = {"citations": [], "answer": NOT_FOUND, "not_found": True}
        source = "no-oracle" if q.answerable else "unanswerable"
    return {"q": q, "passages": passages, "target": target, "source": source, "gold": gold}


@register_builder("analyst")
class AnalystBuilder:
    """RAFT-style: a question, its gold chunk(s) among distractors (or only distractors), a cited JSON answer."""

    role = "analyst"

    def records(self, ctx: BuildContext, split_of: Callable[[str], Split]) -> dict[Split, list[dict[str, Any]]]:
        rng = random.Random(ctx.seed)
        docs = sorted({q.doc_id for q in ctx.qa} | set(ctx.extra.get("clause_docs", [])))
        rows = list(ctx.qa) + clause_questions(ctx.retriever, docs, rng)
        if ctx.generated_per_document:
            rows += generated_questions(ctx.retriever, docs, rng, ctx.generated_per_document)
        out: dict[Split, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
        if ctx.limit is not None:  # a seeded sample across all contracts, and no retrieval for rows never used
            random.Random(ctx.seed + 7).shuffle(rows)
        for q in rows:
            split = split_of(q.doc_id)
            if ctx.limit is not None and len(out[split]) >= ctx.limit:
                if all(len(v) >= ctx.limit for v in out.values()):
                    break
                continue
            rec = _analyst_record(q, ctx, rng)
            if rec is None:
                continue
            if split == "train" and rec["target"]["not_found"] and ctx.max_refusal_share is not None:
                refusals = sum(1 for r in out["train"] if r["target"]["not_found"])
                if refusals + 1 > ctx.max_refusal_share * (len(out["train"]) + 1):
                    continue  # keeps the training mix at most max_refusal_share refusals
            out[split].append(rec)
        return out

    def build(self, ctx: BuildContext, split_of: Callable[[str], Split]) -> dict[Split, list[Example]]:
        recs = self.records(ctx, split_of)
        out: dict[Split, list[Example]] = {}
        for split, items in recs.items():
            out[split] = [
                Example(
                    *_analyst_prompt(r, ctx.analyst_format),
                    r["q"].doc_id,
                    "analyst",
                    r["source"],
                    {
                        "qa_id": r["q"].id,
                        "category": r["q"].category,
                        "answers": list(r["q"].answers),
                        "evidence": [list(e) for e in r["q"].evidence],
                        "passages": [[p.doc_id, p.start, p.end] for p in r["passages"]],
                        "format": ctx.analyst_format,
                    },
                )
                for r in items
            ]
        return _limit(out, ctx.limit)


def _analyst_prompt(r: dict[str, Any], fmt: str) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(prompt, completion) of an analyst record in the output format ``fmt``: the graph's own request
    (:func:`rolora.roles.analyst_call`), and the target citations as that format writes them."""
    call = analyst_call(fmt, r["q"].question, r["passages"])
    target = r["target"]
    if fmt == "sentence":  # the same citations, named by number (evidence first, as in the quote format)
        ids = evidence_ids(target["citations"], call.quotes)
        target = {"evidence": ids, "answer": target["answer"], "not_found": target["not_found"]}
    return call.messages, [{"role": "assistant", "content": json.dumps(target, ensure_ascii=False)}]


_NUMBER = re.compile(r"\d[\d,.]*")
_WORD_NUMBERS = ["thirty", "sixty", "ninety", "ten", "five", "twelve", "forty-five", "fifteen"]


def _change_numbers(text: str, rng: random.Random) -> str | None:
    if _NUMBER.search(text):
        return _NUMBER.sub(lambda m: str(int(re.sub(r"\D", "", m.group()) or 0) * 2 + rng.randint(1, 9)), text, count=1)
    for w in _WORD_NUMBERS:
        if re.search(rf"\b{w}\b", text, re.I):
            other = rng.choice([x for x in _WORD_NUMBERS if x != w])
            return re.sub(rf"\b{w}\b", other, text, count=1, flags=re.I)
    return None


@register_builder("critic")
class CriticBuilder:
    """(question, clauses, draft) -> verdict; negatives made by perturbing good answers, so labels are known."""

    role = "critic"

    def build(self, ctx: BuildContext, split_of: Callable[[str], Split]) -> dict[Split, list[Example]]:
        rng = random.Random(ctx.seed + 1)
        recs = AnalystBuilder().records(ctx, split_of)
        out: dict[Split, list[Example]] = {}
        for split, items in recs.items():
            good = [r for r in items if not r["target"]["not_found"] and r["target"]["citations"]]
            examples: list[Example] = []
            for r in good:
                variants: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
                t = r["target"]
                variants.append(("supported", t, {"verdict": "supported", "reasons": []}))
                changed = _change_numbers(t["answer"], rng)
                if changed and changed != t["answer"]:
                    bad = {**t, "answer": changed}
                    reason = "the amount, date or duration in the answer differs from the cited clause"
                    variants.append(("perturb:number", bad, {"verdict": "unsupported", "reasons": [reason]}))
                cited = {c["passage"] for c in t["citations"]}
                others = [i for i in range(1, len(r["passages"]) + 1) if i not in cited]
                if others:
                    j = rng.choice(others)
                    sentences = quote_spans([r["passages"][j - 1]])  # a quote the graph would let it write
                    quote = sentences[0].text if sentences else r["passages"][j - 1].text[:200].rsplit(" ", 1)[0]
                    bad = {**t, "citations": [{"passage": j, "quote": quote}]}
                    reason = f"passage {j} does not support the answer"
                    variants.append(("perturb:citation", bad, {"verdict": "unsupported", "reasons": [reason]}))
                donor = rng.choice(good)
                if donor["q"].doc_id != r["q"].doc_id and donor["target"]["answer"] != t["answer"]:
                    bad = {**donor["target"], "citations": t["citations"]}
                    reason = "the answer is not stated in the clauses"
                    variants.append(("perturb:outside", bad, {"verdict": "unsupported", "reasons": [reason]}))
                    extra = donor["target"]["answer"][:150]
                    part = {**t, "answer": f"{t['answer']} Also, {extra}"}
                    reason = "part of the answer is not in the clauses"
                    variants.append(("perturb:partial", part, {"verdict": "partial", "reasons": [reason]}))
                for source, draft, verdict in variants:
                    examples.append(
                        Example(
                            critic_messages(r["q"].question, r["passages"], draft),
                            [{"role": "assistant", "content": json.dumps(verdict, ensure_ascii=False)}],
                            r["q"].doc_id,
                            "critic",
                            source,
                            {
                                "qa_id": r["q"].id,
                                "verdict": verdict["verdict"],
                                "draft": draft,
                                "passages": [[p.doc_id, p.start, p.end] for p in r["passages"]],
                            },
                        )
                    )
            rng.shuffle(examples)
            out[split] = examples
        return _limit(out, ctx.limit)


_PREAMBLE = re.compile(r"^Consider the .*?;\s*", re.S)


def query_candidates(q: QARow, gold: list[Passage]) -> list[str]:
    """Rewrites to try: the question, without CUAD's preamble, category + names, the gold heading."""
    cands = [q.question]
    core = _PREAMBLE.sub("", q.question).strip()
    if core and core != q.question:
        cands.append(core)
    names = re.findall(
        r"\b(?:[A-Z][\w&.,-]*\s?){1,4}(?:Inc|LLC|Ltd|Limited|Corporation|Corp|Co|plc|L\.P)\b\.?", q.question
    )
    if q.category:
        cands.append(" ".join([q.category, *names[:2]]).strip())
        cands.append(f"{q.category} clause")
    for g in gold[:1]:
        head = g.heading_path.split(" > ")[-1] if g.heading_path else ""
        if head:
            cands.append(" ".join([head, *names[:1]]).strip())
    return list(dict.fromkeys(c for c in cands if c))


@register_builder("query_writer")
class QueryWriterBuilder:
    """Question -> search queries. The graph searches with the question itself plus the written queries, fused by
    reciprocal rank, so each target is measured that way with the real retriever: up to two rewrites, added greedily
    while each one ranks the gold chunk strictly higher in the fusion; none helps -> the question alone (no harm)."""

    role = "query_writer"
    k = 20

    def build(self, ctx: BuildContext, split_of: Callable[[str], Split]) -> dict[Split, list[Example]]:
        from rolora.retrieval import rrf_fuse_items

        out: dict[Split, list[Example]] = {"train": [], "validation": [], "test": []}
        counts = dict.fromkeys(out, 0)
        for q in ctx.qa:
            split = split_of(q.doc_id)
            if not q.answerable or (ctx.limit is not None and counts[split] >= ctx.limit):
                continue
            gold = gold_chunks(ctx.retriever, q.evidence)
            if not gold:
                continue
            gold_ids = {g.chunk_id for g in gold}
            hits = {cand: ctx.retriever.search(cand, k=self.k) for cand in query_candidates(q, gold)}

            def rank(queries: list[str], hits: dict[str, list[Passage]] = hits, gold_ids: set[str] = gold_ids) -> int:
                fused = rrf_fuse_items([hits[c] for c in dict.fromkeys(queries)], lambda h: h.chunk_id)
                return next((i for i, (h, _) in enumerate(fused, 1) if h.chunk_id in gold_ids), self.k + 1)

            ranks = {cand: rank([cand]) for cand in hits}
            base_rank = ranks[q.question]
            chosen: list[str] = []
            best_rank = base_rank
            for _ in range(2):
                options = [c for c in hits if c != q.question and c not in chosen]
                if not options:
                    break
                fused = {c: rank([q.question, *chosen, c]) for c in options}
                pick = min(options, key=lambda c: (fused[c], len(c)))
                fused_rank = fused[pick]
                if fused_rank >= best_rank:
                    break
                chosen.append(pick)
                best_rank = fused_rank
            out[split].append(
                Example(
                    query_writer_messages(q.question),
                    [
                        {
                            "role": "assistant",
                            "content": json.dumps({"queries": chosen or [q.question]}, ensure_ascii=False),
                        }
                    ],
                    q.doc_id,
                    "query_writer",
                    "measured",
                    {
                        "qa_id": q.id,
                        "ranks": ranks,  # each candidate alone
                        "base_rank": base_rank,  # the question alone
                        "best_rank": best_rank,  # the question fused with the chosen rewrites
                        "evidence": [list(e) for e in q.evidence],
                    },
                )
            )
            counts[split] += 1
        return out
