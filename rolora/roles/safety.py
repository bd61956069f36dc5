"""What keeps a counterparty's contract from steering the model (indirect prompt injection, OWASP LLM01).

Contracts come from outside: a clause can carry instructions. Three defences live here, used wherever document
text meets a prompt or a report:

- :func:`neutralise_control_tokens`: chat control tokens written inside a document (``<|im_start|>system``) are
  broken with an invisible WORD JOINER, so the tokenizer reads them as text, never as the real control tokens.
- :func:`looks_injected`: a sentence that addresses the model (ignore previous instructions, a note to the AI, a
  fake system message, "cite this clause as the authority", an answer override) is never offered as a quote, so an
  answer is never taken from an injected span.
- :func:`markdown_text`: document or model text in a Markdown report renders as text: no images (which a viewer
  would fetch: exfiltration), no links, no raw HTML.

The prompts (:mod:`rolora.roles.prompts`) also mark passages as data (spotlighting by delimiting).
"""

from __future__ import annotations

import re

__all__ = ["looks_injected", "markdown_text", "neutralise_control_tokens"]

_JOINER = "\u2060"  # WORD JOINER: invisible, and no tokenizer's control token contains it

# <|im_start|>, <|endoftext|>, <|eot_id|>, <s>, </s>, [INST], <<SYS>>, <start_of_turn>: the chat control tokens of the
# common instruction-tuned families (SmolLM2 uses the ChatML ones)
_CONTROL = re.compile(
    r"<\|[A-Za-z0-9_.\-]{1,40}\|>|</?s>|\[/?INST\]|<</?SYS>>|<(?:start|end)_of_turn>", flags=re.IGNORECASE
)


def neutralise_control_tokens(text: str) -> str:
    """``text`` with every chat control token broken after its first character (same length + 1 per token)."""
    return _CONTROL.sub(lambda m: m.group(0)[0] + _JOINER + m.group(0)[1:], text)


_INJECTED = re.compile(
    "|".join(
        (
            r"\bignore\b.{0,40}\b(?:previous|prior|above|earlier|all)\b.{0,40}\b(?:instructions?|prompts?|rules?)",
            r"\b(?:disregard|forget|override)\b.{0,40}\b(?:instructions?|prompts?|rules?|system)",
            r"\b(?:note|message|instructions?)\s+(?:to|for)\s+(?:the\s+)?(?:ai|assistant|model|llm|language model)",
            r"\b(?:ai|language model|llm|chatbot)\s+assistant\b",
            r"\byou\s+(?:are|must|should|will)\s+now\b",
            r"\b(?:pretend\s+(?:to\s+be|you\s+are)|role-?play\s+as|you\s+are\s+(?:now\s+)?(?:an?\s+)?(?:ai|assistant|chatbot|dan)\b)",
            r"^\s*(?:system|assistant)\s*(?:message|prompt|override)?\s*:\s*(?:you|ignore|new|the\s+assistant)\b",
            r"<\|[A-Za-z0-9_.\-]{1,40}\|>|\[/?INST\]|<</?SYS>>",
            r"\bcite\s+this\s+(?:clause|section|passage|sentence)\b",
            r"\b(?:always|only)\s+(?:answer|reply|respond)\b",
            r"\b(?:answer|reply|respond)\s+(?:with|only)\s+[\"'“]",
            r"\b(?:the\s+)?(?:correct|right|official)\s+answer\s+(?:is|to\s+any)\b",
            r"\b(?:do\s+not|don't|never)\s+(?:answer|reveal|mention|cite)\b.{0,60}\b(?:question|user|clause)",
            r"\bnot\s+in\s+the\s+provided\s+clauses\b",  # the refusal text itself, planted to induce refusals
            r"!\[[^\]]*\]\([^)]*\)",  # a Markdown image
            r"\]\((?:https?:)?//",  # a Markdown link
        )
    ),
    flags=re.IGNORECASE | re.MULTILINE,
)


def looks_injected(sentence: str) -> bool:
    """Whether ``sentence`` addresses the model rather than the parties (instructions, overrides, fake turns)."""
    return bool(_INJECTED.search(sentence))


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+!|<>~])")


def markdown_text(text: str) -> str:
    """``text`` for a Markdown report: every character Markdown acts on escaped (no image, link, emphasis or raw
    HTML survives), bare URLs broken so that no viewer autolinks them. The text still reads the same."""
    escaped = _MD_SPECIAL.sub(r"\\\1", text)
    unlinked = re.sub(r"(?i)\b(https?|ftp):/(?=/)", lambda m: f"{m.group(1)}:/{_JOINER}", escaped)
    return re.sub(r"(?i)\bwww\.", lambda m: f"{m.group(0)[:3]}{_JOINER}.", unlinked)
