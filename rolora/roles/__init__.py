"""The role contract shared by training and inference: prompts, output schemas, refusal text and what a quote is.

The data builders (``rolora.adapters.data``), the agent graph (``rolora.agents.nodes``), ``rolora analyze`` and the
role evals import these from here, so an adapter is trained on exactly what the graph asks of it: the same messages,
the same JSON schema and the same quotes (whole sentences of the passages, :func:`quote_candidates`). This package is
part of the core: it imports nothing from the subsystems.
"""

from .formats import (
    ANALYST_FORMATS,
    SENTENCE_ANALYST_SCHEMA,
    AnalystCall,
    AnalystFormat,
    analyst_call,
    analyst_schema_for,
    answer_sentences,
    evidence_ids,
    nearest_sentence,
    reply_citations,
    sentence_similarities,
    trained_format,
)
from .prompts import (
    ANALYST_SCHEMA,
    CRITIC_SCHEMA,
    NOT_FOUND,
    QUERY_SCHEMA,
    analyst_messages,
    critic_messages,
    format_passages,
    is_refusal,
    narrow_analyst_schema,
    query_writer_messages,
)
from .quotes import (
    MAX_QUOTE_CHARS,
    MIN_QUOTE_CHARS,
    Quote,
    Sentence,
    is_heading,
    locate_quote,
    quote_candidates,
    quote_spans,
    split_sentences,
)

__all__ = [
    "ANALYST_FORMATS",
    "ANALYST_SCHEMA",
    "CRITIC_SCHEMA",
    "MAX_QUOTE_CHARS",
    "MIN_QUOTE_CHARS",
    "NOT_FOUND",
    "QUERY_SCHEMA",
    "SENTENCE_ANALYST_SCHEMA",
    "AnalystCall",
    "AnalystFormat",
    "Quote",
    "Sentence",
    "analyst_call",
    "analyst_messages",
    "analyst_schema_for",
    "answer_sentences",
    "critic_messages",
    "evidence_ids",
    "format_passages",
    "is_heading",
    "is_refusal",
    "locate_quote",
    "narrow_analyst_schema",
    "nearest_sentence",
    "query_writer_messages",
    "quote_candidates",
    "quote_spans",
    "reply_citations",
    "sentence_similarities",
    "split_sentences",
    "trained_format",
]
