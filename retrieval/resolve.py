"""Contract resolution: which document(s) a question names, searched before the clauses.

A BM25 index (bm25s, stemmed) over each document's profile (file name words, title, parties, defined short names,
first page; ``retrieval/profile.py``). The query is the question's *naming* words only — quoted terms, words with a
capital letter that do not open a sentence, words with digits or underscores — so the clause part of a question
("what is the notice period …") does not pull towards contracts that merely discuss notice periods. A question that
contains a doc_id verbatim resolves to it outright.

The decision (thresholds chosen on CUAD's train split, 10,565 questions over 401 contracts): the candidates are the
documents scoring at least ``best / ratio``; the question is resolved only when the best score is at least
``min_score`` and no more than ``max_candidates`` documents are that close, or when the best document scores at
least ``STRONG_LEAD`` times the runner-up (and a third of ``min_score``: small domains score lower). Otherwise
nothing is resolved and the caller searches the whole domain, as before.

>>> r = DocResolver(["acme_supply", "zeta_lease"], ["Supply Agreement Acme Inc. Widget Co.", "Lease Zeta LLC"])
>>> r.resolve("Under the Supply Agreement between Acme Inc. and Widget Co., who pays freight?", min_score=0.5)
[('acme_supply', 1.0)]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .index import tokenize

__all__ = ["STRONG_LEAD", "DocResolver", "clause_words", "naming_words"]

STRONG_LEAD = 2.0

# quoted terms; capitalised / digit / underscore words that do not open a sentence
_NAME = re.compile(r"[\"“][^\"”]{1,60}[\"”]|(?<![.?!]\s)(?<!^)\b[\w.&'’\-]*(?:[A-Z]|\d|_)[\w.&'’\-]*\b")


def _id_like(doc_id: str) -> bool:
    """A doc id that cannot be an ordinary word of a question ("nda_mutual", "ACME-2020", not "lease")."""
    return len(doc_id) >= 12 or bool(re.search(r"[_\-.\d]", doc_id))


def naming_words(question: str) -> str:
    """The words of ``question`` that can name a contract (see the module docstring)."""
    return " ".join(_NAME.findall(question.strip()))


# what is left around a removed name: the connecting words before it ("of the", "Under the", "between") and the
# punctuation and connectors between names ("A, Inc. and B Ltd.")
_CONNECTOR = r"(?:under|between|among|and|or|of|the|by|with|for|to|a|an|in|on|&|plc|ltd|llc|inc|corp|co)"
_AROUND_NAME = re.compile(
    rf"(?:\b{_CONNECTOR}\s+)*\x00(?:[\s,.;:()]*(?:\b{_CONNECTOR}\b)?[\s,.;:()]*\x00)*[\s,.;:()]*", re.IGNORECASE
)


def clause_words(question: str, tidy: bool = False) -> str:
    """``question`` without its naming words: what it asks of a contract, for a search already scoped to that
    contract (where every chunk carries the contract's title as context, the title in the question matches all of
    them alike and drowns the clause words). "Which law governs the Mutual Non-Disclosure Agreement?" -> "Which law
    governs the?". ``tidy``: without what connected the names too ("... effective date of the A, Inc. and B Ltd.?"
    -> "... effective date?" rather than "... effective date of the between , . and .?"), a sentence to compare
    with the clauses' sentences."""
    if not tidy:
        return " ".join(_NAME.sub(" ", question).split())
    marked = _NAME.sub("\x00", question)
    kept = _AROUND_NAME.sub(" ", marked)
    return re.sub(r"\s+([?.,;:])", r"\1", " ".join(kept.split())).strip(" ,;:")


class DocResolver:
    """BM25 over document profiles; built in memory from the store when an index generation is loaded."""

    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str], stemmer: str = "english") -> None:
        import bm25s

        self.doc_ids = list(doc_ids)
        self.stemmer = stemmer
        self._bm25: Any = bm25s.BM25()
        if self.doc_ids:
            self._bm25.index(tokenize(list(texts), stemmer), show_progress=False)
        # longest first, so that "x_1" is found before "x"
        self._by_length = sorted(self.doc_ids, key=len, reverse=True)

    def scores(self, question: str, k: int = 5) -> list[tuple[str, float]]:
        """The top ``k`` documents for the question's naming words with their raw BM25 scores (> 0)."""
        if not self.doc_ids:
            return []
        tokens = tokenize([naming_words(question)], self.stemmer)
        if not tokens[0]:
            return []
        ids, scores = self._bm25.retrieve(tokens, k=min(k, len(self.doc_ids)), show_progress=False)
        return [(self.doc_ids[int(i)], float(s)) for i, s in zip(ids[0], scores[0], strict=True) if s > 0]

    def resolve(
        self, question: str, min_score: float = 6.0, ratio: float = 1.1, max_candidates: int = 3
    ) -> list[tuple[str, float]]:
        """The documents ``question`` names, best first, each with its share of the candidates' scores (summing to
        1); ``[]`` when no document is named confidently."""
        for doc_id in self._by_length:  # a doc_id written out names its document
            if _id_like(doc_id) and re.search(rf"(?<![\w.-]){re.escape(doc_id)}(?![\w-])", question):
                return [(doc_id, 1.0)]
        top = self.scores(question, k=max_candidates + 1)
        if not top:
            return []
        best = top[0][1]
        close = [(d, s) for d, s in top if s >= best / ratio]
        if best < min_score or len(close) > max_candidates:
            # BM25 scores shrink with the corpus (fewer documents, lower IDF): in a small domain a best score far
            # ahead of the runner-up (STRONG_LEAD times) above a third of min_score still names one contract
            second = top[1][1] if len(top) > 1 else 0.0
            if best >= min_score / 3 and best >= STRONG_LEAD * second:
                return [(top[0][0], 1.0)]
            return []
        total = sum(s for _, s in close)
        return [(d, round(s / total, 4)) for d, s in close]
