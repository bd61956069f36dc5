"""Retrieval benchmark: rolora's Retriever against the raw encoder + FAISS, and against LangChain's FAISS store.

Prints ratios measured in one run (these machines are noisy; compare ratios, not absolute times).

    .venv/bin/python bench/retrieval.py [--chunks 50000] [--queries 200] [--ingest-chunks 1000]

Search: a synthetic corpus of ``--chunks`` contract-like chunks. Their vectors are random unit vectors written
into rolora's embedding cache before the ingest (flat search time does not depend on the values, and embedding
50k chunks on 2 cores would take half an hour); queries are encoded for real by MiniLM in every contender.
Ingest: ``--ingest-chunks`` chunks embedded for real, through Retriever.ingest vs encode + FAISS add.
Index kinds: flat vs HNSW vs IVF search time and recall@10 against flat on random vectors, for the crossover.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=50_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--ingest-chunks", type=int, default=1000)
    ap.add_argument("--kinds-sizes", default="50000,200000")
    ap.add_argument("--only", choices=["search", "ingest", "kinds"], help="run one part")
    args = ap.parse_args()

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
