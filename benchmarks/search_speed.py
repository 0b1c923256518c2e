"""Query latency (ms) of a search index by mode and size, and FAISS against exact search.

    imdb-transformer embed --backbone RUN/backbone --adapter RUN2/adapter --source ../shared/data/imdb \
        --out index/test
    python benchmarks/search_speed.py --index index/test --sizes 25000 100000 --ann_sizes 100000 1000000

Table 1, for each size: queries end to end (embed the query, rank, fetch the k rows) in each mode the index
has (dense, lexical, hybrid), median and p95 over the timed queries, after untimed ones; and how many of the
queries got the same top 10 scores as the plain computation (every score, a full sort, fusion over each
ranker's top ``CANDIDATES`` by full sort), which the fast path must not change.
Table 2 (indexes of dense vectors): approximate search with FAISS (HNSW, IVF) against exact search over
the same vectors: build time, recall@10 of the exact top 10, and search latency.

An index is grown to a larger size by repeating its reviews, dense vectors perturbed by a little noise,
sparse vectors and BM25 weights repeated as they are (search time depends on how many vectors there are and
how long the posting lists grow, not on what they hold; the 1,000,000 row is in that sense synthetic).
Recall of FAISS is measured with held-out perturbed copies of indexed vectors as queries.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
import torch
from common import Record, add_out_argument

from imdb_transformer.hardware import describe_cpu
from imdb_transformer.search import CANDIDATES, BM25Index, SemanticIndex, minmax, review_table

QUERIES = [
    "classic horror movie that is terrifying",
    "a heartwarming family comedy",
    "worst acting I have ever seen",
    "beautiful cinematography but a boring plot",
    "an epic war film with great battle scenes",
    "Clint Eastwood western",
    "Meryl Streep",
]


def grown(index: SemanticIndex, size: int, lexical: bool) -> SemanticIndex:
    """``index`` cut or repeated to ``size`` reviews (dense repeats get slightly perturbed unit vectors;
    sparse ones are plain copies, which keep the posting lists' lengths in proportion)."""
    rows = [i % len(index) for i in range(size)]
    vectors = index.vectors[rows] if index.sparse else perturbed(index.vectors, size, len(index))
    reviews = index.reviews.take(pa.array(rows))
    keys = pa.array([str(i) for i in range(size)])  # the repeats need keys of their own
    reviews = reviews.set_column(reviews.schema.get_field_index("key"), "key", keys)
    words = tiled(index.lexical, size) if lexical and index.lexical else None
    return SemanticIndex(index.embedder, vectors, reviews, lexical=words, alpha=index.alpha)


def tiled(lexical: BM25Index, size: int) -> BM25Index:
    """``lexical``'s BM25 weights for ``size`` reviews: its reviews' weights repeated (or cut) in order, as
    :func:`grown` repeats the reviews; each word's posting list grows with the index, as it would."""
    by_word, _ = lexical.weights()
    scores, count = lexical.retriever.scores, by_word.shape[0]
    grown_words = sp.vstack([by_word] * -(-size // count), format="csc")[:size].tocsc()
    retriever = copy.copy(lexical.retriever)
    retriever.scores = {
        "data": grown_words.data.astype(scores["data"].dtype),
        "indices": grown_words.indices.astype(np.int32),
        "indptr": grown_words.indptr.astype(scores["indptr"].dtype),
        "num_docs": size,
    }  # fmt: skip
    return BM25Index(retriever)


def perturbed(vectors: torch.Tensor, size: int, keep: int, seed: int = 0) -> torch.Tensor:
    """``size`` unit vectors: the first ``keep`` as given, the rest repeats with noise."""
    out = vectors.repeat(-(-size // len(vectors)), 1)[:size]
    noise = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)) * 0.01
    return torch.nn.functional.normalize(out + noise * (torch.arange(size) >= keep)[:, None], dim=1)


def plain_top(index: SemanticIndex, text: str, mode: str, k: int) -> np.ndarray:
    """The top ``k`` scores of ``text`` under ``mode``, computed the plain way: every score, full sorts."""
    vector = index.embedder.embed([text], progress=False)
    if index.sparse:
        dense = (index.vectors @ vector.T).toarray().ravel()
    else:
        dense = (index.vectors @ vector[0]).numpy()
    if mode == "dense":
        return np.sort(dense)[::-1][:k]
    lexical = index.lexical.scores(text)
    if mode == "lexical":
        return np.sort(lexical)[::-1][:k]
    proposed = [np.argsort(-x)[: min(CANDIDATES, np.count_nonzero(x))] for x in (dense, lexical)]
    rows = np.union1d(*proposed)
    fused = index.alpha * minmax(dense[rows]) + (1 - index.alpha) * minmax(lexical[rows])
    return np.sort(fused)[::-1][:k]


def agreement(index: SemanticIndex, mode: str, k: int = 10) -> str:
    """How many benchmark queries get the plain computation's top ``k`` scores from ``query``."""
    same = sum(
        np.allclose([h.score for h in index.query(q, k, mode)], plain_top(index, q, mode, k), atol=1e-5)
        for q in QUERIES
    )
    return f"{same}/{len(QUERIES)}"


def latency(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    """Median and p95 of ``n`` calls, in ms, after 5 untimed ones."""
    for i in range(5):
        fn(i)
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[min(n - 1, int(0.95 * n))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True, help="an index folder written by `imdb-transformer embed`")
    parser.add_argument("--queries", type=int, default=100, help="timed queries per size (after 5 untimed)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25000, 100000], help="indexed reviews")
    parser.add_argument("--ann_sizes", type=int, nargs="*", default=[100000, 1000000], help="for FAISS")
    parser.add_argument("--ann", nargs="*", default=["hnsw", "ivf"], choices=["hnsw", "ivf"])
    parser.add_argument("--hnsw_max", type=int, default=200000, help="largest size to build HNSW for")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    record = Record("search_speed")

    index = SemanticIndex.load(args.index)
    modes = ["dense", "lexical", "hybrid"] if index.lexical is not None else ["dense"]
    print(
        f"CPU: {describe_cpu()}; index of {index.vectors.shape[1]}-dim "
        f"{'sparse' if index.sparse else 'dense'} vectors ({index.embedder.pooling}), exact search; "
        f"alpha {index.alpha}"
    )
    record.notes["index"] = {
        "dims": index.vectors.shape[1], "sparse": index.sparse, "pooling": index.embedder.pooling,
        "alpha": index.alpha, "reviews": len(index),
    }  # fmt: skip
    columns = ["indexed reviews", "mode", "query median (ms)", "query p95 (ms)", "top 10 as computed plainly"]
    table = record.table("queries", columns)
    for size in args.sizes:
        sized = grown(index, size, lexical=True)
        for mode in modes:
            timing = latency(
                lambda i, ix=sized, m=mode: ix.query(QUERIES[i % len(QUERIES)], 10, m), args.queries
            )
            table.add(f"{size:,}", mode, f"{timing[0]:.2f}", f"{timing[1]:.2f}", agreement(sized, mode))

    if not args.ann_sizes or index.sparse:
        record.save(args.out)
        return  # FAISS indexes dense vectors
    print()
    columns = ["vectors", "search", "build (s)", "recall@10 vs exact"]
    columns += ["search median (ms)", "search p95 (ms)"]
    table = record.table("approximate search", columns)
    for size in args.ann_sizes:
        vectors = perturbed(index.vectors, size, len(index))
        queries = perturbed(
            vectors[: args.queries], args.queries, 0, seed=1
        )  # near, not equal, to indexed ones
        exact = SemanticIndex(index.embedder, vectors, review_table([""] * size))
        truth = [set(exact.dense_top_k(q, 10)[0].tolist()) for q in queries]
        timing = latency(lambda i, ix=exact, qs=queries: ix.dense_top_k(qs[i % len(qs)], 10), args.queries)
        table.add(f"{size:,}", "exact", 0, "1.000", f"{timing[0]:.2f}", f"{timing[1]:.2f}")
        for ann in args.ann:
            if ann == "hnsw" and size > args.hnsw_max:
                continue
            start = time.perf_counter()
            approx = SemanticIndex(index.embedder, vectors, review_table([""] * size), ann=ann)
            built = time.perf_counter() - start
            recall = statistics.mean(
                len(truth[i] & set(approx.dense_top_k(q, 10)[0].tolist())) / 10 for i, q in enumerate(queries)
            )
            timing = latency(
                lambda i, ix=approx, qs=queries: ix.dense_top_k(qs[i % len(qs)], 10), args.queries
            )
            figures = [f"{built:.1f}", f"{recall:.3f}", f"{timing[0]:.2f}", f"{timing[1]:.2f}"]
            table.add(f"{size:,}", f"FAISS {ann}", *figures)
    record.save(args.out)


if __name__ == "__main__":
    main()
