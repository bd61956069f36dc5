"""The analyst call of ``rolora analyze``: per category, candidate passages and quote choices, one batched
``agenerate`` for all categories, and each reply turned into a :class:`ClauseFinding` with a verified span.

The analyst gets the request it is trained on, in the output format it was trained on (:func:`rolora.roles.
analyst_call`: copy a quote, or name a sentence number), narrowed to one citation among the passages' sentences most
similar to the category (the units the graph allows too). A quote that cannot be located is dropped, never invented.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rolora.errors import RoloraRuntimeError, UserError
from rolora.roles import AnalystCall, analyst_call, is_refusal, quote_candidates, reply_citations, trained_format

from ..citations import citation_from_quote, verify_citation
from ..types import Citation, PassageRef
from .categories import ClauseCategory, select_categories
from .document import ContractDocument, candidates, open_document
from .results import ClauseFinding, ContractAnalysis
from .risk import QUOTE_END, RISK_RULES

if TYPE_CHECKING:
    from rolora.adapters.serving.base import Backend, GenerationResult
    from rolora.config import Config
    from rolora.retrieval import LoadedDocument, Retriever

__all__ = ["aanalyze_contract", "analyze_contract"]

log = logging.getLogger("rolora.agents")


def _ranked_sentences(
    doc: ContractDocument, cats: Sequence[ClauseCategory], chosen: Sequence[Sequence[PassageRef]]
) -> list[list[str]]:
    """Per category, the sentences of its passages, most similar to the category first (one embedding call for
    all). Every one is an exact substring of a passage."""
    import numpy as np

    per_cat = [quote_candidates(passages) for passages in chosen]
    unique = sorted({s for sentences in per_cat for s in sentences})
    if not unique:
        return [[] for _ in cats]
    vectors = doc.embed(unique + [f"{c.question} {c.query}" for c in cats])
    row = {s: i for i, s in enumerate(unique)}
    out: list[list[str]] = []
    for j, sentences in enumerate(per_cat):
        if not sentences:
            out.append([])
            continue
        scores = vectors[[row[s] for s in sentences]] @ vectors[len(unique) + j]
        best = np.argsort(-scores, kind="stable")
        out.append([sentences[int(i)] for i in best])
    return out


def _analysis_call(fmt: str, cat: ClauseCategory, passages: Sequence[PassageRef], quotes: Sequence[str]) -> AnalystCall:
    """The analyst's request for one category in output format ``fmt``: at most one citation, among ``quotes``."""
    return analyst_call(fmt, cat.question, passages, allowed=quotes, max_citations=1, answer_chars=160)


def _parse(result: GenerationResult) -> dict[str, Any] | None:
    from ..nodes.llm import parse_json

    return result.json if isinstance(result.json, dict) else parse_json(result.text)


def _verified(passages: Sequence[PassageRef], number: int, quote: str, text: str) -> Citation:
    """The quote as a span checked against the source; a verified citation's quote is the exact source text."""
    c = verify_citation(citation_from_quote(passages, number, quote), passages, lambda _: text)
    return c.model_copy(update={"quote": text[c.start : c.end]}) if c.verified else c


def _analyst_citations(parsed: dict[str, Any], passages: Sequence[PassageRef], text: str) -> tuple[list[Citation], int]:
    """(verified citations, number dropped) of the analyst's reply."""
    verified: list[Citation] = []
    dropped = 0
    for raw in parsed.get("citations") or []:
        if not isinstance(raw, dict):
            continue
        try:
            number = int(raw.get("passage") or 0)
        except (TypeError, ValueError):
            number = 0
        c = _verified(passages, number, str(raw.get("quote") or ""), text)
        if c.verified:
            verified.append(c)
        else:
            dropped += 1
    return verified, dropped


def _finding(
    cat: ClauseCategory,
    doc: ContractDocument,
    passages: list[PassageRef],
    result: GenerationResult | None,
    sentences: Sequence[str] = (),
    call: AnalystCall | None = None,
) -> ClauseFinding:
    """The analyst's reply as a finding; when it found nothing usable, the best sentence matching the category's
    keyword cue (``sentences`` ranked best first; empty = no fallback)."""
    base = {"category": cat.name, "cuad": cat.cuad, "doc_id": doc.doc_id, "passages": [p.citation for p in passages]}
    answer, why = "", "no passages to search"
    verified: list[Citation] = []
    dropped = 0
    parsed = _parse(result) if result is not None else None
    if parsed is not None and call is not None:  # a sentence number names its sentence: one reading for both formats
        parsed = {**parsed, "citations": reply_citations(parsed, call)}
    if result is not None and parsed is None:
        why = "the analyst's reply was " + ("cut off at max_tokens" if result.finish_reason == "length" else "not JSON")
    elif parsed is not None:
        answer = str(parsed.get("answer") or "").strip()
        refused = parsed.get("not_found") is True or is_refusal(answer)
        if refused:
            why = "the analyst found no such clause"
        else:
            verified, dropped = _analyst_citations(parsed, passages, doc.text)
            why = "the analyst's quote could not be located in the contract; dropped" if dropped else "no quote"
    method: Literal["analyst", "keyword"] = "analyst"
    if not verified:
        cue = re.compile(cat.cue, re.IGNORECASE)
        hit = next((s for s in sentences if cue.search(s)), None)
        c = _verified(passages, 0, hit, doc.text) if hit else None
        if c is None or not c.verified:
            unusable = result is not None and parsed is None
            finding = ClauseFinding(**base, found=False, answer="" if unusable else answer, note=why)
            if unusable:
                return finding.model_copy(update={"risk": "unknown", "risk_note": "the analyst's reply was unusable"})
            return _with_risk(cat, finding)
        verified, method, answer = [c], "keyword", ""
        why = f"keyword rule, not confirmed by the analyst ({why})"
        dropped = 0
    first = verified[0]
    clause = next(p for p in passages if p.start <= first.start and first.end <= p.end)
    finding = ClauseFinding(
        **base,
        found=True,
        method=method,
        answer=answer,
        start=clause.start,
        end=clause.end,
        heading_path=clause.heading_path,
        quote=first.quote,
        quote_start=first.start,
        quote_end=first.end,
        citations=verified,
        note=why
        if method == "keyword"
        else (f"dropped {dropped} quote(s) that could not be located" if dropped else ""),
    )
    return _with_risk(cat, finding, clause.text)


def _analyst_adapter(config: Config, domain: str) -> tuple[str | None, str]:
    """The analyst adapter bound to ``domain`` (None: the base model) and the output format to ask it in (the one
    it was trained on; ``agent.analyst_format`` for the base model). A binding whose adapter is not trained or
    promoted yet falls back to the base model with a warning, as the agent does; the result records which."""
    from rolora.adapters.registry import Registry

    registry = Registry.from_config(config)
    try:
        ref = registry.role_adapter(config, domain, "analyst")
    except UserError as e:
        log.warning("%s; analysing with the base model", e)
        ref = None
    if ref is None:
        return None, config.agent.analyst_format
    return ref, trained_format(registry.show(ref).training_config)


async def aanalyze_contract(
    source: str | Path | LoadedDocument,
    domain: str,
    *,
    config: Config,
    backend: Backend,
    retriever: Retriever | None = None,
    categories: Sequence[str] | None = None,
    k: int = 3,
    quote_choices: int = 6,
    keyword_fallback: bool = True,
    max_tokens: int = 160,
    on_progress: Callable[[str], None] | None = None,
) -> ContractAnalysis:
    """Analyse one contract; the async core of :func:`analyze_contract` (same arguments)."""
    from rolora.adapters.serving.base import GenerationRequest

    t0 = time.perf_counter()
    config.domain(domain)  # a one-line ConfigError for an unknown domain
    cats = select_categories(categories)
    if k < 1:
        raise UserError(f"k (passages per category) must be >= 1, got {k}")
    if retriever is not None and retriever.domain != domain:
        raise UserError(f"the retriever is for domain '{retriever.domain}', not '{domain}'")
    progress = on_progress or (lambda _msg: None)
    progress("reading the contract")
    doc = await asyncio.to_thread(open_document, source, domain, config, retriever)
    progress(f"finding candidate clauses for {len(cats)} categories")
    rrf_k = config.retrieval.rrf_k
    chosen = await asyncio.to_thread(lambda: [candidates(doc, c, k, rrf_k) for c in cats])
    ranked = await asyncio.to_thread(_ranked_sentences, doc, cats, chosen)
    quotes = [r[:quote_choices] if quote_choices > 0 else r for r in ranked]
    adapter, fmt = await asyncio.to_thread(_analyst_adapter, config, domain)
    calls = [
        _analysis_call(fmt, cat, passages, q) if passages else None
        for cat, passages, q in zip(cats, chosen, quotes, strict=True)
    ]
    requests = [
        GenerationRequest(c.messages, adapter=adapter, max_tokens=max_tokens, json_schema=c.schema)
        for c in calls
        if c is not None
    ]
    progress(f"asking the analyst ({adapter or 'base model'}) about {len(requests)} categories")
    try:
        results = await backend.agenerate(requests) if requests else []
    except RoloraRuntimeError:
        raise
    except Exception as e:
        raise RoloraRuntimeError(f"analyze: the analyst call ({adapter or 'base model'}) failed: {e}") from e
    it = iter(results)
    findings = [
        _finding(cat, doc, passages, next(it) if passages else None, sentences if keyword_fallback else (), call)
        for cat, passages, sentences, call in zip(cats, chosen, ranked, calls, strict=True)
    ]
    return ContractAnalysis(
        doc_id=doc.doc_id,
        domain=domain,
        source=doc.source,
        text_chars=len(doc.text),
        findings=findings,
        adapters={"analyst": adapter or "base"},
        backend=getattr(backend, "name", type(backend).__name__),
        latency_s=round(time.perf_counter() - t0, 3),
        tokens_in=sum(r.prompt_tokens for r in results),
        tokens_out=sum(r.completion_tokens for r in results),
    )


def analyze_contract(
    source: str | Path | LoadedDocument,
    domain: str,
    *,
    config: Config,
    backend: Backend,
    retriever: Retriever | None = None,
    categories: Sequence[str] | None = None,
    k: int = 3,
    quote_choices: int = 6,
    keyword_fallback: bool = True,
    max_tokens: int = 160,
    on_progress: Callable[[str], None] | None = None,
) -> ContractAnalysis:
    """Extract each clause category of one contract with its exact span and a heuristic risk note.

    ``source``: a ``str`` is a ``doc_id`` in ``domain``'s index; a ``Path`` is a contract file (loaded and chunked
    in memory with the project's loader and chunker, no index needed); a ``LoadedDocument`` is a text given inline
    (see :func:`text_document`). Offsets always refer to that document's text.
    ``categories``: names from :data:`CATEGORIES` (default: all). ``k``: passages shown per category.
    ``quote_choices``: the analyst quotes one of the passages' sentences most similar to the category (0 = any).
    ``keyword_fallback``: when the analyst finds nothing usable, the most similar sentence matching the category's
    keyword cue (``ClauseCategory.cue``) is reported instead, marked ``method="keyword"``.
    Raises ``UserError`` for an unknown document, file or category; ``RoloraRuntimeError`` when the backend fails.
    """
    coro = aanalyze_contract(
        source,
        domain,
        config=config,
        backend=backend,
        retriever=retriever,
        categories=categories,
        k=k,
        quote_choices=quote_choices,
        keyword_fallback=keyword_fallback,
        max_tokens=max_tokens,
        on_progress=on_progress,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from inside an event loop
        return pool.submit(asyncio.run, coro).result()


def _with_risk(cat: ClauseCategory, finding: ClauseFinding, clause_text: str = "") -> ClauseFinding:
    """Apply the category's rule to the clause text (and the quote, which lies inside it)."""
    rule = RISK_RULES[cat.name]
    risk, note = rule(finding.found, f"{finding.quote}{QUOTE_END}{clause_text}" if finding.found else "")
    if not finding.found and finding.note:
        note = f"{note} (heuristic: not found in the {len(finding.passages)} passages searched)"
    return finding.model_copy(update={"risk": risk, "risk_note": note})
