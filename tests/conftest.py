"""Shared fixtures: the real MiniLM embedder, real FAISS/BM25 indexes in real SQLite files, the real CUAD data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "contracts"
CUAD_DIR = Path(os.environ.get("ROLORA_CUAD_DIR", REPO.parent / "shared" / "data" / "cuad"))
# Session indexes and the prepared model live here so that local re-runs reuse the embedding cache.
TEST_HOME = Path(os.environ.get("ROLORA_TEST_HOME", REPO / ".rolora" / "test-home"))


def make_config(home: Path, **domains: dict[str, Any]) -> Any:
    from rolora.config import Config

    return Config.model_validate({"home": str(home), "domains": domains})


@pytest.fixture(scope="session")
def embedder() -> Any:
    from rolora.retrieval import make_embedder

    return make_embedder("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def examples_retriever(embedder: Any) -> Any:
    from rolora.retrieval import Retriever

    cfg = make_config(TEST_HOME, contracts={"corpus": [str(EXAMPLES)], "exclude": ["qa*.jsonl"]})
    r = Retriever(domain="contracts", config=cfg, embedder=embedder)
    r.ingest(progress=False)
    return r


@pytest.fixture(scope="session")
def cuad_dir() -> Path:
    if not (CUAD_DIR / "qa.jsonl").is_file():
        pytest.skip(f"CUAD data not found at {CUAD_DIR} (set ROLORA_CUAD_DIR)")
    return CUAD_DIR


@pytest.fixture(scope="session")
def cuad_retriever(embedder: Any, cuad_dir: Path) -> Any:
    from rolora.retrieval import Retriever

    cfg = make_config(TEST_HOME, cuad={"corpus": [str(cuad_dir / "contracts")]})
    r = Retriever(domain="cuad", config=cfg, embedder=embedder)
    report = r.ingest(progress=False)
    assert report.chunks_total > 20000
    return r
