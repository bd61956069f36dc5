"""Whole-contract analysis: one finding per clause category, each with an exact span and a heuristic risk note.

For every category (CUAD's names where CUAD has one: ``Governing Law``, ``Cap On Liability``, ...) the analysis
picks candidate chunks of the contract (hybrid search restricted to that contract with the category's query, fused
with the chunks whose heading names the category), asks the analyst role (the domain's registered adapter, or the
base model when none is bound) with its trained request :func:`rolora.roles.analyst_call` (in the adapter's output
format), and maps the sentence it cites to an exact ``doc_id[start:end]`` span. Citations are constrained to sentences
of the numbered passages (the units the agent graph allows, :func:`rolora.roles.quote_spans`) and then verified
against the source text; a
quote that cannot be located is dropped, never invented. All categories go to the backend in one ``agenerate`` call,
so the in-process backend micro-batches them.

Risk notes come from deterministic keyword rules per category (uncapped liability, auto-renewal with a long notice
period, assignment without consent, a missing governing-law clause, ...): they are heuristics, not legal advice.

The package holds, one module each: the category table (``categories.yaml``, loaded by :mod:`.categories`), the
risk rules (:mod:`.risk`), the contract being analysed (:mod:`.document`), the results (:mod:`.results`) and the
analyst call (:mod:`.analyst`).

>>> from rolora.agents.analyze import analyze_contract
>>> result = analyze_contract("nda_mutual", "contracts", config=cfg, backend=backend)   # doctest: +SKIP
>>> result.finding("Governing Law").quote                                               # doctest: +SKIP
'This Agreement shall be governed by and construed in accordance with the laws of the State of New York'
"""

from .analyst import aanalyze_contract, analyze_contract
from .categories import CATEGORIES, ClauseCategory, select_categories
from .document import text_document
from .results import ClauseFinding, ContractAnalysis
from .risk import HEURISTIC_NOTE, QUOTE_END, RISK_RULES

__all__ = [
    "CATEGORIES",
    "HEURISTIC_NOTE",
    "QUOTE_END",
    "RISK_RULES",
    "ClauseCategory",
    "ClauseFinding",
    "ContractAnalysis",
    "aanalyze_contract",
    "analyze_contract",
    "select_categories",
    "text_document",
]
