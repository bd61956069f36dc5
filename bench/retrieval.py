"""Retrieval benchmark: quality on unseen CUAD contracts, and speed against the raw encoder + FAISS and LangChain.

    .venv/bin/python bench/retrieval.py --quality [--work /tmp/rolora-quality] [--chunk-sizes 1000,500] \
        [--tuned tuned:cuad-retriever [--reranker-minutes 13]]    # $ROLORA_HOME holds the tuned embedder
    .venv/bin/python bench/retrieval.py --cuad-full [--work DIR]    # all 401 contracts, the fixed 100-contract sample
    .venv/bin/python bench/retrieval.py [--chunks 50000] [--queries 200] [--ingest-chunks 1000]
    .venv/bin/python bench/retrieval.py --embedder tuned:cuad-retriever [--max-contracts 25]   # base vs tuned
    .venv/bin/python bench/retrieval.py --only backends --ingest-chunks 400 --max-contracts 25  # every backend

Quality (``--quality``): character-level span recall (LegalBench-RAG's definition, overlapping passages merged) of
CUAD questions on the contracts of the test split of ``rolora.adapters.data.doc_split`` (never used for tuning),
with the index built from those contracts only; one cumulative row per improvement (contract resolution,
contextual chunks, stemmed BM25 with fusion weights chosen on the validation split; with ``--tuned``: the tuned
embedder with its fusion re-chosen on validation, and with ``--reranker-minutes`` a cross-encoder trained from MiniLM
on the train split, its use (top 10/20, alone or fused with the first stage) chosen on validation), unscoped and
scoped to the right contract. Indexes and embeddings are cached under ``--work``: a second run embeds nothing.

Full corpus (``--cuad-full``): all 401 contracts in one index (~31k chunks: 17 to 25 minutes of MiniLM on 2 idle
cores, then cached under ``--work``), span recall on the fixed sample of 100 contracts (seed 0; 1,111 answerable
questions) without and with contract resolution. Last measured before contract resolution and contextual chunks
(1000-character chunks, unstemmed BM25, RRF 1:1): hybrid @5 0.349, @20 0.531 (dense and lexical below it).

Speed: prints ratios measured in one run (these machines are noisy; compare ratios, not absolute times).

Search: a synthetic corpus of ``--chunks`` contract-like chunks. Their vectors are random unit vectors written
into rolora's embedding cache before the ingest (flat search time does not depend on the values, and embedding
50k chunks on 2 cores would take half an hour); queries are encoded for real by MiniLM in every contender.
Ingest: ``--ingest-chunks`` chunks embedded for real, through Retriever.ingest vs encode + FAISS add.
Index kinds: flat vs HNSW vs IVF search time and recall@10 against flat on random vectors, for the crossover.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

WORDS = (
    "agreement party licensor licensee supplier customer provider term renewal notice termination convenience "
    "cause breach cure payment invoice fee interest late cap liability indemnify indemnification claim loss "
    "damages consequential assignment consent change control confidential information disclosure warranty "
    "defect remedy audit records insurance coverage governing law courts venue arbitration delaware york "
    "texas england days months years thirty sixty ninety dollars pounds minimum purchase exclusive territory"
).split()


def synthetic_texts(n: int, seed: int = 0, words: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [f"{i}. " + " ".join(rng.choice(WORDS) for _ in range(words)) + "." for i in range(n)]


def p50(fn: Any, queries: list[str]) -> float:
    for q in queries[:5]:
        fn(q)
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _lc_embeddings(st: Any) -> Any:
    """LangChain ``Embeddings`` over the same SentenceTransformer, so the encoders are identical."""
    from langchain_core.embeddings import Embeddings

    class LCEmbeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return st.encode(texts, batch_size=64, normalize_embeddings=True).tolist()  # type: ignore[no-any-return]

        def embed_query(self, text: str) -> list[float]:
            return st.encode([text], normalize_embeddings=True)[0].tolist()  # type: ignore[no-any-return]

    return LCEmbeddings()


def write_corpus(folder: Path, texts: list[str], per_file: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(texts), per_file):
        (folder / f"d{i:06d}.txt").write_text("\n\n".join(texts[i : i + per_file]) + "\n")


def bench_search(n_chunks: int, n_queries: int, emb: Any) -> dict[str, float]:
    import faiss

    from rolora.retrieval import Retriever, chunk_document
    from rolora.retrieval.store import Store, text_hash

    from conftest import make_config

    tmp = Path(tempfile.mkdtemp(prefix="rolora-bench-"))
    texts = synthetic_texts(n_chunks, words=100)  # ~700 chars: one chunk each (two never fit in 1000)
    write_corpus(tmp / "corpus", texts, per_file=50)
    cfg = make_config(tmp / "home", bench={"corpus": [str(tmp / "corpus")]})
    # pre-fill the embedding cache with random unit vectors for every chunk the ingest will make
    store = Store(tmp / "home" / "indexes" / "bench" / "store.sqlite")
    rng = np.random.default_rng(0)
    from rolora.retrieval.chunking import ChunkingOptions

    opts = ChunkingOptions(
        cfg.retrieval.chunk_max_chars, cfg.retrieval.chunk_min_chars, cfg.retrieval.chunk_overlap_words
    )
    chunk_texts = []
    for f in sorted((tmp / "corpus").iterdir()):
        chunk_texts += [c.text for c in chunk_document(f.stem, f.read_text(), opts)]
    vecs = rng.standard_normal((len(chunk_texts), emb.dim)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    store.put_embeddings(emb.name, [text_hash(t) for t in chunk_texts], vecs)
    store.close()
    r = Retriever("bench", cfg, emb)
    rep = r.ingest(progress=False)
    assert rep.embedded == 0, "cache pre-fill missed"
    print(f"search corpus: {rep.chunks_total} chunks in {rep.documents_added} files ({rep.seconds:.1f}s to index)")
    r.search("warm up", k=10)
    index = r._dense.index  # the very same FAISS index
    st = emb._model
    queries = [" ".join(random.Random(i).sample(WORDS, 6)) for i in range(n_queries)]

    def raw(q: str) -> Any:
        v = st.encode([q], normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
        return index.search(v, 10)

    out = {
        "raw encoder + FAISS": p50(raw, queries),
        "Retriever dense": p50(lambda q: r.search(q, k=10, mode="dense"), queries),
        "Retriever hybrid": p50(lambda q: r.search(q, k=10, mode="hybrid"), queries),
        "Retriever lexical": p50(lambda q: r.search(q, k=10, mode="lexical"), queries),
    }
    try:
        from langchain_community.docstore.in_memory import InMemoryDocstore
        from langchain_community.vectorstores import FAISS as LCFAISS

        lc_index = faiss.IndexFlatIP(emb.dim)
        ids, all_vecs = [], []
        for cid, (_c, _d, _s, _e, text, _h, th) in r.store.chunks_by_ids(list(r._lexical.ids)).items():
            ids.append((cid, text, th))
        hashes = [h for _, _, h in ids]
        all_vecs = r.store.get_embeddings(emb.name, hashes, emb.dim)
        lc_index.add(all_vecs)
        from langchain_core.documents import Document

        docstore = InMemoryDocstore({str(i): Document(page_content=t) for i, (_, t, _) in enumerate(ids)})
        lc = LCFAISS(_lc_embeddings(st), lc_index, docstore, {i: str(i) for i in range(len(ids))})
        out["LangChain FAISS"] = p50(lambda q: lc.similarity_search(q, k=10), queries)
    except ImportError:
        print("langchain-community is not installed (pip install -e '.[bench]'): LangChain row skipped")
    return out


def bench_ingest(n: int, emb: Any) -> dict[str, float]:
    import faiss

    from rolora.retrieval import Retriever

    from conftest import make_config

    texts = synthetic_texts(n, seed=1, words=50)
    tmp = Path(tempfile.mkdtemp(prefix="rolora-bench-ingest-"))
    write_corpus(tmp / "corpus", texts)
    st = emb._model
    st.encode(texts[:64], batch_size=64)  # warm up
    t = time.perf_counter()
    vecs = st.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True).astype(np.float32)
    index = faiss.IndexIDMap2(faiss.IndexFlatIP(emb.dim))
    index.add_with_ids(vecs, np.arange(n, dtype=np.int64))
    raw = n / (time.perf_counter() - t)
    cfg = make_config(tmp / "home", bench={"corpus": [str(tmp / "corpus")]})
    t = time.perf_counter()
    rep = Retriever("bench", cfg, emb).ingest(progress=False)
    ours = rep.chunks_total / (time.perf_counter() - t)
    out = {"raw encode + FAISS add": raw, "Retriever.ingest": ours}
    try:
        from langchain_community.vectorstores import FAISS as LCFAISS

        t = time.perf_counter()
        LCFAISS.from_texts(texts, _lc_embeddings(st))
        out["LangChain FAISS.from_texts"] = n / (time.perf_counter() - t)
    except ImportError:
        pass
    return out


def _clustered_vectors(dim: int, n: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """Real MiniLM vectors where a CUAD index exists (tests build it), jittered to reach ``n``; else random."""
    from rolora.retrieval.store import Store

    from conftest import TEST_HOME

    db = TEST_HOME / "indexes" / "cuad" / "store.sqlite"
    if db.is_file():
        store = Store(db)
        rows = store.db.execute("SELECT vector FROM embeddings LIMIT 40000").fetchall()
        store.close()
        real = np.stack([np.frombuffer(r[0], dtype=np.float32) for r in rows])
        reps = real[rng.integers(0, len(real), n)]
        base = reps + 0.05 * rng.standard_normal(reps.shape).astype(np.float32)
        source = f"{len(real)} real MiniLM vectors of CUAD chunks, jittered (sigma 0.05)"
    else:
        base = rng.standard_normal((n, dim)).astype(np.float32)
        source = "random unit vectors (no CUAD index found: run the tests first for real vectors)"
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    return base, source


def bench_index_kinds(dim: int, sizes: list[int], n_queries: int = 200) -> list[tuple[int, str, float, float]]:
    from rolora.retrieval.index import build_dense

    rng = np.random.default_rng(1)
    rows = []
    for n in sizes:
        base, source = _clustered_vectors(dim, n, rng)
        print(f"  {n} vectors: {source}")
        noise = rng.standard_normal((n_queries, dim)).astype(np.float32)
        q = base[rng.choice(n, n_queries, replace=False)] + 0.05 * noise
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        ids = np.arange(n, dtype=np.int64)
        truth = None
        for kind in ("flat", "hnsw", "ivf"):
            t = time.perf_counter()
            idx = build_dense(base, ids, kind, dim)  # type: ignore[arg-type]
            build = time.perf_counter() - t
            times, found = [], []
            for row in q:
                t = time.perf_counter()
                res = idx.search(row[None, :], 10)[0]
                times.append(time.perf_counter() - t)
                found.append({i for i, _ in res})
            if truth is None:
                truth = found
            recall = statistics.mean(len(a & b) / 10 for a, b in zip(found, truth, strict=True))
            rows.append((n, kind, statistics.median(times) * 1e3, recall))
            print(f"  {n:>7} {kind:<5} build {build:6.1f}s  search p50 {statistics.median(times) * 1e3:7.3f} ms  "
                  f"recall@10 vs flat {recall:.3f}")  # fmt: skip
    return rows


# -- retrieval quality on CUAD (bench --quality) ---------------------------------------------------------------------
CUAD_DIR = Path(os.environ.get("ROLORA_CUAD_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "cuad"))
KS = (1, 5, 20, 64)


@dataclass(frozen=True)
class Variant:
    """One cumulative row of the quality table: how the index is built and whether questions are resolved."""

    name: str
    resolve: bool
    contextual: bool
    stemmer: str
    chunk_max_chars: int = 1000
    dense_weight: float = 1.0
    lexical_weight: float = 1.0
    rrf_k: int = 60
    fusion: str = "rrf"
    embedder: str = "all-minilm-l6-v2"  # or a tuned embedder's canonical ref (tuned:NAME@N)
    rerank: tuple[str, int] | None = None  # (how, top n) of the trained cross-encoder, chosen on validation


def cuad_questions(split: str) -> list[dict[str, Any]]:
    """Answerable CUAD questions of the contracts in ``split`` of ``doc_split`` (the adapters' contract-level split)."""
    from rolora.adapters.data.base import doc_split

    rows = [json.loads(line) for line in (CUAD_DIR / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for r in rows if r["answerable"] and r["evidence"] and doc_split(r["doc_id"]) == split]


def split_contracts(split: str, max_contracts: int | None = None) -> list[str]:
    """The split's contract ids; a seeded sample of ``max_contracts`` of them when given."""
    from rolora.adapters.data.base import doc_split

    ids = sorted(f.stem for f in (CUAD_DIR / "contracts").glob("*.txt") if doc_split(f.stem) == split)
    if max_contracts is not None and max_contracts < len(ids):
        ids = sorted(random.Random(0).sample(ids, max_contracts))
    return ids


def split_corpus(split: str, work: Path, max_contracts: int | None = None) -> Path:
    """A folder of symlinks to the split's contracts (CUAD stays where it is; nothing is copied)."""
    folder = work / f"corpus-{split}" if max_contracts is None else work / f"corpus-{split}-{max_contracts}"
    folder.mkdir(parents=True, exist_ok=True)
    for doc_id in split_contracts(split, max_contracts):
        if not (folder / f"{doc_id}.txt").exists():
            (folder / f"{doc_id}.txt").symlink_to(CUAD_DIR / "contracts" / f"{doc_id}.txt")
    return folder


def open_variant(
    v: Variant, split: str, work: Path, emb: Any, max_contracts: int | None = None
) -> tuple[Any, float | None]:
    """The variant's index of the split's contracts (built once, cached under ``work``) and its ingest chunks/s."""
    import hashlib

    from rolora.config import Config
    from rolora.models import split_embedder_name
    from rolora.retrieval import Retriever

    sample = "" if max_contracts is None else f"-{max_contracts}"
    domain = f"{split}{sample}-c{v.chunk_max_chars}-{'ctx' if v.contextual else 'plain'}"  # stemmer: BM25 rebuild
    if emb.name != "all-minilm-l6-v2":  # another embedder or backend (--embedder, --only backends): its own index
        domain += "-e" + hashlib.sha256(emb.name.encode()).hexdigest()[:8]
    spec, backend = split_embedder_name(emb.name)  # all-minilm-l6-v2+onnx-int8: the model and its backend
    cfg = Config.model_validate(
        {
            "home": str(work / "home"),
            "models": {"embedder": spec, "embedder_backend": backend},
            "retrieval": {
                "chunk_max_chars": v.chunk_max_chars,
                "contextual": v.contextual,
                "stemmer": v.stemmer,
                "resolve": v.resolve,
                "dense_weight": v.dense_weight,
                "lexical_weight": v.lexical_weight,
                "rrf_k": v.rrf_k,
                "fusion": v.fusion,
            },
            "domains": {domain: {"corpus": [str(split_corpus(split, work, max_contracts))]}},
        }
    )
    rates_file = work / "ingest-rates.json"
    rates = json.loads(rates_file.read_text()) if rates_file.is_file() else {}
    r = Retriever(domain, cfg, emb)
    t = time.perf_counter()
    rep = r.ingest(progress=sys.stderr.isatty())
    if rep.embedded:
        rates[domain] = rep.chunks_total / (time.perf_counter() - t)
        rates_file.write_text(json.dumps(rates, indent=1))
    return r, rates.get(domain)


def _recalls(gold: list[tuple[str, int, int]], passages: list[Any]) -> list[float]:
    from rolora.evals.metrics import span_recall

    spans = [(p.doc_id, p.start, p.end) for p in passages]
    return [span_recall(gold, spans[:k]) or 0.0 for k in KS]


def rankings(r: Any, qs: list[dict[str, Any]], resolve: bool, scoped: bool) -> list[dict[str, Any]]:
    """Per question: the dense and lexical top 100 (inside the gold contract when ``scoped``, inside the resolved
    contracts when ``resolve`` finds any), the resolution, and the wall time of resolution + both searches."""
    out = []
    for q in qs:
        t = time.perf_counter()
        scope = r.resolve(q["question"]) if resolve and not scoped else []
        doc_ids = [q["doc_id"]] if scoped else ([d for d, _ in scope] or None)
        dense = r.search(q["question"], k=100, mode="dense", doc_ids=doc_ids)
        lexical = r.search(q["question"], k=100, mode="lexical", doc_ids=doc_ids)
        out.append({"q": q, "scope": scope, "dense": dense, "lexical": lexical, "s": time.perf_counter() - t})
    return out


def fused(row: dict[str, Any], weights: tuple[float, float], rrf_k: int, fusion: str = "rrf") -> list[Any]:
    """The hybrid ranking the Retriever would return, from the two rankings (the same fusion code)."""
    from rolora.retrieval import rrf_fuse_items
    from rolora.retrieval.retriever import convex_fuse_items

    ranked = [row["dense"], row["lexical"]]
    if fusion == "convex":
        return [p for p, _ in convex_fuse_items(ranked, lambda p: p.chunk_id, lambda p: p.score, weights)][:64]
    return [p for p, _ in rrf_fuse_items(ranked, lambda p: p.chunk_id, rrf_k, weights)][:64]


def score_rows(
    rows: list[dict[str, Any]], weights: tuple[float, float], rrf_k: int, fusion: str = "rrf"
) -> dict[str, list[list[float]]]:
    """mode -> per question [recall@1, @5, @20, @64]."""
    out: dict[str, list[list[float]]] = {"hybrid": [], "dense": [], "lexical": []}
    for row in rows:
        gold = [(e["doc_id"], e["start"], e["end"]) for e in row["q"]["evidence"]]
        out["hybrid"].append(_recalls(gold, fused(row, weights, rrf_k, fusion)))
        out["dense"].append(_recalls(gold, row["dense"]))
        out["lexical"].append(_recalls(gold, row["lexical"]))
    return out


def resolution_accuracy(rows: list[dict[str, Any]]) -> tuple[float, float, float]:
    """(accuracy when resolved: the gold contract among the candidates, share resolved, mean candidates)."""
    resolved = [r for r in rows if r["scope"]]
    if not resolved:
        return 0.0, 0.0, 0.0
    ok = sum(r["q"]["doc_id"] in {d for d, _ in r["scope"]} for r in resolved)
    return ok / len(resolved), len(resolved) / len(rows), statistics.mean(len(r["scope"]) for r in resolved)


def resolution_all_contracts(split: str) -> tuple[float, float, float, int]:
    """Resolution of ``split``'s questions against all 401 CUAD contracts (no embedding needed: profiles only)."""
    from rolora.config import RetrievalConfig
    from rolora.retrieval.profile import extract_profile
    from rolora.retrieval.resolve import DocResolver

    cfg = RetrievalConfig()
    files = sorted((CUAD_DIR / "contracts").glob("*.txt"))
    profiles = [extract_profile(f.stem, f.read_text(encoding="utf-8")) for f in files]
    resolver = DocResolver([p.doc_id for p in profiles], [p.search_text() for p in profiles], cfg.stemmer)
    rows = []
    for q in cuad_questions(split):
        scope = resolver.resolve(q["question"], cfg.resolve_min_score, cfg.resolve_ratio, cfg.resolve_max_candidates)
        rows.append({"q": q, "scope": scope})
    acc, share, cands = resolution_accuracy(rows)
    return acc, share, cands, len(files)


def tune_fusion(rows: list[dict[str, Any]]) -> tuple[str, tuple[float, float], int]:
    """Fusion (rrf or convex), weights and RRF k that maximise mean hybrid recall @1/@5/@20 on these (validation)
    rows, among the settings where hybrid is >= dense and >= lexical at each of them (else the best overall)."""
    grid: list[tuple[str, tuple[float, float], int]] = [
        ("rrf", (wd, 1.0), k) for k in (10, 30, 60) for wd in (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
    ]
    grid += [("convex", (a, round(1 - a, 2)), 60) for a in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)]
    best: tuple[bool, float, tuple[str, tuple[float, float], int]] | None = None
    for fusion, w, rrf_k in grid:
        s = score_rows(rows, w, rrf_k, fusion)
        means = {m: [statistics.mean(col) for col in zip(*v, strict=True)] for m, v in s.items()}
        obj = statistics.mean(means["hybrid"][:3])
        ok = all(means["hybrid"][i] >= max(means["dense"][i], means["lexical"][i]) for i in range(3))
        print(f"  {fusion:<6} k {rrf_k:>2} weights {w[0]:4.2f}:{w[1]:4.2f}: "
              f"hybrid {[round(x, 3) for x in means['hybrid']]} "
              f"dense {[round(x, 3) for x in means['dense']]} lexical {[round(x, 3) for x in means['lexical']]}"
              f"{'' if ok else '  (loses to a part)'}", flush=True)  # fmt: skip
        if best is None or (ok, obj) > best[:2]:
            best = (ok, obj, (fusion, w, rrf_k))
    assert best is not None
    return best[2]


def ensure_stemmer(r: Any, v: Variant) -> Any:
    """Rebuild the variant's BM25 when its stemmer differs from the index's (embeddings come from the cache)."""
    from rolora.retrieval.index import read_manifest

    m = read_manifest(r.dir)
    if m is not None and m.stemmer != v.stemmer:
        rep = r.ingest(rebuild=True, progress=False)
        assert rep.embedded == 0, "a stemmer change must not re-embed"
    return r


def _tuned_embedder(ref: str) -> tuple[str, Path]:
    """(canonical ref, model folder) of a tuned embedder registered under $ROLORA_HOME."""
    from rolora.embedder_registry import EmbedderRegistry
    from rolora.models import default_home

    canonical, folder = EmbedderRegistry.from_home(default_home()).resolve(ref)
    return canonical, folder


def _indexed_chunks(v: Variant, split: str, work: Path, max_contracts: int | None = None) -> dict[str, list[Any]]:
    """doc_id -> its chunks as the index embeds them (context line + exact text), chunked as the variant's index."""
    from rolora.adapters.embedder_tuning import domain_chunks
    from rolora.config import Config

    cfg = Config.model_validate(
        {
            "home": str(work / "home"),
            "retrieval": {"chunk_max_chars": v.chunk_max_chars, "contextual": v.contextual},
            "domains": {"d": {"corpus": [str(split_corpus(split, work, max_contracts))]}},
        }
    )
    return domain_chunks(cfg, "d")


def _indexed_texts(v: Variant, split: str, work: Path, max_contracts: int | None = None) -> dict[tuple[str, int], str]:
    """(doc_id, start) -> the chunk as the index embeds it, for the cross-encoder."""
    return {(c.doc_id, c.start): c.text for cs in _indexed_chunks(v, split, work, max_contracts).values() for c in cs}


def train_reranker(work: Path, v: Variant, minutes: float, steps: int = 150, batch: int = 32) -> Path:
    """A cross-encoder initialised from MiniLM (a fresh one-logit head), trained by sentence-transformers'
    ``CrossEncoderTrainer`` with ``BinaryCrossEntropyLoss`` on the CUAD train split: (question, gold chunk as indexed)
    -> 1, (question, the same contract's BM25-hardest non-evidence chunk) -> 0, (question, a random chunk of the same
    contract) -> 0; ``steps`` steps (the LR schedule spans them: ~5 s a step of 32 rows on 2 cores, so 150 fill 12
    minutes), stopped after ``minutes`` at most. Cached under ``work`` by a digest of its settings."""
    import hashlib

    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
    from transformers import TrainerCallback

    from rolora.adapters.data.base import doc_split, load_qa
    from rolora.adapters.embedder_tuning import build_pairs
    from rolora.models import resolve_embedder

    key = hashlib.sha256(json.dumps([v.chunk_max_chars, v.contextual, minutes, steps, batch]).encode()).hexdigest()
    out = work / f"reranker-{key[:10]}"
    if (out / "config.json").is_file():
        return out
    chunks = _indexed_chunks(v, "train", work)
    rows = [q for q in load_qa(CUAD_DIR / "qa.jsonl") if doc_split(q.doc_id) == "train"]
    rng = random.Random(0)
    pairs = build_pairs(rows, chunks, negatives="bm25", max_positives=1)
    qs, ps, ys = [], [], []
    for pr in pairs:
        qs += [pr.question, pr.question, pr.question]
        ps += [pr.positive, pr.negative or "", rng.choice(chunks[pr.doc_id]).text]
        ys += [1.0, 0.0, 0.0]
    print(f"  reranker: {len(pairs)} train-split pairs -> {len(qs)} labelled (question, chunk) rows", flush=True)
    model = CrossEncoder(str(resolve_embedder("all-minilm-l6-v2")), num_labels=1, max_length=320, device="cpu")
    t0 = time.perf_counter()

    class Budget(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            control.should_training_stop = time.perf_counter() - t0 >= minutes * 60
            return control

    args = CrossEncoderTrainingArguments(
        output_dir=str(work / "reranker-run"),
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=5e-5,
        warmup_steps=max(1, steps // 10),
        save_strategy="no",
        logging_steps=20,
        seed=0,
        use_cpu=True,
        report_to="none",
        disable_tqdm=not sys.stderr.isatty(),
    )
    data = Dataset.from_dict({"question": qs, "passage": ps, "label": ys}).shuffle(seed=0)
    trainer = CrossEncoderTrainer(
        model=model, args=args, train_dataset=data, loss=BinaryCrossEntropyLoss(model), callbacks=[Budget()]
    )
    trainer.train()
    print(f"  reranker: {trainer.state.global_step} steps of {batch} rows in {time.perf_counter() - t0:.0f} s",
          flush=True)  # fmt: skip
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    tmp.rename(out)
    return out


class Reranker:
    """Scores (question, chunk as indexed) with the trained cross-encoder; scores cached per (question, chunk)."""

    def __init__(self, folder: Path, texts: dict[tuple[str, int], str]) -> None:
        from sentence_transformers.cross_encoder import CrossEncoder

        self.model = CrossEncoder(str(folder), device="cpu", max_length=320)
        self.texts = texts
        self.cache: dict[tuple[str, str], float] = {}

    def score(self, rows: list[dict[str, Any]], ranked: list[list[Any]], n: int) -> None:
        todo = {
            (row["q"]["question"], p.chunk_id): self.texts.get((p.doc_id, p.start), p.text)
            for row, ps in zip(rows, ranked, strict=True)
            for p in ps[:n]
            if (row["q"]["question"], p.chunk_id) not in self.cache
        }
        if todo:
            keys = list(todo)
            scores = self.model.predict([(q, todo[(q, c)]) for q, c in keys], batch_size=32, show_progress_bar=False)
            self.cache.update(zip(keys, (float(x) for x in scores), strict=True))

    def rerank(self, question: str, ranked: list[Any], how: str, n: int) -> list[Any]:
        head, tail = ranked[:n], ranked[n:]
        ce = sorted(range(len(head)), key=lambda i: -self.cache[(question, head[i].chunk_id)])
        if how == "ce":
            order = ce
        else:  # "rrf": the cross-encoder's rank fused 1:1 with the first stage's (ties: first-stage order)
            from rolora.retrieval import rrf_fuse

            order = [i for i, _ in rrf_fuse([list(range(len(head))), ce], k=60)]
        return [head[i] for i in order] + tail


def score_reranked(rows: list[dict[str, Any]], v: Variant, rr: Reranker, how: str, n: int) -> list[list[float]]:
    """Per question [recall@1, @5, @20, @64] of the variant's hybrid ranking reranked (top ``n``)."""
    ranked = [fused(row, (v.dense_weight, v.lexical_weight), v.rrf_k, v.fusion) for row in rows]
    rr.score(rows, ranked, n)
    out = []
    for row, ps in zip(rows, ranked, strict=True):
        gold = [(e["doc_id"], e["start"], e["end"]) for e in row["q"]["evidence"]]
        out.append(_recalls(gold, rr.rerank(row["q"]["question"], ps, how, n)))
    return out


def bench_quality(
    work: Path,
    chunk_sizes: list[int],
    limit: int | None,
    max_contracts: int | None,
    tuned_ref: str | None = None,
    reranker_minutes: float = 0.0,
) -> None:
    from rolora.evals.bootstrap import bootstrap_mean
    from rolora.retrieval import make_embedder

    embs: dict[str, Any] = {"all-minilm-l6-v2": make_embedder("all-minilm-l6-v2")}
    work.mkdir(parents=True, exist_ok=True)
    val_qs = cuad_questions("validation")
    test_docs = set(split_contracts("test", max_contracts))
    test_qs = [q for q in cuad_questions("test") if q["doc_id"] in test_docs]
    if limit:
        val_qs, test_qs = val_qs[:limit], test_qs[:limit]
    n_val_docs = len({q["doc_id"] for q in val_qs})
    n_test_docs = len({q["doc_id"] for q in test_qs})
    print("== contract resolution against all CUAD contracts (profiles only; thresholds from the train split)")
    for split in ("validation", "test"):
        acc, share, cands, n = resolution_all_contracts(split)
        print(f"  {split}: {len(cuad_questions(split))} questions, {n} contracts: accuracy when resolved {acc:.3f}, "
              f"resolved {share:.3f}, mean candidates {cands:.2f}")  # fmt: skip

    print(f"== validation split ({len(val_qs)} questions, {n_val_docs} contracts): chunk size and fusion")
    best_size, best_r5 = chunk_sizes[0], -1.0
    tuned: tuple[str, tuple[float, float], int] = ("rrf", (1.0, 1.0), 60)
    for size in chunk_sizes:
        v = Variant("val", True, True, "english", size)
        r, _ = open_variant(v, "validation", work, embs[v.embedder])
        ensure_stemmer(r, v)
        rows = rankings(r, val_qs, resolve=True, scoped=False)
        print(f" chunk_max_chars {size}:")
        fusion, weights, rrf_k = tune_fusion(rows)
        s = score_rows(rows, weights, rrf_k, fusion)
        r5 = statistics.mean(x[1] for x in s["hybrid"])
        print(f"  -> {fusion} weights {weights}, rrf_k {rrf_k}: hybrid @5 {r5:.3f}", flush=True)
        if r5 > best_r5:
            best_size, best_r5, tuned = size, r5, (fusion, weights, rrf_k)
    fusion, (wd, wl), rrf_k = tuned
    print(f"  chosen: chunk_max_chars {best_size}, {fusion} fusion, weights {wd}:{wl}, rrf_k {rrf_k}", flush=True)

    variants = [
        Variant("base (1000-char chunks, RRF 1:1, unstemmed BM25)", False, False, "none"),
        Variant("+ contract resolution", True, False, "none"),
        Variant("+ contextual chunks", True, True, "none"),
        Variant("+ stemmed BM25 (RRF 1:1)", True, True, "english"),
    ]
    if (fusion, wd, wl, rrf_k) != ("rrf", 1.0, 1.0, 60):
        name = f"+ {fusion} fusion {wd:g}:{wl:g}" + (f" k={rrf_k}" if fusion == "rrf" else "")
        variants.append(Variant(name, True, True, "english", 1000, wd, wl, rrf_k, fusion))
    if best_size != 1000:
        variants.append(Variant(f"+ {best_size}-char chunks", True, True, "english", best_size, wd, wl, rrf_k, fusion))
    if tuned_ref:
        canonical, folder = _tuned_embedder(tuned_ref)
        embs[tuned_ref] = make_embedder(str(folder))
        last = variants[-1]
        v = Variant("val", True, True, "english", last.chunk_max_chars, embedder=tuned_ref)
        r, _ = open_variant(v, "validation", work, embs[tuned_ref])
        ensure_stemmer(r, v)
        print(f" {canonical}, chunk_max_chars {last.chunk_max_chars}: fusion re-tuned on validation", flush=True)
        val_rows = rankings(r, val_qs, resolve=True, scoped=False)
        fusion, (wd, wl), rrf_k = tune_fusion(val_rows)
        how = f"{fusion} {wd:g}:{wl:g}" + (f" k={rrf_k}" if fusion == "rrf" else "")
        tuned_name = f"+ tuned embedder {canonical} ({how})"
        fields = {"dense_weight": wd, "lexical_weight": wl, "rrf_k": rrf_k, "fusion": fusion}
        variants.append(replace(last, name=tuned_name, embedder=tuned_ref, **fields))
        if reranker_minutes > 0:
            folder = train_reranker(work, variants[-1], reranker_minutes)
            rr = Reranker(folder, _indexed_texts(variants[-1], "validation", work))
            first = statistics.mean(x[1] for x in score_rows(val_rows, (wd, wl), rrf_k, fusion)["hybrid"])
            print(f"  reranker on validation (first stage hybrid @5 {first:.3f}):", flush=True)
            best_rr: tuple[float, tuple[str, int]] | None = None
            for n in (10, 20):
                for rr_how in ("ce", "rrf"):
                    r5 = statistics.mean(x[1] for x in score_reranked(val_rows, variants[-1], rr, rr_how, n))
                    print(f"    {rr_how} top {n}: @5 {r5:.3f}", flush=True)
                    if best_rr is None or r5 > best_rr[0]:
                        best_rr = (r5, (rr_how, n))
            assert best_rr is not None
            rr_name = f"+ reranker (cross-encoder, {best_rr[1][0]} over top {best_rr[1][1]})"
            variants.append(replace(variants[-1], name=rr_name, rerank=best_rr[1]))
            print(f"  chosen: {best_rr[1]} (validation @5 {best_rr[0]:.3f} vs {first:.3f} without)", flush=True)
    print(f"== test split: {len(test_qs)} questions on {n_test_docs} contracts (the corpus: the test split's "
          f"{len(test_docs)} contracts only{'' if max_contracts is None else ', a seeded sample'})")  # fmt: skip
    table = []
    cache: dict[tuple[Any, ...], Any] = {}
    for v in variants:
        r, rate = open_variant(v, "test", work, embs[v.embedder], max_contracts)
        ensure_stemmer(r, v)
        key = (v.embedder, v.chunk_max_chars, v.contextual, v.stemmer, v.resolve)
        if key not in cache:  # a reranked row reuses its first stage's rankings
            cache[key] = (rankings(r, test_qs, resolve=v.resolve, scoped=False),
                          rankings(r, test_qs, resolve=False, scoped=True))  # fmt: skip
        rows, scoped = cache[key]
        w = (v.dense_weight, v.lexical_weight)
        s, ss = score_rows(rows, w, v.rrf_k, v.fusion), score_rows(scoped, w, v.rrf_k, v.fusion)
        rr_ms = 0.0
        if v.rerank is not None:
            rr = Reranker(train_reranker(work, v, reranker_minutes), _indexed_texts(v, "test", work, max_contracts))
            t = time.perf_counter()
            s["hybrid"] = score_reranked(rows, v, rr, *v.rerank)
            rr_ms = (time.perf_counter() - t) / len(rows) * 1e3  # scoring all top-n pairs of a question, per question
            ss["hybrid"] = score_reranked(scoped, v, rr, *v.rerank)
        times = []
        for q in test_qs[:200]:
            t = time.perf_counter()
            scope = r.resolve(q["question"]) if v.resolve else []
            r.search(q["question"], k=5, doc_ids=[d for d, _ in scope] or None)
            times.append(time.perf_counter() - t)
        res_acc = resolution_accuracy(rows) if v.resolve else None
        ci = bootstrap_mean([x[1] for x in s["hybrid"]], samples=2000, seed=0)
        sci = bootstrap_mean([x[1] for x in ss["hybrid"]], samples=2000, seed=0)
        table.append((v, s, ss, res_acc, rate, statistics.median(times) * 1e3 + rr_ms, ci, sci))
        print(
            f"  {v.name}: unscoped hybrid @5 {ci.fmt()}, scoped @5 {sci.fmt()}  dense/lexical @5 "
            f"{statistics.mean(x[1] for x in s['dense']):.3f}/{statistics.mean(x[1] for x in s['lexical']):.3f}",
            flush=True,
        )
    print()
    print(f"n = {len(test_qs)} questions on {n_test_docs} test-split contracts; hybrid search; 95 % bootstrap CIs")
    print("| | unscoped @1 | @5 | @20 | @64 | scoped @1 | @5 | @20 | @64 | resolution | ingest chunks/s | p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for v, s, ss, racc, rate, p50ms, ci, sci in table:
        u = [statistics.mean(col) for col in zip(*s["hybrid"], strict=True)]
        sc = [statistics.mean(col) for col in zip(*ss["hybrid"], strict=True)]
        res = "–" if racc is None else f"{racc[0]:.3f} ({racc[1]:.0%} resolved)"
        print(f"| {v.name} | {u[0]:.3f} | {ci.fmt()} | {u[2]:.3f} | {u[3]:.3f} | "
              f"{sc[0]:.3f} | {sci.fmt()} | {sc[2]:.3f} | {sc[3]:.3f} | {res} | "
              f"{'–' if rate is None else f'{rate:.0f}'} | {p50ms:.1f} |")  # fmt: skip
    for v, s, *_ in table[-2:] if tuned_ref else table[-1:]:
        for mode in ("dense", "lexical"):
            m = [statistics.mean(col) for col in zip(*s[mode], strict=True)]
            at = " ".join(f"@{k} {x:.3f}" for k, x in zip(KS, m, strict=True))
            print(f"  {v.name}, {mode} alone (unscoped): {at}")


def _chunk_recalls(r: Any, q: dict[str, Any], passages: list[Any], gold_of: dict[str, set[str]]) -> list[float]:
    """Share of the chunks that overlap the evidence found in the top k, for k in KS."""
    key = q["id"]
    if key not in gold_of:
        spans = [(e["start"], e["end"]) for e in q["evidence"] if e["doc_id"] == q["doc_id"]]
        gold_of[key] = {
            p.chunk_id for p in r.document_chunks(q["doc_id"]) if any(p.start < e and s < p.end for s, e in spans)
        }
    gold = gold_of[key]
    return [len(gold & {p.chunk_id for p in passages[:k]}) / len(gold) if gold else 0.0 for k in KS]


def bench_embedders(work: Path, ref: str, limit: int | None, max_contracts: int | None) -> None:
    """Base MiniLM vs a tuned embedder (``rolora retriever tune``) on the test split: span and chunk recall of dense
    and hybrid search (contextual chunks, stemmed BM25, RRF 1:1), unscoped with contract resolution and scoped to the
    right contract; 95 % bootstrap CIs of @5 and of the paired tuned - base difference."""
    from rolora.evals.bootstrap import bootstrap_mean, paired_bootstrap
    from rolora.retrieval import make_embedder

    test_docs = set(split_contracts("test", max_contracts))
    test_qs = [q for q in cuad_questions("test") if q["doc_id"] in test_docs]
    if limit:
        test_qs = test_qs[:limit]
    sampled = "" if max_contracts is None else " (a seeded sample)"
    n_docs = len({q["doc_id"] for q in test_qs})
    print(f"== base vs {ref}: test split, {len(test_qs)} questions on {n_docs} contracts{sampled}")
    v = Variant("+ stemmed BM25 (RRF 1:1)", True, True, "english")
    per: dict[str, list[list[float]]] = {}
    canonical = ref
    for label in ("base", "tuned"):
        spec = "all-minilm-l6-v2"
        if label == "tuned":  # looked up after the base index is built: a tuning run may still be registering it
            canonical, folder = _tuned_embedder(ref)
            spec = str(folder)
            print(f"  tuned: {canonical} ({folder})")
        emb = make_embedder(spec)
        t = time.perf_counter()
        r, rate = open_variant(v, "test", work, emb, max_contracts)
        ensure_stemmer(r, v)
        print(
            f"  {label}: index ready in {time.perf_counter() - t:.0f} s (ingest {rate or 0:.1f} chunks/s)", flush=True
        )
        gold_of: dict[str, set[str]] = {}
        for scope, rows in (
            ("unscoped", rankings(r, test_qs, True, False)),
            ("scoped", rankings(r, test_qs, False, True)),
        ):
            s = score_rows(rows, (1.0, 1.0), 60)
            for mode in ("hybrid", "dense"):
                per[f"{label} {mode} {scope} span"] = s[mode]
                ranked = [fused(row, (1.0, 1.0), 60) if mode == "hybrid" else row["dense"] for row in rows]
                per[f"{label} {mode} {scope} chunk"] = [
                    _chunk_recalls(r, row["q"], p, gold_of) for row, p in zip(rows, ranked, strict=True)
                ]
    print()
    print("| embedder | search | recall | @1 | @5 [95 % CI] | @20 | tuned - base @5 [95 % CI] |")
    print("|---|---|---|---|---|---|---|")
    for scope in ("unscoped", "scoped"):
        for mode in ("hybrid", "dense"):
            for kind in ("span", "chunk"):
                for label in ("base", "tuned"):
                    vals = per[f"{label} {mode} {scope} {kind}"]
                    m = [statistics.mean(col) for col in zip(*vals, strict=True)]
                    ci = bootstrap_mean([x[1] for x in vals], samples=2000, seed=0)
                    diff = "–"
                    if label == "tuned":
                        base5 = [x[1] for x in per[f"base {mode} {scope} {kind}"]]
                        diff = paired_bootstrap(base5, [x[1] for x in vals], samples=2000, seed=0).fmt()
                    name = "MiniLM" if label == "base" else canonical
                    print(f"| {name} | {mode}, {scope} | {kind} | {m[0]:.3f} | {ci.fmt()} | {m[2]:.3f} | {diff} |")
    print(f"n = {len(test_qs)} questions")


BACKENDS = ("torch", "torch-bf16", "onnx", "onnx-int8", "openvino-int8")


def runnable_backends() -> tuple[str, ...]:
    """The backends this CPU runs (openvino-int8 is refused without int8 dot-product units, VNNI/AMX)."""
    from rolora.retrieval.embedder import backend_refused_here

    return tuple(b for b in BACKENDS if backend_refused_here(b) is None)


def bench_backends(n: int, rounds: int, work: Path, max_contracts: int | None, limit: int | None) -> None:
    """MiniLM on torch (float32, and bfloat16) vs its ONNX export (float32, dynamic int8) run by onnxruntime:
    Retriever.ingest chunks/s of ``n`` synthetic chunks and embedding rate of real 1000-character CUAD chunks, the
    backends interleaved ``rounds`` times (best round kept: the cores are shared), as ratios against torch; then span
    recall @1/@5/@20 (hybrid and dense, unscoped with contract resolution) on a seeded sample of ``max_contracts``
    test-split CUAD contracts, one index per backend (cached under ``work``), with the paired bootstrap CI of each
    backend's difference from torch."""
    from rolora.evals.bootstrap import paired_bootstrap
    from rolora.models import default_home
    from rolora.retrieval import Retriever, make_embedder

    from conftest import make_config

    t = time.perf_counter()
    backends = runnable_backends()
    if backends != BACKENDS:
        print(f"  (not on this CPU: {', '.join(b for b in BACKENDS if b not in backends)})")
    embs = {b: make_embedder("all-minilm-l6-v2", backend=b, home=default_home()) for b in backends}
    print(f"== embedder backends (ONNX exports under {default_home() / 'models' / 'onnx'}; ready in "
          f"{time.perf_counter() - t:.0f} s)")  # fmt: skip
    texts = synthetic_texts(n, seed=1, words=50)
    tmp = Path(tempfile.mkdtemp(prefix="rolora-bench-backends-"))
    write_corpus(tmp / "corpus", texts)
    best = dict.fromkeys(backends, 0.0)
    for i in range(rounds):
        for b, emb in embs.items():
            emb.embed(texts[:64])  # warm up
            cfg = make_config(tmp / f"home-{b}-{i}", bench={"corpus": [str(tmp / "corpus")]})
            cfg.models.embedder_backend = b
            t = time.perf_counter()
            rep = Retriever("bench", cfg, emb).ingest(progress=False)
            best[b] = max(best[b], rep.chunks_total / (time.perf_counter() - t))
    print(f"  ingest, {n} chunks embedded for real, best of {rounds} interleaved rounds:")
    for b in backends:
        print(f"  {b:<13} {best[b]:8.1f} chunks/s   ratio vs torch {best[b] / best['torch']:5.2f}x")

    test_docs = set(split_contracts("test", max_contracts))
    test_qs = [q for q in cuad_questions("test") if q["doc_id"] in test_docs]
    if limit:
        test_qs = test_qs[:limit]
    n_docs = len({q["doc_id"] for q in test_qs})
    print(f"  span recall, test split: {len(test_qs)} questions on {n_docs} contracts"
          f"{'' if max_contracts is None else ' (a seeded sample)'}, unscoped with contract resolution")  # fmt: skip
    v = Variant("+ stemmed BM25 (RRF 1:1)", True, True, "english")
    rows: dict[str, dict[str, list[list[float]]]] = {}
    real: list[str] = []
    for b, emb in embs.items():
        r, rate = open_variant(v, "test", work, emb, max_contracts)
        ensure_stemmer(r, v)
        rows[b] = score_rows(rankings(r, test_qs, True, False), (1.0, 1.0), 60)
        print(f"  {b}: index of {r.store.chunk_count()} chunks (ingest {rate or 0:.1f} chunks/s)", flush=True)
        real = real or r.store.all_chunks()[1][: min(n, 256)]
    fast = dict.fromkeys(backends, 0.0)
    for _ in range(rounds):  # the CUAD chunks themselves (up to 1000 characters: longer than the synthetic ones)
        for b, emb in embs.items():
            emb.embed(real[:16], batch_size=64)  # warm up
            t = time.perf_counter()
            emb.embed(real, batch_size=64)
            fast[b] = max(fast[b], len(real) / (time.perf_counter() - t))
    print(f"  embedding {len(real)} CUAD chunks, best of {rounds}: "
          + ", ".join(f"{b} {fast[b]:.1f}/s ({fast[b] / fast['torch']:.2f}x)" for b in backends))  # fmt: skip
    print()
    cols = [(mode, k) for mode in ("hybrid", "dense") for k in range(3)]

    def mean(b: str, mode: str, k: int) -> float:
        return statistics.mean(x[k] for x in rows[b][mode])

    print("| backend | ingest, 50-word chunks | 1000-char CUAD chunks | hybrid @1 | @5 | @20 | dense @1 | @5 | @20 "
          "| largest recall change vs torch (paired 95 % CI) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    for b in backends:
        diffs = [(mean(b, m, k) - mean("torch", m, k), m, k) for m, k in cols]
        d, m, k = max(diffs, key=lambda x: abs(x[0]))
        ci = paired_bootstrap([x[k] for x in rows["torch"][m]], [x[k] for x in rows[b][m]], samples=2000, seed=0)
        label = f"{m} @{KS[k]}: {ci.fmt()}"
        print(f"| {b} | {best[b] / best['torch']:.2f}x | {fast[b] / fast['torch']:.2f}x | "
              + " | ".join(f"{mean(b, mm, kk):.3f}" for mm, kk in cols) + f" | {label} |")  # fmt: skip
        if b != "torch":
            fast_enough = fast[b] / fast["torch"] >= 2.5 and best[b] / best["torch"] >= 2.5
            worst = min(x[0] for x in diffs)
            ok, no_loss = fast_enough and abs(d) <= 0.01, fast_enough and worst >= -0.01
            verdicts.append(f"{b} {'meets' if ok else 'misses'} it (at speed with no recall lower by "
                            f"more than 0.01: {'yes' if no_loss else 'no'}; largest loss {worst:+.3f})")  # fmt: skip
    print(f"n = {len(test_qs)} questions; goal: ingest >= 2.5x torch with every recall within 0.01 of torch: "
          + "; ".join(verdicts))  # fmt: skip
    print("every recall change vs torch, paired 95 % CI:")
    for b in backends[1:]:
        pairs = [(m, k, [x[k] for x in rows["torch"][m]], [x[k] for x in rows[b][m]]) for m, k in cols]
        cis = [f"{m} @{KS[k]} {paired_bootstrap(t, c, samples=2000, seed=0).fmt()}" for m, k, t, c in pairs]
        print(f"  {b}: " + ", ".join(cis))


def bench_cuad_full(work: Path) -> None:
    """All 401 CUAD contracts in one index; hybrid/dense/lexical span recall on the fixed sample of 100 contracts
    (seed 0) that tests/test_cuad_retrieval.py used; the index is cached under ``work``."""
    import random as _random

    from rolora.config import Config
    from rolora.retrieval import Retriever, make_embedder

    rows = [json.loads(line) for line in (CUAD_DIR / "qa.jsonl").read_text(encoding="utf-8").splitlines()]
    docs = sorted({r["doc_id"] for r in rows})
    chosen = set(_random.Random(0).sample(docs, 100))
    qs = [r for r in rows if r["doc_id"] in chosen and r["answerable"]]
    cfg = Config.model_validate(
        {"home": str(work / "home"), "domains": {"cuad": {"corpus": [str(CUAD_DIR / "contracts")]}}}
    )
    r = Retriever("cuad", cfg, make_embedder("all-minilm-l6-v2"))
    r.ingest(progress=sys.stderr.isatty())
    for resolve in (False, True):
        res = rankings(r, qs, resolve=resolve, scoped=False)
        s = score_rows(res, (cfg.retrieval.dense_weight, cfg.retrieval.lexical_weight), cfg.retrieval.rrf_k)
        label = "with contract resolution" if resolve else "unscoped, no resolution"
        for mode, vals in s.items():
            m = [statistics.mean(col) for col in zip(*vals, strict=True)]
            print(f"  CUAD 401 contracts, {len(qs)} questions, {label}, {mode}: "
                  + " ".join(f"@{k} {x:.3f}" for k, x in zip(KS, m, strict=True)))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ingest-chunks", type=int, default=1000)
    ap.add_argument("--kinds-sizes", default="50000,200000")
    ap.add_argument("--only", choices=["search", "ingest", "kinds", "backends"], help="run one part")
    ap.add_argument("--rounds", type=int, default=2, help="--only backends: interleaved ingest rounds (best kept)")
    ap.add_argument("--quality", action="store_true", help="span recall on the CUAD test split (see above)")
    ap.add_argument("--cuad-full", action="store_true", help="span recall with all 401 CUAD contracts indexed")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "rolora-quality")
    ap.add_argument("--chunk-sizes", default="1000", help="chunk_max_chars values compared on the validation split")
    ap.add_argument("--limit", type=int, default=None, help="questions per split (quick runs)")
    ap.add_argument("--max-contracts", type=int, default=None, help="a seeded sample of the test split's contracts")
    ap.add_argument("--embedder", metavar="REF", help="base vs this tuned embedder (tuned:NAME[@N]) on the test split")
    ap.add_argument("--tuned", metavar="REF", help="--quality: add the rows of this tuned embedder (tuned:NAME[@N])")
    ap.add_argument("--reranker-minutes", type=float, default=0.0, help="--quality --tuned: train a cross-encoder "
                    "for this many minutes and add its row (0: no reranker row)")  # fmt: skip
    args = ap.parse_args()
    if args.embedder:
        bench_embedders(args.work, args.embedder, args.limit, args.max_contracts)
        return
    if args.quality or args.cuad_full:
        if args.quality:
            bench_quality(
                args.work,
                [int(x) for x in args.chunk_sizes.split(",")],
                args.limit,
                args.max_contracts,
                args.tuned,
                args.reranker_minutes,
            )
        if args.cuad_full:
            bench_cuad_full(args.work)
        return

    if args.only == "backends":
        bench_backends(args.ingest_chunks, args.rounds, args.work, args.max_contracts, args.limit)
        return
    from rolora.retrieval import make_embedder

    emb = make_embedder("all-minilm-l6-v2")
    if args.only in (None, "search"):
        print(f"== search p50 over {args.queries} queries, k=10")
        s = bench_search(args.chunks, args.queries, emb)
        raw = s["raw encoder + FAISS"]
        for name, v in s.items():
            print(f"  {name:<22} {v * 1e3:8.2f} ms   ratio vs raw {v / raw:5.2f}x")
        dense, hybrid = s["Retriever dense"] / raw, s["Retriever hybrid"] / raw
        print(f"  goals: dense <= 1.15x ({dense:.2f}x), hybrid <= 1.5x ({hybrid:.2f}x)")
    if args.only in (None, "ingest"):
        print(f"== ingest throughput, {args.ingest_chunks} chunks embedded for real")
        ing = bench_ingest(args.ingest_chunks, emb)
        base = ing["raw encode + FAISS add"]
        for name, v in ing.items():
            print(f"  {name:<26} {v:8.1f} chunks/s   ratio vs raw {v / base:5.2f}x")
        print(f"  goal: ingest >= 0.9x raw ({ing['Retriever.ingest'] / base:.2f}x)")
    if args.only in (None, "kinds"):
        print("== FAISS index kinds (dim 384, nprobe = nlist/16, efSearch max(64, 2k))")
        bench_index_kinds(emb.dim, [int(x) for x in args.kinds_sizes.split(",")])


if __name__ == "__main__":
    main()
