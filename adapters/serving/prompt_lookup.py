"""Prompt-lookup decoding under a JSON grammar, for the in-process backend (``backend.prompt_lookup``).

A greedy request generated alone (every call of ``rolora ask``) is decoded with transformers' assisted generation
and its ``PromptLookupCandidateGenerator``: the tokens that followed the last n-gram where it occurs earlier in the
prompt are proposed as a draft, and one forward pass over the draft verifies it: the model keeps the draft's tokens up
to the first one its own (grammar-masked) greedy choice differs from, and adds that choice. On two CPU cores a pass
over ten tokens costs about what one decoding step costs (decoding reads every weight per pass), so each accepted
draft token is a decoding step saved. The analyst's reply is mostly copied: its JSON keys are in the system prompt
(``{"evidence": [int], "answer": str, ...}``), and its short answer is a span of a numbered sentence of the passages.
The tokens are those of plain greedy decoding: a draft token is kept only where it *is* the greedy choice (up to
float rounding: a pass over several tokens adds in another order than one over one token; ``bench/latency.py
lookup=0`` prints how many answers are identical).

transformers calls the logits processors on growing and shrinking prefixes of the sequence (the candidate generator
probes a draft against the grammar; verification masks the logits after every drafted token; rejected tokens are
dropped). xgrammar's own transformers processor assumes one new token per call, so :class:`GrammarSync` keeps its
matcher in step with whatever prefix it is called with, rolling back the tokens that are no longer there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from .inprocess import shared_prefix_len

__all__ = ["GrammarSync", "assisted_prefill_after"]


class GrammarSync:
    """A transformers logits processor (batch of one) that masks the logits to the tokens ``compiled`` (an xgrammar
    ``CompiledGrammar``) allows after the generated tokens of ``input_ids`` (those after ``prompt_len``), for any
    prefix it is called with, in any order."""

    def __init__(self, compiled: Any, prompt_len: int) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.matcher = xgr.GrammarMatcher(compiled, max_rollback_tokens=-1)
        self.bitmask = xgr.allocate_token_bitmask(1, compiled.tokenizer_info.vocab_size)
        self.prompt_len = prompt_len
        self.accepted: list[int] = []  # the generated tokens the matcher has accepted, in order

    def advance(self, input_ids: Any) -> bool:
        """Brings the matcher to the generated tokens of ``input_ids``; False when the grammar refuses one of them
        or has terminated."""
        if input_ids.shape[0] != 1:
            raise ValueError("GrammarSync serves one sequence (assisted generation's batch of one)")
        seq = [int(t) for t in input_ids[0, self.prompt_len :]]
        keep = shared_prefix_len(self.accepted, seq)
        if keep < len(self.accepted):
            self.matcher.rollback(len(self.accepted) - keep)
            del self.accepted[keep:]
        for token in seq[keep:]:
            if self.matcher.is_terminated() or not self.matcher.accept_token(token):
                return False
            self.accepted.append(token)
        return not self.matcher.is_terminated()

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        if not self.advance(input_ids):
            # a drafted token the grammar refuses: verification rejects it (the masked greedy choice at its
            # position differs), so the logits after it are never used; or the grammar has ended
            return scores
        self.matcher.fill_next_token_bitmask(self.bitmask)
        if not scores.is_contiguous():  # verification passes a row of the draft's logits
            scores = scores.contiguous()
        self._xgr.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
        return scores


@contextlib.contextmanager
def assisted_prefill_after(model: Any) -> Iterator[None]:
    """While open, assisted generation on ``model`` prefills only the prompt tokens a reused cache does not hold.

    transformers' plain decoding slices the prompt by the cache's length in its prefill (``_prefill``), but assisted
    decoding's first pass hands ``prepare_inputs_for_generation`` the whole prompt, so with the prefix cache
    (``backend.prefix_cache``) the prompt was run again on top of its own cached prefix: the model then read the
    prefix twice and its replies were not plain greedy decoding's. The method is shadowed on the instance while open
    (the backend's one worker thread is its only caller) to slice as ``_prefill`` does."""
    original = model.prepare_inputs_for_generation

    def prepare(input_ids: Any, *args: Any, **kwargs: Any) -> Any:
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if kwargs.get("is_first_iteration") and kwargs.get("next_sequence_length") is None and cache is not None:
            past = cache.get_seq_length()
            if 0 < past < input_ids.shape[1]:
                kwargs["next_sequence_length"] = input_ids.shape[1] - past
        return original(input_ids, *args, **kwargs)

    model.prepare_inputs_for_generation = prepare
    try:
        yield
    finally:
        del model.prepare_inputs_for_generation
