"""Load on the HTTP server: requests/s and latency percentiles, two server settings side by side.

    python benchmarks/serve_load.py --index INDEX --classifier CKPT [--backbone PATH]
        [--compare batching|threads]

Two servers run the same models side by side (`imdb-transformer serve`, real processes on local ports)
and the rounds alternate between them; each table keeps the median round. Latency is per request, seen by
the client; requests/s is the total completed over the wall time of the round.

``--compare batching`` (the default): one server batches the requests that arrive within --batch_timeout
seconds (up to --max_batch_size), the other serves one request at a time (max_batch_size 1). For /search
(one query each) and /sentiment (one review each), at each number of concurrent clients, each client sends
requests back to back.

``--compare threads`` (needs --backbone): one server splits the cores among its workers (the default),
the other gives every worker all the cores (``--threads`` set to the usable cores: PyTorch's own default,
so the workers' thread pools overlap). Measured: one prompt decoded alone (/v1/completions, greedy,
tokens/s), then the same decoding while --clients[-1] clients per endpoint send their --requests to
/search and to /sentiment (the completions that end while that load runs count), with each endpoint's
requests/s and latency. /search's requests are quick, so most of the load is /sentiment's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import Record, add_out_argument

from imdb_transformer.hardware import describe_cpu, usable_cores
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
PROMPT = "This movie was"


def send(server: ServerProcess, path: str, body: dict, latencies: list[float]) -> dict:
    """One request; its latency (ms) appended to ``latencies``; any answer but 200 is an error."""
    start = time.perf_counter()
    status, answer = server.call("POST", path, body)
    if status != 200:
        raise RuntimeError(f"{path} answered {status}: {answer}")
    latencies.append((time.perf_counter() - start) * 1000)
    return answer


def round_of(server: ServerProcess, path: str, bodies: list[dict], clients: int) -> tuple[float, list[float]]:
    """Send ``bodies`` from ``clients`` threads; requests/s and each request's latency (ms)."""
    latencies: list[float] = []
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(lambda body: send(server, path, body, latencies), bodies))
    return len(bodies) / (time.perf_counter() - start), latencies


def decode_rate(server: ServerProcess, tokens: int) -> float:
    """Tokens/s of one greedy completion of ``tokens`` tokens."""
    body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0}
    start = time.perf_counter()
    answer = send(server, "/v1/completions", body, [])
    return answer["usage"]["completion_tokens"] / (time.perf_counter() - start)


def mixed_round(
    server: ServerProcess, work: dict[str, list[dict]], clients: int, tokens: int
) -> dict[str, tuple[float, list[float]]]:
    """Greedy completions back to back while ``clients`` threads per endpoint of ``work`` send its
    bodies; each endpoint's (requests/s, latencies) and the decoding's (median tokens/s of the
    completions that ended while the load ran, [])."""
    done = threading.Event()
    rates: list[float] = []
    errors: list[BaseException] = []

    def decode() -> None:
        try:
            while not done.is_set():
                rate = decode_rate(server, tokens)
                if not done.is_set():  # a completion that outlasted the load ran partly unloaded
                    rates.append(rate)
        except BaseException as err:  # re-raised below, in the caller's thread
            errors.append(err)

    decoder = threading.Thread(target=decode)
    decoder.start()
    try:
        with ThreadPoolExecutor(len(work)) as pool:
            rounds = pool.map(lambda path: round_of(server, path, work[path], clients), work)
            found = dict(zip(work, rounds, strict=True))
    finally:
        done.set()
        decoder.join()
    if errors:
        raise errors[0]
    if not rates:
        raise RuntimeError("no completion ended while the load ran: raise --requests or lower --tokens")
    found["/v1/completions"] = (statistics.median(rates), [])
    return found


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def median_round(rounds: list[tuple[float, list[float]]]) -> tuple[float, list[float]]:
    return sorted(rounds, key=lambda r: r[0])[len(rounds) // 2]


def latency_cells(latencies: list[float]) -> list[str]:
    """p50, p95 and p99 in ms, or dashes where nothing was timed per request."""
    if not latencies:
        return ["-"] * 3
    p95, p99 = percentile(latencies, 0.95), percentile(latencies, 0.99)
    return [f"{statistics.median(latencies):.0f}", f"{p95:.0f}", f"{p99:.0f}"]


def compare_batching(
    args, servers: dict[str, ServerProcess], work: dict[str, list[dict]], record: Record
) -> None:
    columns = ["endpoint", "clients", "serving", "requests/s", "p50 (ms)", "p95 (ms)", "p99 (ms)"]
    table = record.table("load", columns)
    ratios = {}
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
                rate, latencies = median_round(rounds)
                rates[name] = rate
                table.add(path, clients, name, f"{rate:.1f}", *latency_cells(latencies))
            ratios[(path, clients)] = rates["batched"] / rates["one at a time"]
    print()
    table = record.table("batching gain", ["endpoint", "clients", "batched / one at a time (requests/s)"])
    for (path, clients), ratio in ratios.items():
        table.add(path, clients, f"{ratio:.2f}x")


def compare_threads(
    args, servers: dict[str, ServerProcess], work: dict[str, list[dict]], record: Record
) -> None:
    clients = args.clients[-1]
    for server in servers.values():  # warm up: first requests load lazily
        decode_rate(server, 8)
        for path, bodies in work.items():
            round_of(server, path, bodies[:8], 4)
    alone: dict[str, list[float]] = {name: [] for name in servers}
    mixed: dict[str, list[dict]] = {name: [] for name in servers}
    for _ in range(args.rounds):
        for name, server in servers.items():
            alone[name].append(decode_rate(server, args.tokens))
            mixed[name].append(mixed_round(server, work, clients, args.tokens))
    columns = ["load", "endpoint", "serving", "rate", "p50 (ms)", "p95 (ms)", "p99 (ms)"]
    table = record.table("threads", columns)
    rates: dict[tuple[str, str], dict[str, float]] = {}
    for name in servers:
        rate = statistics.median(alone[name])
        rates.setdefault(("alone", "/v1/completions"), {})[name] = rate
        table.add("decoding alone", "/v1/completions", name, f"{rate:.1f} tokens/s", *latency_cells([]))
    for path in ["/v1/completions", *work]:
        for name in servers:
            rate, latencies = median_round([r[path] for r in mixed[name]])
            rates.setdefault(("mixed", path), {})[name] = rate
            unit = "tokens/s" if path == "/v1/completions" else "requests/s"
            load = f"decoding + {clients} clients each on {', '.join(work)}"
            table.add(load, path, name, f"{rate:.1f} {unit}", *latency_cells(latencies))
    print()
    first, second = servers
    table = record.table("threads gain", ["load", "endpoint", f"{first} / {second}"])
    for (load, path), found in rates.items():
        table.add(load, path, f"{found[first] / found[second]:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", required=True)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--backbone", default=None)
    parser.add_argument("--source", default="stanfordnlp/imdb", help="where the /sentiment reviews come from")
    parser.add_argument(
        "--compare", choices=["batching", "threads"], default="batching",
        help="batched against one request at a time, or the cores split among the workers against every "
        "worker on all cores (needs --backbone)",
    )  # fmt: skip
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=96, help="requests per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128, help="--compare threads: tokens per completion")
    parser.add_argument("--max_batch_size", type=int, default=32)
    parser.add_argument("--batch_timeout", type=float, default=0.01)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    if args.compare == "threads" and not args.backbone:
        parser.error("--compare threads decodes through /v1/completions: give --backbone")
    record = Record("serve_load")
    batching = [f"--max_batch_size={args.max_batch_size}", f"--batch_timeout={args.batch_timeout}"]
    record.notes["batched"] = {"max_batch_size": args.max_batch_size, "batch_timeout_s": args.batch_timeout}

    reviews = load_reviews(args.source, "train", max_reviews=args.requests).texts  # train: test stays unread
    work = {
        "/search": [{"query": QUERIES[i % len(QUERIES)], "k": 10} for i in range(args.requests)],
        "/sentiment": [{"texts": [reviews[i % len(reviews)]]} for i in range(args.requests)],
    }
    models = ["--index", args.index, "--classifier", args.classifier]
    if args.backbone:
        models += ["--backbone", args.backbone]
    if args.compare == "batching":
        settings = {"batched": batching, "one at a time": ["--max_batch_size=1"]}
    else:
        cores = usable_cores()
        settings = {"cores split": batching, "all cores each": [*batching, f"--threads={cores}"]}
        record.notes["threads"] = {"usable_cores": cores, "tokens_per_completion": args.tokens}
    logs = Path(tempfile.mkdtemp(prefix="serve_load-"))
    servers = {
        name: ServerProcess(models + extra, logs / f"{i}.log")
        for i, (name, extra) in enumerate(settings.items())
    }
    print(
        f"{describe_cpu()}; batched: up to {args.max_batch_size} requests, "
        f"{args.batch_timeout * 1000:.0f} ms wait"
    )
    print()
    try:
        (compare_batching if args.compare == "batching" else compare_threads)(args, servers, work, record)
    finally:
        for server in servers.values():
            server.stop()
    record.save(args.out)


if __name__ == "__main__":
    main()
