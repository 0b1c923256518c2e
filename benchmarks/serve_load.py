"""Load on the HTTP server: requests/s and latency percentiles with and without dynamic batching.

    python benchmarks/serve_load.py --index INDEX --classifier CKPT [--backbone PATH]

Two servers run the same models side by side (`imdb-transformer serve`, real processes on local ports):
one batches requests that arrive within --batch_timeout seconds (up to --max_batch_size), the other
serves one request at a time (max_batch_size 1). For /search (one query each) and /sentiment (one review
each), at each number of concurrent clients, each client sends requests back to back; rounds alternate
between the two servers and the table keeps the median round. Latency is per request, seen by the
client; requests/s is the total completed over the wall time of the round.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import Record, add_out_argument

from imdb_transformer.hardware import describe_cpu
from imdb_transformer.serve import ServerProcess
from imdb_transformer.text.imdb import load_reviews

QUERIES = [
    "classic horror movie that is terrifying",
    "a musical with great songs and dancing",
    "war film about soldiers in world war II",
    "animated cartoon for kids and families",
    "Clint Eastwood western",
    "worst acting I have ever seen",
]


def round_of(server: ServerProcess, path: str, bodies: list[dict], clients: int) -> tuple[float, list[float]]:
    """Send ``bodies`` from ``clients`` threads; requests/s and each request's latency (ms)."""
    latencies: list[float] = []

    def send(body: dict) -> None:
        start = time.perf_counter()
        status, answer = server.call("POST", path, body)
        if status != 200:
            raise RuntimeError(f"{path} answered {status}: {answer}")
        latencies.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(send, bodies))
    return len(bodies) / (time.perf_counter() - start), latencies


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--source", default="stanfordnlp/imdb", help="where the /sentiment reviews come from")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=96, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--batch_timeout", type=float, default=0.01)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    record = Record("serve_load")
    record.notes["batched"] = {"max_batch_size": args.max_batch_size, "batch_timeout_s": args.batch_timeout}

    reviews = load_reviews(args.source, "train", max_reviews=args.requests).texts  # train: test stays unread
    work = {
        "/search": [{"query": QUERIES[i % len(QUERIES)], "k": 10} for i in range(args.requests)],
        "/sentiment": [{"texts": [reviews[i % len(reviews)]]} for i in range(args.requests)],
    }
    models = ["--index", args.index, "--classifier", args.classifier]
    if args.backbone:
        models += ["--backbone", args.backbone]
    logs = Path(tempfile.mkdtemp(prefix="serve_load-"))
    settings = {
        "batched": [f"--max_batch_size={args.max_batch_size}", f"--batch_timeout={args.batch_timeout}"],
        "one at a time": ["--max_batch_size=1"],
    }
    servers = {
        name: ServerProcess(models + extra, logs / f"{i}.log")
        for i, (name, extra) in enumerate(settings.items())
    }
    print(
        f"{describe_cpu()}; batched: up to {args.max_batch_size} requests, "
        f"{args.batch_timeout * 1000:.0f} ms wait"
    )
    print()
    columns = ["endpoint", "clients", "serving", "requests/s", "p50 (ms)", "p95 (ms)", "p99 (ms)"]
    table = record.table("load", columns)
    ratios = {}
    try:
        for path, bodies in work.items():
            for server in servers.values():  # warm up: first requests load lazily
                round_of(server, path, bodies[:8], 4)
            for clients in args.clients:
                found: dict[str, list[tuple[float, list[float]]]] = {name: [] for name in servers}
                for _ in range(args.rounds):
                    for name, server in servers.items():
                        found[name].append(round_of(server, path, bodies, clients))
                rates = {}
                for name, rounds in found.items():
                    rate, latencies = sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]  # median round
                    rates[name] = rate
                    p95, p99 = percentile(latencies, 0.95), percentile(latencies, 0.99)
                    ms = [f"{statistics.median(latencies):.0f}", f"{p95:.0f}", f"{p99:.0f}"]
                    table.add(path, clients, name, f"{rate:.1f}", *ms)
                ratios[(path, clients)] = rates["batched"] / rates["one at a time"]
    finally:
        for server in servers.values():
            server.stop()
    print()
    table = record.table("batching gain", ["endpoint", "clients", "batched / one at a time (requests/s)"])
    for (path, clients), ratio in ratios.items():
        table.add(path, clients, f"{ratio:.2f}x")
    record.save(args.out)


if __name__ == "__main__":
    main()
