"""Embedding throughput (reviews/s) and query latency (ms) of a semantic index.

    imdb-transformer embed --backbone RUN/backbone --source ../shared/data/imdb --split test --out index/test
    python benchmarks/search_speed.py --index index/test --source ../shared/data/imdb

Embeds a sample of train reviews with the index's own embedder (so the figure is reviews/s of
real IMDB text), then times queries end to end (embed the query + exact search). Prints one table.
"""

from __future__ import annotations

import argparse
import statistics
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True, help="an index folder written by `imdb-transformer embed`")
    parser.add_argument("--source", default="stanfordnlp/imdb", help="where to take reviews to embed from")
    parser.add_argument("--reviews", type=int, default=1000, help="train reviews to embed for the throughput")
    parser.add_argument("--queries", type=int, default=100, help="timed queries (after 5 untimed)")
    args = parser.parse_args()

    index = SemanticIndex.load(args.index)
    texts = [clean_text(t) for t in load_split(args.source, "train")["text"][: args.reviews]]
    start = time.perf_counter()
    index.embedder.embed(texts, batch_size=64)
    embed_rate = len(texts) / (time.perf_counter() - start)

    for q in QUERIES:
        index.query(q, 5)  # warm-up
    times = []
    for i in range(args.queries):
        start = time.perf_counter()
        index.query(QUERIES[i % len(QUERIES)], 5)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    print("| threads | reviews embedded | reviews/s | index size | query median (ms) | query p95 (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| {torch.get_num_threads()} | {len(texts):,} | {embed_rate:.1f} | {len(index):,} | "
        f"{statistics.median(times):.1f} | {p95:.1f} |"
    )


if __name__ == "__main__":
    main()
