"""models.embedder_backend: torch-bf16, the real MiniLM in bfloat16 (sentence-transformers on torch)."""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import pytest

from conftest import EXAMPLES, make_config


def _sentences(n: int = 48) -> list[str]:
    text = (EXAMPLES / "loan_agreement.txt").read_text(encoding="utf-8")
    sents = [s.strip() for s in re.split(r"(?<=[.;:])\s+", text) if len(s.strip()) > 40]
    return [*sents[:n], " ".join(sents[:40])]  # and one longer than MiniLM's 256 tokens


def test_bf16_vectors_match_fp32_and_keep_their_own_name(embedder: Any, tmp_path: Any) -> None:
    from rolora.models import embedder_name
    from rolora.retrieval import Retriever, make_embedder

    bf16 = make_embedder("all-minilm-l6-v2", backend="torch-bf16")
    assert bf16.name == "all-minilm-l6-v2+torch-bf16" == embedder_name("all-minilm-l6-v2", backend="torch-bf16")
    assert bf16 is make_embedder("all-minilm-l6-v2", backend="torch-bf16") and bf16 is not embedder
    texts = _sentences()
    ref, got = embedder.embed(texts), bf16.embed(texts, batch_size=16)
    assert got.shape == ref.shape and got.dtype == np.float32 and got.flags["C_CONTIGUOUS"]
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalised again in float32
    cos = (got * ref).sum(1)
    assert cos.mean() >= 0.995 and cos.min() >= 0.98, (cos.mean(), cos.min())
    assert not np.array_equal(got, ref), "the bf16 backend ran in float32"
    # the nearest sentences are the same whichever precision embedded them
    assert (np.argsort(-(ref @ ref[0]))[:2] == np.argsort(-(got @ got[0]))[:2]).all()
    assert bf16.embed([]).shape == (0, embedder.dim)

    # an index embedded in float32 is refused by the bf16 backend until rebuilt, and rebuilt it re-embeds everything
    from rolora.errors import IndexError_

    cfg = make_config(tmp_path / "home", nda={"corpus": [str(EXAMPLES / "nda_mutual.txt")]})
    Retriever("nda", cfg, embedder).ingest(progress=False)
    cfg.models.embedder_backend = "torch-bf16"
    r = Retriever("nda", cfg, bf16)
    with pytest.raises(IndexError_, match=r"embedded with 'all-minilm-l6-v2', not 'all-minilm-l6-v2\+torch-bf16'"):
        r.ingest(progress=False)
    rep = r.ingest(rebuild=True, progress=False)
    assert rep.embedded == rep.chunks_total > 0
    hits = r.search("Which law governs the agreement?", k=3)
    assert hits and any("law" in h.text.lower() for h in hits)
    r.close()


@pytest.mark.parametrize("units", [False, True])
def test_bf16_on_a_cpu_without_bf16_units_says_so_in_one_line(
    units: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # torch emulates bf16 there: the real MiniLM embedded 0.16x as fast as fp32 on an AMD EPYC without AVX-512
    import rolora.hardware
    from rolora.retrieval.embedder import SentenceTransformerEmbedder

    monkeypatch.setattr(rolora.hardware, "cpu_has_bf16_units", lambda *a: units)
    with caplog.at_level(logging.WARNING, logger="rolora.retrieval.embedder"):
        emb = SentenceTransformerEmbedder("all-minilm-l6-v2", bf16=True)
    assert emb.embed(["Governing law."]).shape == (1, emb.dim)
    warned = [r.getMessage() for r in caplog.records if "embedder_backend" in r.getMessage()]
    if units:
        assert warned == []
    else:
        assert len(warned) == 1 and "\n" not in warned[0]
        assert "set models.embedder_backend: torch" in warned[0]
