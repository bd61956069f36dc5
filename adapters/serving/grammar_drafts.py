"""Drafts of the tokens a JSON grammar forces, for the in-process backend (``backend.grammar_drafts``).

Most of an analyst's reply is fixed by its schema: ``{"evidence": [`` opens it, ``, "answer": "`` follows the list,
``", "not_found": `` the answer, ``}`` closes it; the model chooses only the numbers, the answer's words and the
boolean. Decoded one token a step, those fixed tokens cost a full pass over the weights each (about 20 of a ~30-token
reply). Here a greedy request generated alone is decoded with transformers' assisted generation, and the draft at each
step is the string the grammar forces next (xgrammar's jump-forward string); one forward pass verifies the draft, and
the model keeps its tokens up to the first one its own grammar-masked greedy choice differs from. So the reply is the
one plain greedy decoding gives (up to float rounding: a pass over several tokens adds in another order than one over
one token; ``bench/analyst_calls.py --modes bf16,bf16+drafts`` prints how many replies are identical).

Which tokens spell the forced string matters: the model does not write the tokenizer's own encoding of it (``{"`` is
one token, the adapters write ``{`` then ``"``), and a draft token it would not choose ends the draft there. The
first time a string is forced for an adapter, xgrammar's longest-match tokens are drafted; afterwards the tokens the
model itself wrote for that string (learned from its finished reply, per adapter, bounded) are.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .prompt_lookup import GrammarSync

__all__ = ["MAX_FORCED_DRAFT", "ForcedDrafts", "GrammarDrafts", "grammar_drafts"]

MAX_FORCED_DRAFT = 16  # tokens of one draft (``, "not_found": `` is 8 of the adapters' tokens)
MEMORY_ENTRIES = 512  # (adapter, forced string) -> the model's own tokens for it


class ForcedDrafts:
    """What a backend keeps across calls: the tokens the model wrote for each forced string (per adapter, least
    recently used first), and counts of the drafts proposed, their tokens and the tokens the model accepted."""

    def __init__(self) -> None:
        self.memory: OrderedDict[tuple[str, str], tuple[int, ...]] = OrderedDict()
        self.drafts = 0
        self.tokens = 0
        self.accepted = 0

    def tokens_for(self, adapter: str, text: str) -> tuple[int, ...] | None:
        key = (adapter, text)
        if key in self.memory:
            self.memory.move_to_end(key)
            return self.memory[key]
        return None

    def learn(self, adapter: str, tokenizer: Any, generated: Sequence[int], forced: Sequence[tuple[int, str]]) -> None:
        """Records, for each ``(position, string)`` forced during a reply, the tokens the model wrote from that
        position that spell a prefix of the string (all of it when the model's tokens end where it ends)."""
        for at, text in forced:
            ids = [int(t) for t in generated[at : at + MAX_FORCED_DRAFT]]
            keep = 0
            for k in range(1, len(ids) + 1):
                spelled = tokenizer.decode(ids[:k])
                if not text.startswith(spelled):
                    break
                keep = k
                if len(spelled) == len(text):
                    break
            if keep:
                self.memory[(adapter, text)] = tuple(ids[:keep])
                self.memory.move_to_end((adapter, text))
        while len(self.memory) > MEMORY_ENTRIES:
            self.memory.popitem(last=False)


class GrammarDrafts:
    """A transformers candidate generator for one ``generate`` call: the tokens the grammar forces next as the
    draft (when ``drafts`` is given: grammar drafts on); where it forces none, prompt lookup's n-gram draft when
    ``lookup`` > 0, else none (a plain step). ``not_in_prefill``: no draft rides on the prompt's prefill, the first
    pass (a draft there is computed as the prefill is: bf16 under bf16 prefill, where plain decoding computes those
    tokens in fp32 steps)."""

    def __init__(self, drafts: ForcedDrafts | None, adapter: str, sync: GrammarSync | None, lookup: int,
                 prompt_len: int, seen: list[tuple[int, str]], *, not_in_prefill: bool, eos_token_id: Any,
                 max_length: int, logits_processor: Any, vocab_size: int) -> None:  # fmt: skip
        from transformers.generation.candidate_generator import PromptLookupCandidateGenerator

        self.drafts = drafts if sync is not None else None
        self.adapter = adapter
        self.sync = sync
        self.prompt_len = prompt_len
        self.seen = seen  # (generated position, forced string), for ForcedDrafts.learn after the reply
        self.not_in_prefill = not_in_prefill
        self.max_length = max_length
        self.lookup = (
            PromptLookupCandidateGenerator(
                eos_token_id=eos_token_id,
                num_output_tokens=lookup,
                max_length=max_length,
                logits_processor=logits_processor,
                vocab_size=vocab_size,
            )
            if lookup
            else None
        )
        # transformers sizes its cache bookkeeping by it
        self.num_drafting_tokens = max(lookup, MAX_FORCED_DRAFT if self.drafts is not None else 0)
        self.requires_model_outputs = False
        self._forced = 0  # tokens of the draft being verified, when the grammar forced it

    def get_candidates(self, input_ids: Any, **kw: Any) -> tuple[Any, Any]:
        import torch

        self._forced = 0
        if input_ids.shape[1] == self.prompt_len and self.not_in_prefill:
            return input_ids, None
        room = min(self.max_length - input_ids.shape[1] - 1, MAX_FORCED_DRAFT)
        if self.drafts is not None and self.sync is not None and room > 0 and self.sync.advance(input_ids):
            text = self.sync.matcher.find_jump_forward_string()
            if text:
                self.seen.append((input_ids.shape[1] - self.prompt_len, text))
                draft = self.drafts.tokens_for(self.adapter, text) or self.sync.matcher.find_jump_forward_tokens()
                draft = tuple(draft[:room])
                if draft:
                    self._forced = len(draft)
                    self.drafts.drafts += 1
                    self.drafts.tokens += len(draft)
                    tail = torch.tensor([list(draft)], dtype=input_ids.dtype, device=input_ids.device)
                    return torch.cat((input_ids, tail), dim=1), None
        if self.lookup is not None:
            return self.lookup.get_candidates(input_ids)
        return input_ids, None

    def update_candidate_strategy(self, input_ids: Any, scores: Any, num_matches: int) -> None:
        if self._forced and self.drafts is not None:
            self.drafts.accepted += num_matches


@contextlib.contextmanager
def grammar_drafts(
    model: Any,
    drafts: ForcedDrafts | None,
    adapter: str,
    sync: GrammarSync | None,
    lookup: int,
    prompt_len: int,
    *,
    not_in_prefill: bool,
) -> Iterator[list[tuple[int, str]]]:
    """While open, assisted generation on ``model`` (the transformers model, under PEFT or not) drafts with
    :class:`GrammarDrafts` (``drafts`` None: prompt lookup's drafts only). transformers picks its candidate
    generator in ``_get_candidate_generator`` and takes none from the caller, so that method is shadowed on the
    instance while open (the backend's one worker thread is its only caller). Yields the list of forced strings
    seen, for :meth:`ForcedDrafts.learn`."""
    seen: list[tuple[int, str]] = []

    def make(generation_config: Any, input_ids: Any, inputs_tensor: Any, logits_processor: Any, *a: Any, **kw: Any
             ) -> GrammarDrafts:  # fmt: skip
        return GrammarDrafts(
            drafts,
            adapter,
            sync,
            lookup,
            prompt_len,
            seen,
            not_in_prefill=not_in_prefill,
            eos_token_id=generation_config._eos_token_tensor,
            max_length=generation_config.max_length,
            logits_processor=logits_processor,
            vocab_size=model.config.get_text_config().vocab_size,
        )

    model._get_candidate_generator = make
    try:
        yield seen
    finally:
        del model._get_candidate_generator
