"""Lexical, learned sparse and fused rankings on the halves task, scored with ranx.

    python benchmarks/fusion.py --backbone RUN/backbone --adapters A1 [A2 ...] --source ../shared/data/imdb
    python benchmarks/fusion.py ... --adapters A --test --out docs/results/fusion.json   # once, at the end

The halves task (``benchmarks/retrieval.py``): the first half of a review is the query, its own second half
the one relevant document among all the second halves. Rankers, each keeping its top ``--depth`` per query:
BM25 (bm25s, the index's lexical side), TF-IDF cosine (scikit-learn, sublinear tf) and each adapter (learned
sparse vectors, dot product). Each adapter is fused with each lexical ranker two ways with ranx: the convex
combination of min-max normalised scores (``wsum``, what the index's hybrid mode does) and reciprocal rank
fusion (``rrf``), the weight and RRF's k each chosen by ``ranx.optimize_fusion`` on MRR@10. ``--norms`` adds
score normalisations to compare (``zmuv``: each query's scores to zero mean and unit variance), ``--three``
the fusion of each adapter with both lexical rankers at once, and ``--runs DIR`` keeps every ranker's run on
disk so that a second call with other fusions reads them instead of embedding again.

Choices are made on the reviews the adapters held out of training (train + unsupervised, their validation
split); ``--test`` then scores every run once on the 25,000 test reviews with the choices unchanged. Each
table gives MRR@10, recall@10, the ratio to BM25's MRR@10 and ranx's paired two-sided test against BM25
(Fisher's randomization test; p below 0.01 marked). Needs ``pip install -e ".[bench]"`` (ranx, scikit-learn).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from common import Record, add_out_argument, halves, held_out_texts, tfidf_matrices
from ranx import Qrels, Run, compare, evaluate, fuse, optimize_fusion

from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.core.head import load_adapter
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.search import BM25Index
from imdb_transformer.text.imdb import load_reviews

METRICS = ["mrr@10", "recall@10"]


def qrels_of(n: int) -> Qrels:
    """Query ``i``'s one relevant document is document ``i``."""
    return Qrels({f"q{i}": {f"d{i}": 1} for i in range(n)})


def run_of(name: str, scores_of, n: int, depth: int) -> Run:
    """A ranx run: each query's ``depth`` best documents by ``scores_of(rows)`` (a dense array of the
    queries ``rows`` against every document), zero scores left out."""
    found: dict[str, dict[str, float]] = {}
    for start in range(0, n, 512):
        rows = range(start, min(n, start + 512))
        scores = torch.from_numpy(np.ascontiguousarray(scores_of(rows), dtype=np.float32))
        values, docs = scores.topk(min(depth, scores.size(1)), dim=1)
        for i, vals, ids in zip(rows, values.tolist(), docs.tolist(), strict=True):
            found[f"q{i}"] = {f"d{d}": v for v, d in zip(vals, ids, strict=True) if v > 0} or {"d-1": 0.0}
    return Run(found, name=name)


class RunStore:
    """Each ranker's run kept in ``folder`` (``--runs``) under a hash of what made it, so that a run is
    computed once for any number of fusion comparisons; with no folder every run is computed."""

    def __init__(self, folder: str | None, pool: dict) -> None:
        self.folder = Path(folder) if folder else None
        self.pool = pool  # what makes the queries and documents: source, split, sizes, depth

    def get(self, name: str, made_by: dict, make) -> Run:
        if self.folder is None:
            return make()
        key = json.dumps({**self.pool, "name": name, **made_by}, sort_keys=True)
        path = self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"
        if path.exists():
            print(f"{name}: read from {path}")
            return Run.from_file(str(path), kind="json", name=name)
        run = make()
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.json")
        run.save(str(partial), kind="json")
        os.replace(partial, path)  # a run is on disk whole or not at all
        return run


def lexical_runs(queries: list[str], docs: list[str], depth: int, store: RunStore) -> dict[str, Run]:
    def bm25() -> Run:
        index = BM25Index.build(docs)
        return run_of(
            "BM25", lambda rows: np.stack([index.scores(queries[i]) for i in rows]), len(queries), depth
        )

    def tfidf() -> Run:
        q, d = tfidf_matrices(queries, docs)
        return run_of("TF-IDF", lambda rows: (q[rows.start : rows.stop] @ d.T).toarray(), len(queries), depth)

    return {"BM25": store.get("BM25", {}, bm25), "TF-IDF": store.get("TF-IDF", {}, tfidf)}


def adapter_run(
    name: str, embedder: DocumentEmbedder, queries: list[str], docs: list[str], depth: int
) -> Run:
    """The adapter's ranking, its vectors made as ``embed`` makes an index's (and a query's)."""
    q, d = embedder.embed(queries), embedder.embed(docs)
    if not sp.issparse(q):
        q, d = sp.csr_matrix(q.numpy()), sp.csr_matrix(d.numpy())
    return run_of(name, lambda rows: (q[rows.start : rows.stop] @ d.T).toarray(), len(queries), depth)


def ranker_runs(
    embedders: dict[str, DocumentEmbedder], made_by: dict[str, dict], queries: list[str], docs: list[str],
    depth: int, store: RunStore,
) -> dict[str, Run]:  # fmt: skip
    """BM25, TF-IDF and each adapter's run over one pool of queries and documents."""
    runs = lexical_runs(queries, docs, depth, store)
    for name, embedder in embedders.items():
        runs[name] = store.get(
            name, made_by[name], lambda e=embedder, n=name: adapter_run(n, e, queries, docs, depth)
        )
    return runs


def task(texts: list[str]) -> tuple[list[str], list[str]]:
    queries, docs = zip(*(halves(t) for t in texts), strict=True)
    return list(queries), list(docs)


def choose(
    qrels: Qrels, runs: dict[str, Run], adapters: list[str], norms: list[str], three: bool
) -> dict[str, tuple[list[str], str, str, dict]]:
    """Each fusion of an adapter with a lexical ranker (and with both, if ``three``), by the convex
    combination under each normalisation and by RRF: (the runs fused, method, norm, chosen params)."""
    combos = [(adapter, lexical) for adapter in adapters for lexical in ("BM25", "TF-IDF")]
    combos += [(adapter, "BM25", "TF-IDF") for adapter in adapters if three]
    chosen = {}
    for members in combos:
        methods = [("wsum", norm) for norm in norms] + [("rrf", "min-max")]
        for method, norm in methods:
            params = optimize_fusion(
                qrels, [runs[m] for m in members], norm=norm, method=method, metric="mrr@10"
            )
            name = " + ".join(members) + f", {method}" + (f" ({norm})" if norm != "min-max" else "")
            chosen[name] = (list(members), method, norm, params)
    return chosen


def fused(runs: dict[str, Run], chosen: dict) -> dict[str, Run]:
    out = {}
    for name, (members, method, norm, params) in chosen.items():
        out[name] = fuse([runs[m] for m in members], norm=norm, method=method, params=params)
        out[name].name = name
    return out


def report(record: Record, title: str, qrels: Qrels, runs: dict[str, Run], chosen: dict) -> None:
    """One table: every run's metrics, its ratio to BM25 and the paired test against BM25."""
    names = list(runs)
    ordered = [runs["BM25"], *(runs[n] for n in names if n != "BM25")]
    compared = compare(qrels, ordered, METRICS, stat_test="fisher", max_p=0.01, make_comparable=True)
    scores = {name: evaluate(qrels, runs[name], METRICS, make_comparable=True) for name in names}
    base = scores["BM25"]["mrr@10"]
    table = record.table(title, ["run", "MRR@10", "recall@10", "vs BM25", "p vs BM25 (MRR@10)", "chosen"])
    for name in ["BM25", *(n for n in names if n != "BM25")]:
        p = "-"
        if name != "BM25":
            found = compared.comparisons[name, "BM25"]["mrr@10"]["p_value"]
            p = (f"{found:.2g}" if found > 0 else "<0.001") + (" *" if found < 0.01 else "")
        params = describe(chosen[name][3]) if name in chosen else "-"
        mrr, recall = scores[name]["mrr@10"], scores[name]["recall@10"]
        table.add(name, f"{mrr:.3f}", f"{recall:.3f}", f"{mrr / base:.2f}x", p, params)


def files_of(folder: str) -> list:
    """What identifies a saved model folder for a stored run: each file's name, size and time."""
    return sorted(
        (f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(folder).iterdir() if f.is_file()
    )


def describe(params: dict) -> str:
    """ranx's chosen fusion parameters as plain numbers: ``weights 0.7/0.3`` or ``k 10``."""
    if "weights" in params:
        return "weights " + "/".join(f"{float(w):g}" for w in params["weights"])
    return ", ".join(f"{k} {float(v):g}" for k, v in params.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True)
    parser.add_argument(
        "--adapters", nargs="+", required=True, help="adapter/ folders trained on this backbone"
    )
    parser.add_argument("--source", default="stanfordnlp/imdb")
    parser.add_argument(
        "--val_fraction", type=float, default=0.2, help="as the adapters' data module held out"
    )
    parser.add_argument("--seed", type=int, default=1234, help="as the adapters' data module split")
    parser.add_argument("--depth", type=int, default=100, help="documents each ranker keeps per query")
    parser.add_argument(
        "--readings", nargs="+", choices=["head_tail", "windows"], default=["head_tail"],
        help="how each adapter reads a text longer than the context (embed --windows): each is a run",
    )  # fmt: skip
    parser.add_argument(
        "--norms", nargs="+", choices=["min-max", "zmuv", "max", "sum", "rank"], default=["min-max"],
        help="score normalisations the convex combination is tried with (min-max is what search does)",
    )  # fmt: skip
    parser.add_argument(
        "--three", action="store_true", help="also fuse each adapter with BM25 and TF-IDF together"
    )
    parser.add_argument("--runs", default=None, help="keep each ranker's run in this folder and reuse it")
    parser.add_argument("--test", action="store_true", help="also score every run once on the test reviews")
    parser.add_argument("--max_test", type=int, default=None, help="a sample of test reviews (default: all)")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    record = Record("fusion")
    backbone = load_backbone(args.backbone)
    embedders = {}  # each adapter in each reading, named "adapter N" (+ ", windows")
    made_by = {}  # what a stored run of each must match: the adapter's and backbone's files, the reading
    for i, path in enumerate(args.adapters):
        head = load_adapter(path, backbone)
        print(f"adapter {i + 1}: {path}")
        for reading in args.readings:
            name = f"adapter {i + 1}" + (", windows" if reading == "windows" else "")
            embedders[name] = DocumentEmbedder(backbone, head=head, windows=reading == "windows")
            made_by[name] = {
                "adapter": files_of(path),
                "backbone": files_of(args.backbone),
                "reading": reading,
            }
    record.notes["adapters"] = {f"adapter {i + 1}": path for i, path in enumerate(args.adapters)}
    pool = {"source": str(Path(args.source).resolve()), "depth": args.depth}

    queries, docs = task(held_out_texts(args.source, args.val_fraction, args.seed))
    print(f"held-out training reviews: {len(queries):,} (choices are made here)")
    qrels = qrels_of(len(queries))
    held_out = {"split": "held-out", "val_fraction": args.val_fraction, "seed": args.seed}
    store = RunStore(args.runs, {**pool, **held_out})
    runs = ranker_runs(embedders, made_by, queries, docs, args.depth, store)
    chosen = choose(qrels, runs, list(embedders), args.norms, args.three)
    record.notes["chosen"] = {name: describe(params) for name, (*_, params) in chosen.items()}
    report(record, "held-out training reviews", qrels, {**runs, **fused(runs, chosen)}, chosen)
    record.save(args.out)

    if args.test:
        print()
        started = time.perf_counter()
        test = load_reviews(args.source, "test", args.max_test).texts
        queries, docs = task(test)
        qrels = qrels_of(len(queries))
        store = RunStore(args.runs, {**pool, "split": "test", "max_test": args.max_test})
        runs = ranker_runs(embedders, made_by, queries, docs, args.depth, store)
        report(record, f"test reviews ({len(queries):,})", qrels, {**runs, **fused(runs, chosen)}, chosen)
        record.notes["test_seconds"] = round(time.perf_counter() - started)
        record.save(args.out)


if __name__ == "__main__":
    main()
