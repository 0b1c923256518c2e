"""Embedding throughput (reviews/s) and query latency (ms) of a semantic index, at several sizes.

    imdb-transformer embed --backbone RUN/backbone --source ../shared/data/imdb --split test --out index/test
    python benchmarks/search_speed.py --index index/test --source ../shared/data/imdb --sizes 25000 100000

Embeds a sample of train reviews with the index's own embedder (so the figure is reviews/s of
real IMDB text). Then, for each size, times queries end to end (embed the query + exact search)
and the search alone (matrix product + top-k + fetching k rows). An index is grown to a size
larger than it is by repeating its vectors with a little noise: search time depends on the
number of vectors, not on what they hold. Prints one table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import pyarrow as pa
import torch

from imdb_transformer.data.imdb import clean_text, load_split
from imdb_transformer.search import SemanticIndex

QUERIES = [
    "classic horror movie that is terrifying",
    "a heartwarming family comedy",
    "worst acting I have ever seen",
    "beautiful cinematography but a boring plot",
    "an epic war film with great battle scenes",
]


def grown(index: SemanticIndex, size: int) -> SemanticIndex:
    """``index`` cut or repeated to ``size`` reviews (repeats get slightly perturbed unit vectors)."""
    reps = -(-size // len(index))
    vectors = index.vectors.repeat(reps, 1)[:size]
    noise = torch.randn(vectors.shape, generator=torch.Generator().manual_seed(0)) * 0.01
    vectors = torch.nn.functional.normalize(
        vectors + noise * (torch.arange(size) >= len(index))[:, None], dim=1
    )
    rows = pa.array([i % len(index) for i in range(size)])
    return SemanticIndex(index.embedder, vectors, index.reviews.take(rows), index.backbone)


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
    parser.add_argument("--source", default="stanfordnlp/imdb", help="where to take reviews to embed from")
    parser.add_argument("--reviews", type=int, default=1000, help="train reviews to embed for the throughput")
    parser.add_argument("--queries", type=int, default=100, help="timed queries per size (after 5 untimed)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25000, 100000], help="indexed reviews")
    args = parser.parse_args(argv)

    index = SemanticIndex.load(args.index)
    texts = [clean_text(t) for t in load_split(args.source, "train")["text"][: args.reviews]]
    start = time.perf_counter()
    index.embedder.embed(texts, batch_size=64, progress=False)
    embed_rate = len(texts) / (time.perf_counter() - start)
    query_vectors = index.embedder.embed(QUERIES, progress=False)

    print(
        f"{torch.get_num_threads()} threads; embedding {len(texts):,} train reviews: "
        f"{embed_rate:.1f} reviews/s; index of {index.vectors.size(1)}-dim vectors, exact search"
    )
    print(
        "| indexed reviews | query median (ms) | query p95 (ms) | search only median (ms) "
        "| search only p95 (ms) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for size in args.sizes:
        sized = grown(index, size)
        end_to_end = latency(lambda i, ix=sized: ix.query(QUERIES[i % len(QUERIES)], 5), args.queries)
        search = latency(lambda i, ix=sized: ix.nearest(query_vectors[i % len(QUERIES)], 5), args.queries)
        print(f"| {size:,} | {end_to_end[0]:.2f} | {end_to_end[1]:.2f} | {search[0]:.2f} | {search[1]:.2f} |")


if __name__ == "__main__":
    main()
