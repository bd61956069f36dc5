"""Quote -> span mapping and the deterministic citation checks, on the real text of a sample contract."""

from __future__ import annotations

from rolora.agents.citations import (
    answer_problem,
    answer_support,
    citation_from_quote,
    unsupported_numbers,
    verify_citation,
)
from rolora.agents.nodes.llm import parse_json
from rolora.agents.nodes.retrieve import fuse
from rolora.agents.types import Citation, PassageRef
from rolora.roles import locate_quote, quote_candidates

from conftest import EXAMPLES

SOURCE = (EXAMPLES / "nda_mutual.txt").read_text(encoding="utf-8")


def _passage(start: int, end: int, doc: str = "nda_mutual", chunk: str = "") -> PassageRef:
    return PassageRef(doc_id=doc, start=start, end=end, text=SOURCE[start:end], chunk_id=chunk or f"c{start}")


def _source(doc: str) -> str:
    assert doc == "nda_mutual"
    return SOURCE


def test_locate_quote_exact_normalised_and_absent() -> None:
    text = "The  Agreement shall be governed by\nthe laws of the State of New York."
    assert locate_quote(text, "governed by") == (text.index("governed by"), text.index("governed by") + 11)
    s, e = locate_quote(text, "the laws of the state of new york") or (0, 0)
    assert text[s:e] == "the laws of the State of New York"
    s, e = locate_quote(text, '"Agreement shall be governed by the laws…"') or (0, 0)
    assert text[s:e] == "Agreement shall be governed by\nthe laws"
    assert locate_quote(text, "the laws of California") is None
    assert locate_quote(text, "  ") is None


def test_citation_from_quote_maps_to_absolute_span_and_verifies() -> None:
    i = SOURCE.index("New York")
    passages = [_passage(0, 400), _passage(max(0, i - 300), i + 200)]
    sentence = next(s for s in quote_candidates(passages) if "New York" in s)
    c = citation_from_quote(passages, 2, sentence)
    assert c.passage == 2 and SOURCE[c.start : c.end] == sentence
    checked = verify_citation(c, passages, _source)
    assert checked.verified and checked.reason == ""
    # the analyst named the wrong passage: the quote is still found, in the passage that holds it
    c1 = citation_from_quote(passages, 1, sentence)
    assert c1.passage == 2 and verify_citation(c1, passages, _source).verified


def test_verify_rejects_outside_passages_mismatch_and_invented_quotes() -> None:
    passages = [_passage(0, 400)]
    outside = Citation(doc_id="nda_mutual", start=1000, end=1040, quote=SOURCE[1000:1040])
    assert not verify_citation(outside, passages, _source).verified
    assert "outside the retrieved passages" in verify_citation(outside, passages, _source).reason
    wrong = Citation(doc_id="nda_mutual", start=10, end=50, quote="a quote the source does not hold")
    assert not verify_citation(wrong, passages, _source).verified
    invented = citation_from_quote(passages, 1, "The Receiving Party shall pay one million dollars.")
    assert invented.start == -1 and not verify_citation(invented, passages, _source).verified
    # a span much longer than its quote is not a faithful citation either
    padded = Citation(doc_id="nda_mutual", start=0, end=300, quote=SOURCE[0:20])
    assert not verify_citation(padded, passages, _source).verified


def test_quote_candidates_are_substrings_of_the_passages() -> None:
    passages = [_passage(0, 1500), _passage(1500, 3000)]
    cands = quote_candidates(passages)
    assert len(cands) > 5
    assert all(any(c in p.text for p in passages) for c in cands)
    assert len(cands) == len(set(cands))


def test_fuse_merges_queries_and_deduplicates_chunks() -> None:
    a, b, c = _passage(0, 100, chunk="a"), _passage(100, 200, chunk="b"), _passage(200, 300, chunk="c")
    fused = fuse([[a, b], [b, c], [b]], k=3)
    assert [p.chunk_id for p in fused] == ["b", "a", "c"]
    assert len(fuse([[a, b, c]], k=2)) == 2 and fuse([], k=3) == []


def test_fuse_keeps_the_contracts_opening_among_the_k() -> None:
    """A question about the contract itself adds its opening chunk as a ranking of its own (query OPENING): fused
    below chunks two queries found, it still takes the last place of the k."""
    from rolora.agents.nodes.retrieve import OPENING

    a, b, c = _passage(300, 400, chunk="a"), _passage(400, 500, chunk="b"), _passage(500, 600, chunk="c")
    opening = _passage(0, 100, chunk="o").model_copy(update={"query": OPENING})
    assert [p.chunk_id for p in fuse([[a, b, c], [a, b, c]], k=2)] == ["a", "b"]
    assert [p.chunk_id for p in fuse([[a, b, c], [a, b, c], [opening]], k=2)] == ["a", "o"]
    assert [p.chunk_id for p in fuse([[opening, a], [a, b], [opening]], k=2)] == ["o", "a"]  # already in: unchanged


def test_parse_json_finds_the_object_amid_prose() -> None:
    assert parse_json('Sure! {"queries": ["x"]} done') == {"queries": ["x"]}
    assert parse_json("no json here") is None
    assert parse_json('{"a": 1') is None


def test_answer_support_counts_content_words_found_in_the_quotes() -> None:
    quote = 'is entered into as of March 14, 2023 (the "Effective Date")'
    assert answer_support("March 14, 2023", [quote]) == 1.0
    assert answer_support("The effective date is March 14, 2023", [quote]) == 1.0
    assert answer_support("77 Kelvin for liquid nitrogen", [quote]) == 0.0
    assert answer_support("March 15, 2024", [quote]) == 1 / 3
    assert answer_support("the", []) == 1.0


def test_a_number_the_quotes_do_not_state_is_found_in_digits_or_words() -> None:
    quote = "Payment is due within thirty (30) days of invoice, with a late fee of $1,500.00 after forty-five days."
    assert unsupported_numbers("within thirty days", [quote]) == []
    assert unsupported_numbers("30 days; $1,500.00 fee", [quote]) == []  # "thirty (30)" states 30 in both forms
    assert unsupported_numbers("45 days", [quote]) == []
    assert unsupported_numbers("within sixty (60) days", [quote]) == ["60"]
    assert unsupported_numbers("a fee of $2,500.00 after 12 days", [quote]) == ["12", "2500.00"]
    assert unsupported_numbers("Delaware law", []) == []


def test_the_critique_checks_reject_low_support_first_then_unstated_numbers() -> None:
    quote = "Payment is due within thirty (30) days of invoice."
    assert answer_problem("within thirty (30) days of invoice", [quote], 0.5) is None
    assert "only 0% of the answer's words" in str(answer_problem("77 Kelvin", [quote], 0.5))
    # every word but the number is in the quote: support alone (0.75) would let it through
    assert answer_support("within sixty days of invoice", [quote]) >= 0.5
    assert answer_problem("within sixty days of invoice", [quote], 0.5) == (
        "the answer states 60, which its cited passages do not"
    )
