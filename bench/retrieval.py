"""Retrieval benchmark: quality on unseen CUAD contracts, and speed against the raw encoder + FAISS and LangChain.

    .venv/bin/python bench/retrieval.py --quality [--work /tmp/rolora-quality] [--chunk-sizes 1000,500]
    .venv/bin/python bench/retrieval.py --cuad-full [--work DIR]    # all 401 contracts, the fixed 100-contract sample
    .venv/bin/python bench/retrieval.py [--chunks 50000] [--queries 200] [--ingest-chunks 1000]
    .venv/bin/python bench/retrieval.py --embedder tuned:cuad-retriever [--max-contracts 25]   # base vs tuned
    .venv/bin/python bench/retrieval.py --only backends --ingest-chunks 400 --max-contracts 8   # torch/onnx/int8

Quality (``--quality``): character-level span recall (LegalBench-RAG's definition, overlapping passages merged) of
CUAD questions on the contracts of the test split of ``rolora.adapters.data.doc_split`` (never used for tuning),
with the index built from those contracts only; one cumulative row per improvement (contract resolution,
contextual chunks, stemmed BM25 with fusion weights chosen on the validation split), unscoped and scoped to the
right contract. Indexes and embeddings are cached under ``--work``: a second run embeds nothing.

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
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
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
    from rolora.retrieval import Retriever

    sample = "" if max_contracts is None else f"-{max_contracts}"
    domain = f"{split}{sample}-c{v.chunk_max_chars}-{'ctx' if v.contextual else 'plain'}"  # stemmer: BM25 rebuild
    if emb.name != "all-minilm-l6-v2":  # another embedder or backend (--embedder, --only backends): its own index
        domain += "-e" + hashlib.sha256(emb.name.encode()).hexdigest()[:8]
    spec, _, backend = emb.name.partition("+")  # all-minilm-l6-v2+onnx-int8: the model and its backend
    cfg = Config.model_validate(
        {
            "home": str(work / "home"),
            "models": {"embedder": spec, "embedder_backend": backend or "torch"},
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
    from rolora.retrieval.retriever import convex_fuse

    ranked = [row["dense"], row["lexical"]]
    if fusion == "convex":
        by_id = {p.chunk_id: p for r in ranked for p in r}
        ids = {c: i for i, c in enumerate(by_id)}
        out = convex_fuse([[(ids[p.chunk_id], p.score) for p in r] for r in ranked], weights)
        chunk_ids = list(by_id)
        return [by_id[chunk_ids[i]] for i, _ in out][:64]
    if weights == (1.0, 1.0):
        return [p for p, _ in rrf_fuse_items(ranked, lambda p: p.chunk_id, rrf_k)][:64]
    scores: dict[str, float] = {}
    first: dict[str, Any] = {}
    for w, ranking in zip(weights, ranked, strict=True):
        for rank, p in enumerate(ranking, start=1):
            scores[p.chunk_id] = scores.get(p.chunk_id, 0.0) + w / (rrf_k + rank)
            first.setdefault(p.chunk_id, p)
    return [first[c] for c, _ in sorted(scores.items(), key=lambda kv: -kv[1])][:64]


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


def bench_quality(work: Path, chunk_sizes: list[int], limit: int | None, max_contracts: int | None) -> None:
    from rolora.evals.bootstrap import bootstrap_mean
    from rolora.retrieval import make_embedder

    emb = make_embedder("all-minilm-l6-v2")
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
        r, _ = open_variant(v, "validation", work, emb)
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
    print(f"== test split: {len(test_qs)} questions on {n_test_docs} contracts (the corpus: the test split's "
          f"{len(test_docs)} contracts only{'' if max_contracts is None else ', a seeded sample'})")  # fmt: skip
    table = []
    for v in variants:
        r, rate = open_variant(v, "test", work, emb, max_contracts)
        ensure_stemmer(r, v)
        rows = rankings(r, test_qs, resolve=v.resolve, scoped=False)
        scoped = rankings(r, test_qs, resolve=False, scoped=True)
        w = (v.dense_weight, v.lexical_weight)
        s, ss = score_rows(rows, w, v.rrf_k, v.fusion), score_rows(scoped, w, v.rrf_k, v.fusion)
        times = []
        for q in test_qs[:200]:
            t = time.perf_counter()
            scope = r.resolve(q["question"]) if v.resolve else []
            r.search(q["question"], k=5, doc_ids=[d for d, _ in scope] or None)
            times.append(time.perf_counter() - t)
        res_acc = resolution_accuracy(rows) if v.resolve else None
        ci = bootstrap_mean([x[1] for x in s["hybrid"]], samples=2000, seed=0)
        table.append((v, s, ss, res_acc, rate, statistics.median(times) * 1e3, ci))
        print(
            f"  {v.name}: unscoped hybrid @5 {ci.fmt()}  dense/lexical @5 "
            f"{statistics.mean(x[1] for x in s['dense']):.3f}/{statistics.mean(x[1] for x in s['lexical']):.3f}"
        )
    print()
    print("| | unscoped @1 | @5 | @20 | @64 | scoped @1 | @5 | @20 | @64 | resolution | ingest chunks/s | p50 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for v, s, ss, racc, rate, p50ms, ci in table:
        u = [statistics.mean(col) for col in zip(*s["hybrid"], strict=True)]
        sc = [statistics.mean(col) for col in zip(*ss["hybrid"], strict=True)]
        res = "–" if racc is None else f"{racc[0]:.3f} ({racc[1]:.0%} resolved)"
        print(f"| {v.name} | {u[0]:.3f} | {ci.fmt()} | {u[2]:.3f} | {u[3]:.3f} | "
              f"{sc[0]:.3f} | {sc[1]:.3f} | {sc[2]:.3f} | {sc[3]:.3f} | {res} | "
              f"{'–' if rate is None else f'{rate:.0f}'} | {p50ms:.1f} |")  # fmt: skip
    last = table[-1]
    for mode in ("dense", "lexical"):
        m = [statistics.mean(col) for col in zip(*last[1][mode], strict=True)]
        print(f"  last row, {mode} alone (unscoped): " + " ".join(f"@{k} {x:.3f}" for k, x in zip(KS, m, strict=True)))


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
    from rolora.embedder_registry import EmbedderRegistry
    from rolora.evals.bootstrap import bootstrap_mean, paired_bootstrap
    from rolora.models import default_home
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
            canonical, folder = EmbedderRegistry.from_home(default_home()).resolve(ref)
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


BACKENDS = ("torch", "onnx", "onnx-int8")


def bench_backends(n: int, rounds: int, work: Path, max_contracts: int | None, limit: int | None) -> None:
    """MiniLM on torch vs its ONNX export (float32, dynamic int8) run by onnxruntime: Retriever.ingest chunks/s of
    ``n`` synthetic chunks, the backends interleaved ``rounds`` times (best round kept: the cores are shared), as
    ratios against torch; then span recall @1/@5/@20 (hybrid and dense, unscoped with contract resolution) on a seeded
    sample of ``max_contracts`` test-split CUAD contracts, one index per backend (cached under ``work``)."""
    from rolora.models import default_home
    from rolora.retrieval import Retriever, make_embedder

    from conftest import make_config

    t = time.perf_counter()
    embs = {b: make_embedder("all-minilm-l6-v2", backend=b, home=default_home()) for b in BACKENDS}
    print(f"== embedder backends (ONNX exports under {default_home() / 'models' / 'onnx'}; ready in "
          f"{time.perf_counter() - t:.0f} s)")  # fmt: skip
    texts = synthetic_texts(n, seed=1, words=50)
    tmp = Path(tempfile.mkdtemp(prefix="rolora-bench-backends-"))
    write_corpus(tmp / "corpus", texts)
    best = dict.fromkeys(BACKENDS, 0.0)
    for i in range(rounds):
        for b, emb in embs.items():
            emb.embed(texts[:64])  # warm up
            cfg = make_config(tmp / f"home-{b}-{i}", bench={"corpus": [str(tmp / "corpus")]})
            cfg.models.embedder_backend = b
            t = time.perf_counter()
            rep = Retriever("bench", cfg, emb).ingest(progress=False)
            best[b] = max(best[b], rep.chunks_total / (time.perf_counter() - t))
    print(f"  ingest, {n} chunks embedded for real, best of {rounds} interleaved rounds:")
    for b in BACKENDS:
        print(f"  {b:<10} {best[b]:8.1f} chunks/s   ratio vs torch {best[b] / best['torch']:5.2f}x")
    print(f"  goal: ingest >= 2.5x torch (onnx-int8 {best['onnx-int8'] / best['torch']:.2f}x)")

    test_docs = set(split_contracts("test", max_contracts))
    test_qs = [q for q in cuad_questions("test") if q["doc_id"] in test_docs]
    if limit:
        test_qs = test_qs[:limit]
    n_docs = len({q["doc_id"] for q in test_qs})
    print(f"  span recall, test split: {len(test_qs)} questions on {n_docs} contracts"
          f"{'' if max_contracts is None else ' (a seeded sample)'}, unscoped with contract resolution")  # fmt: skip
    v = Variant("+ stemmed BM25 (RRF 1:1)", True, True, "english")
    means: dict[str, dict[str, list[float]]] = {}
    real: list[str] = []
    for b, emb in embs.items():
        r, rate = open_variant(v, "test", work, emb, max_contracts)
        ensure_stemmer(r, v)
        s = score_rows(rankings(r, test_qs, True, False), (1.0, 1.0), 60)
        means[b] = {mode: [statistics.mean(col) for col in zip(*s[mode], strict=True)] for mode in ("hybrid", "dense")}
        print(f"  {b}: index of {r.store.chunk_count()} chunks (ingest {rate or 0:.1f} chunks/s)", flush=True)
        real = real or r.store.all_chunks()[1][: min(n, 256)]
    fast = dict.fromkeys(BACKENDS, 0.0)
    for _ in range(rounds):  # the CUAD chunks themselves (up to 1000 characters: longer than the synthetic ones)
        for b, emb in embs.items():
            t = time.perf_counter()
            emb.embed(real, batch_size=64)
            fast[b] = max(fast[b], len(real) / (time.perf_counter() - t))
    print(f"  embedding {len(real)} CUAD chunks, best of {rounds}: "
          + ", ".join(f"{b} {fast[b]:.1f}/s ({fast[b] / fast['torch']:.2f}x)" for b in BACKENDS))  # fmt: skip
    print()
    print("| backend | hybrid @1 | @5 | @20 | dense @1 | @5 | @20 | max abs diff vs onnx fp32 |")
    print("|---|---|---|---|---|---|---|---|")
    for b in BACKENDS:
        h, d = means[b]["hybrid"][:3], means[b]["dense"][:3]
        ref = means["onnx"]["hybrid"][:3] + means["onnx"]["dense"][:3]
        diff = max(abs(x - y) for x, y in zip(h + d, ref, strict=True))
        print(f"| {b} | " + " | ".join(f"{x:.3f}" for x in h + d) + f" | {diff:.3f} |")
    fp32 = means["torch"]["hybrid"][:3] + means["torch"]["dense"][:3]
    int8 = means["onnx-int8"]["hybrid"][:3] + means["onnx-int8"]["dense"][:3]
    worst = max(abs(x - y) for x, y in zip(int8, fp32, strict=True))
    print(f"n = {len(test_qs)} questions; onnx-int8 vs torch fp32: max |diff| {worst:.3f} "
          f"({'within' if worst <= 0.01 else 'NOT within'} 0.01)")  # fmt: skip


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
    args = ap.parse_args()
    if args.embedder:
        bench_embedders(args.work, args.embedder, args.limit, args.max_contracts)
        return
    if args.quality or args.cuad_full:
        if args.quality:
            bench_quality(args.work, [int(x) for x in args.chunk_sizes.split(",")], args.limit, args.max_contracts)
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
