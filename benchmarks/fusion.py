"""Lexical, learned sparse and fused rankings on the halves task, scored with ranx.

    python benchmarks/fusion.py --backbone RUN/backbone --adapters A1 [A2 ...] --source ../shared/data/imdb
    python benchmarks/fusion.py ... --adapters A --test --out docs/results/fusion.json   # once, at the end

The halves task (``benchmarks/retrieval.py``): the first half of a review is the query, its own second half
the one relevant document among all the second halves. Rankers, each keeping its top ``--depth`` per query:
BM25 (bm25s, the index's lexical side), TF-IDF cosine (scikit-learn, sublinear tf) and each adapter (learned
sparse vectors, dot product). Each adapter is fused with BM25 as ``search --mode hybrid`` fuses them
(``search``: each ranker's ``CANDIDATES`` (100), every candidate scored both ways, min-max, the weight
chosen on MRR@10 among 0.1, 0.2, ... 0.9), and with each lexical ranker two ways with ranx from the
rankers' runs: the convex combination of min-max normalised scores (``wsum``; a document outside one run's
top ``--depth`` scores 0 there, where search scores it) and reciprocal rank fusion (``rrf``), the weight
and RRF's k each chosen by ``ranx.optimize_fusion`` on MRR@10. ``--norms``
names the score normalisations the convex combination is tried with (``zmuv``: each query's scores to zero
mean and unit variance), ``--three`` adds the fusion of each adapter with both lexical rankers at once, and
``--runs DIR`` keeps every ranker's run on disk so that a second call with other fusions reads them instead of
embedding again. ``--expand N`` also ranks with each query followed by up to N tokens the backbone writes
after it (HyDE's hypothetical document, written by the project's own LM): every ranker again on those
queries, and each adapter fused with BM25 on them.

Choices are made on the reviews the adapters held out of training (train + unsupervised, their validation
split); ``--test`` then scores every run once on the 25,000 test reviews with the choices unchanged. Each
table gives MRR@10, recall@10, the ratio to BM25's MRR@10 and ranx's paired two-sided test against BM25
(Fisher's randomization test; p below 0.01 marked) and, given several adapters, the same test of each other
adapter's run against adapter 1's. Needs ``pip install -e ".[bench]"`` (ranx, scikit-learn).
"""

from __future__ import annotations

import argparse
import functools
import importlib.metadata
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from common import Record, add_out_argument, halves, held_out_texts, tfidf_matrices
from ranx import Qrels, Run, compare, evaluate, fuse, optimize_fusion
from tqdm import tqdm

from imdb_transformer.artifacts import atomic_path, cache_key, corpus_fingerprint, read_artifact
from imdb_transformer.core.backbone import Backbone, load_backbone
from imdb_transformer.core.head import load_adapter
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.generation import continuation, generate
from imdb_transformer.search import BM25Index
from imdb_transformer.search.ranking import CANDIDATES, hybrid_top
from imdb_transformer.text.imdb import load_reviews
from imdb_transformer.text.tokenizer import EOS_ID

METRICS = ["mrr@10", "recall@10"]
BLOCK = 512  # queries scored against every document at once (a dense block of BLOCK x documents floats)
# part of a stored run's key: raise it when a ranker (search's hybrid_top too) or run_of changes what it ranks
RUNS_FORMAT = 1
EXPANSIONS_FORMAT = 1  # part of stored expansions' key: raise it when expanded changes what it writes
Chosen = dict[str, tuple[list[str], str, str, dict]]  # fusion name: (runs fused, method, norm, params)
EXPANDED = ", expanded"  # the name of a ranker's run on the queries --expand lengthened
# How the backbone writes an expansion: its likeliest next token each step, the logit of a token the text
# holds already scaled 1.3-fold towards unlikely (greedy decoding of a small LM otherwise loops on a phrase)
EXPANSION = {"strategy": "greedy", "repetition_penalty": 1.3}
EXPAND_BATCH = 64  # queries the backbone continues at once
SEARCH = " + BM25, search"  # an adapter's run ranked as search --mode hybrid ranks, after its name
ALPHAS = [round(0.1 * i, 1) for i in range(1, 10)]  # the hybrid weights a search run is tried with
SEARCH_K = 10  # a search run's depth: the metrics read the top 10, as search -k 10 returns them
Searched = dict[str, dict[float, Run]]  # adapter name: its search run at each hybrid weight


def qrels_of(n: int) -> Qrels:
    """Query ``i``'s one relevant document is document ``i``."""
    return Qrels({f"q{i}": {f"d{i}": 1} for i in range(n)})


def run_of(name: str, scores_of: Callable[[range], np.ndarray], n: int, depth: int) -> Run:
    """A ranx run: each query's ``depth`` best documents by ``scores_of(rows)`` (a dense array of the
    queries ``rows`` against every document), zero scores left out. Equal scores are parted by rank (a
    step of 1e-9), because ranx re-sorts a run by score alone, with an unstable sort: without it a run
    read from disk could order its ties, and so score, differently from the run that was saved."""
    found: dict[str, dict[str, float]] = {}
    for start in range(0, n, BLOCK):
        rows = range(start, min(n, start + BLOCK))
        scores = torch.from_numpy(np.ascontiguousarray(scores_of(rows), dtype=np.float32))
        values, docs = scores.topk(min(depth, scores.size(1)), dim=1)
        for i, vals, ids in zip(rows, values.tolist(), docs.tolist(), strict=True):
            positive = sum(v > 0 for v in vals)  # sorted: the positive scores come first
            found[f"q{i}"] = ranked(ids[:positive], vals[:positive]) or {"d-1": 0.0}
    return Run(found, name=name)


def ranked(docs: list[int], scores: list[float]) -> dict[str, float]:
    """One query's ranking as a ranx run holds it: documents ``d{row}`` by score, best first, each score
    lowered by its rank times 1e-9 to part ties (see :func:`run_of`)."""
    return {f"d{d}": float(v) - r * 1e-9 for r, (d, v) in enumerate(zip(docs, scores, strict=True))}


class RunStore:
    """Each ranker's run kept in ``folder`` (``--runs``) under a key of what made it: the exact queries
    and documents, the depth, the ranker (an adapter by its embedder's fingerprint: weights, tokenizer,
    reading; a lexical ranker by its library's version; a search run also by its weight and candidates,
    its depth being :data:`SEARCH_K`), and :data:`RUNS_FORMAT`. The name a run has in
    this call's tables is not part of the key, so an adapter's run is read back whatever its place on the
    command line. A run is computed once for any number of fusion comparisons; with no folder every run is
    computed."""

    def __init__(self, folder: str | None, queries: list[str], docs: list[str], depth: int) -> None:
        self.folder = Path(folder) if folder else None
        self.n = len(queries)
        self.pool = (corpus_fingerprint(queries), corpus_fingerprint(docs), depth)

    def get(self, name: str, made_by: str, make: Callable[[], Run]) -> Run:
        if self.folder is None:
            run = make()
            run.name = name  # as a stored run is read back: named for this pool's table
            return run
        path = self.folder / f"{cache_key(RUNS_FORMAT, self.pool, made_by)}.json"
        if not path.exists():
            with atomic_path(path) as partial:  # a run is on disk whole or not at all
                make().save(str(partial), kind="json")
        else:
            print(f"{name}: read from {path}")
        # read back in both cases, so that a stored run and a fresh one are the same object
        run = read_artifact(
            path, lambda p: Run.from_file(str(p), kind="json", name=name), RuntimeError,
            "delete it to compute the run again",
        )  # fmt: skip
        if set(run.keys()) != {f"q{i}" for i in range(self.n)}:
            raise RuntimeError(f"{path} ranks other queries than this pool's; delete it to compute it again")
        return run


def versions(*packages: str) -> str:
    """The installed versions of ``packages``: part of a lexical run's key."""
    return " ".join(f"{p}=={importlib.metadata.version(p)}" for p in packages)


def lexical_runs(
    queries: list[str],
    docs: list[str],
    depth: int,
    store: RunStore,
    lexical: Callable[[], BM25Index],
    suffix: str = "",
) -> dict[str, Run]:
    """BM25's and TF-IDF cosine's runs over one pool (named with ``suffix``); ``lexical`` gives the BM25
    index of ``docs``, built once for the pool's BM25 and search runs."""

    def bm25() -> Run:
        index = lexical()
        return run_of(
            "BM25", lambda rows: np.stack([index.scores(queries[i]) for i in rows]), len(queries), depth
        )

    def tfidf() -> Run:
        q, d = tfidf_matrices(queries, docs)
        return run_of("TF-IDF", lambda rows: (q[rows.start : rows.stop] @ d.T).toarray(), len(queries), depth)

    return {
        "BM25" + suffix: store.get("BM25" + suffix, versions("bm25s"), bm25),
        "TF-IDF" + suffix: store.get("TF-IDF" + suffix, versions("scikit-learn"), tfidf),
    }


def vectors_of(embedder: DocumentEmbedder, texts: list[str]) -> sp.csr_matrix:
    """The texts' vectors as ``embed`` makes an index's (and a query's), as a CSR matrix."""
    vectors = embedder.embed(texts)
    return vectors if sp.issparse(vectors) else sp.csr_matrix(vectors.numpy())


def adapter_run(name: str, q: sp.csr_matrix, d: sp.csr_matrix, depth: int) -> Run:
    """The adapter's ranking from the queries' vectors ``q`` and the documents' ``d``: cosines."""
    return run_of(name, lambda rows: (q[rows.start : rows.stop] @ d.T).toarray(), q.shape[0], depth)


def search_runs(
    q: sp.csr_matrix, d: sp.csr_matrix, lexical: BM25Index, queries: list[str], weights: list[float]
) -> dict[float, Run]:
    """Each query's top :data:`SEARCH_K` as ``search --mode hybrid`` ranks them over an exactly searched
    index of the documents, at each of ``weights``: every document's cosine (``q`` against ``d``)
    and BM25 score, fused by the index's own :func:`~imdb_transformer.search.ranking.hybrid_top`. The
    scores are computed once for all weights."""
    found: dict[float, dict[str, dict[str, float]]] = {alpha: {} for alpha in weights}
    dt = d.T.tocsr()
    for start in tqdm(range(0, len(queries), BLOCK), desc="hybrid search", unit="block"):
        cosines = (q[start : start + BLOCK] @ dt).toarray()
        for i, dense in enumerate(cosines, start):
            bm25 = lexical.scores(queries[i])
            for alpha in weights:
                rows, scores = hybrid_top(dense, bm25, alpha, SEARCH_K)
                found[alpha][f"q{i}"] = ranked(rows.tolist(), scores.tolist())
    return {alpha: Run(run) for alpha, run in found.items()}


def ranker_runs(
    embedders: dict[str, DocumentEmbedder],
    queries: list[str],
    docs: list[str],
    depth: int,
    runs_dir: str | None,
    suffix: str = "",
    weights: Mapping[str, Sequence[float]] | None = None,
) -> tuple[dict[str, Run], Searched]:
    """BM25, TF-IDF and each adapter's run over one pool of queries and documents, each named with
    ``suffix``, and each adapter that ``weights`` names searched at the hybrid weights it lists. Within
    this call an adapter's vectors are computed once, and only for a run that is not stored."""
    store = RunStore(runs_dir, queries, docs, depth)
    lexical = functools.cache(lambda: BM25Index.build(docs))
    runs = lexical_runs(queries, docs, depth, store, lexical, suffix)
    searches = RunStore(runs_dir, queries, docs, SEARCH_K)  # a search run's depth is its own, not --depth
    searched: Searched = {}
    for name, embedder in embedders.items():
        vectors = functools.cache(lambda e=embedder: (vectors_of(e, queries), vectors_of(e, docs)))
        runs[name + suffix] = store.get(
            name + suffix,
            embedder.fingerprint,
            lambda n=name + suffix, v=vectors: adapter_run(n, *v(), depth),
        )
        mine = list((weights or {}).get(name, ()))
        if not mine:
            continue
        made = functools.cache(lambda v=vectors, w=mine: search_runs(*v(), lexical(), queries, w))
        maker = f"search {embedder.fingerprint} {versions('bm25s')} candidates {CANDIDATES}"
        searched[name] = {
            alpha: searches.get(name + SEARCH, f"{maker} alpha {alpha}", lambda a=alpha, m=made: m()[a])
            for alpha in mine
        }
    return runs, searched


def expanded(backbone: Backbone, queries: list[str], tokens: int, folder: str | None) -> list[str]:
    """Each query followed by up to ``tokens`` tokens the backbone writes after it (:data:`EXPANSION`;
    fewer where it ends the review): the rest of the review as the LM expects it, as HyDE (Gao et al., 2022)
    has an LM write a hypothetical document for a query. The prompt is the query's last ``block_size -
    tokens`` tokens (at least half the context), so the window never slides. Kept in ``folder``
    (``--runs``) under a key of the queries, the backbone (weights, tokenizer, context) and the settings."""
    context = check_expand(backbone, tokens)
    key = cache_key(
        EXPANSIONS_FORMAT, corpus_fingerprint(queries), backbone.fingerprint, context, tokens,
        EXPANSION, EXPAND_BATCH,
    )  # fmt: skip
    path = Path(folder) / f"expansions-{key}.json" if folder else None
    if path is not None and path.exists():
        print(f"expansions: read from {path}")
        return read_artifact(
            path, lambda p: checked_expansions(json.loads(p.read_text()), queries), RuntimeError,
            "delete it to write them again",
        )  # fmt: skip
    tok, keep = backbone.tokenizer, context - tokens
    prompts = [[EOS_ID, *ids][-keep:] for ids in tok.encode(queries)]
    order = sorted(range(len(queries)), key=lambda i: len(prompts[i]))  # like lengths together: less padding
    written: list[str] = [""] * len(queries)
    with tqdm(total=len(queries), desc="Expanding queries", unit="query") as bar:
        for start in range(0, len(order), EXPAND_BATCH):
            rows = order[start : start + EXPAND_BATCH]
            new = generate(backbone.decoder, [prompts[i] for i in rows], tokens, **EXPANSION)
            for i, ids in zip(rows, new, strict=True):
                written[i] = queries[i] + continuation(tok, prompts[i], ids)
            bar.update(len(rows))
    if path is not None:
        with atomic_path(path) as partial:
            partial.write_text(json.dumps(written))
    return written


def check_expand(backbone: Backbone, tokens: int) -> int:
    """The backbone's context, once ``tokens`` is known to fit an expansion: at most half of it, so the
    query keeps the other half; ``ValueError`` naming the range otherwise."""
    context = backbone.decoder.config.block_size
    if not 0 < tokens <= context // 2:
        raise ValueError(
            f"--expand {tokens} is out of range: the backbone reads {context} tokens and the query keeps at "
            f"least half of them, so 1 <= --expand <= {context // 2} (0 turns it off)"
        )
    return context


def checked_expansions(found: object, queries: list[str]) -> list[str]:
    """Stored expansions as read, refused unless they are one text per query that starts with it."""
    if not (
        isinstance(found, list)
        and len(found) == len(queries)
        and all(isinstance(t, str) and t.startswith(q) for t, q in zip(found, queries, strict=True))
    ):
        raise ValueError(f"they are not {len(queries):,} texts, each starting with its query")
    return found


def task(texts: list[str]) -> tuple[list[str], list[str]]:
    queries, docs = zip(*(halves(t) for t in texts), strict=True)
    return list(queries), list(docs)


def combinations(adapters: list[str], three: bool, expand: bool) -> list[tuple[str, ...]]:
    """The runs each fusion joins: every adapter with each lexical ranker, with both if ``three``, and, if
    ``expand``, every adapter's run on the expanded queries with BM25's on them."""
    combos = [(adapter, lexical) for adapter in adapters for lexical in ("BM25", "TF-IDF")]
    combos += [(adapter, "BM25", "TF-IDF") for adapter in adapters if three]
    combos += [(adapter + EXPANDED, "BM25" + EXPANDED) for adapter in adapters if expand]
    return combos


def choose(qrels: Qrels, runs: dict[str, Run], combos: list[tuple[str, ...]], norms: list[str]) -> Chosen:
    """Each fusion of ``combos`` by the convex combination under each normalisation and by RRF: (the runs
    fused, method, norm, chosen params)."""
    methods = [("wsum", norm) for norm in norms] + [("rrf", "min-max")]
    chosen = {}
    for members in combos:
        for method, norm in methods:
            params = optimize_fusion(
                qrels, [runs[m] for m in members], norm=norm, method=method, metric="mrr@10"
            )
            name = " + ".join(members) + f", {method}" + (f" ({norm})" if norm != "min-max" else "")
            chosen[name] = (list(members), method, norm, params)
    return chosen


def fused(runs: dict[str, Run], chosen: Chosen) -> dict[str, Run]:
    out = {}
    for name, (members, method, norm, params) in chosen.items():
        out[name] = fuse([runs[m] for m in members], norm=norm, method=method, params=params)
        out[name].name = name
    return out


def best_alphas(qrels: Qrels, searched: Searched) -> dict[str, float]:
    """Each adapter's hybrid weight whose search run scores the highest MRR@10 (the lowest on a tie)."""
    return {
        name: max(by_alpha, key=lambda a, r=by_alpha: (evaluate(qrels, r[a], "mrr@10"), -a))
        for name, by_alpha in searched.items()
    }


def report(record: Record, title: str, qrels: Qrels, runs: dict[str, Run], described: dict[str, str]) -> None:
    """One table: every run's metrics, its ratio to BM25, the paired test against BM25 and its chosen
    parameters (``described``: run name to text); with more than one adapter, also each other adapter's run
    tested against the same run made with adapter 1."""
    names = list(runs)
    scores = {name: evaluate(qrels, runs[name], METRICS) for name in names}
    base = scores["BM25"]["mrr@10"]
    paired = {name: same_with_first_adapter(name, runs) for name in names}
    against_first = any(paired.values())
    columns = ["run", "MRR@10", "recall@10", "vs BM25", "p vs BM25 (MRR@10)", "chosen"]
    table = record.table(title, columns + (["p vs adapter 1 (MRR@10)"] if against_first else []))
    for name in ["BM25", *(n for n in names if n != "BM25")]:
        p = "-" if name == "BM25" else p_text(p_against(qrels, runs["BM25"], runs[name]))
        params = described.get(name, "-")
        mrr, recall = scores[name]["mrr@10"], scores[name]["recall@10"]
        row = [name, f"{mrr:.3f}", f"{recall:.3f}", f"{mrr / base:.2f}x", p, params]
        if against_first:
            first = paired[name]
            row.append(p_text(p_against(qrels, runs[first], runs[name])) if first else "-")
        table.add(*row)


def same_with_first_adapter(name: str, runs: dict[str, Run]) -> str | None:
    """For a run of adapter 2, 3, ... (``adapter 2, windows + BM25, wsum``), the same run made with adapter 1,
    if there is one; None for any other run."""
    found = re.match(r"adapter (\d+)", name)
    if found is None or found.group(1) == "1":
        return None
    first = "adapter 1" + name[found.end() :]
    return first if first in runs else None


def p_text(p: float) -> str:
    """A p-value as the tables print it, starred below 0.01."""
    return (f"{p:.2g}" if p > 0 else "<0.001") + (" *" if p < 0.01 else "")


def p_against(qrels: Qrels, base: Run, run: Run) -> float:
    """Fisher's paired randomization test of ``run`` against ``base`` on MRR@10, by ranx (1,000 permutations).
    One pair per call: ``ranx.compare`` tests every pair of the runs it is given, where a table needs each
    run against one other only. The p-value is a Monte Carlo estimate, and ranx's permutations depend on
    the tests drawn before them in the process, so it may differ by a few hundredths from one taken among
    other runs; on one thread the same calls give the same p-values."""
    compared = compare(qrels, [base, run], METRICS, stat_test="fisher", max_p=0.01, threads=1)
    return compared.comparisons[run.name, base.name]["mrr@10"]["p_value"]


def describe(params: dict) -> str:
    """ranx's chosen fusion parameters as plain numbers: ``weights 0.7/0.3`` or ``k 10``."""
    if "weights" in params:
        return "weights " + "/".join(f"{float(w):g}" for w in params["weights"])
    return ", ".join(f"{k} {float(v):g}" for k, v in params.items())


def pool_runs(
    backbone: Backbone,
    embedders: dict[str, DocumentEmbedder],
    queries: list[str],
    docs: list[str],
    depth: int,
    runs_dir: str | None,
    expand: int,
    weights: Mapping[str, Sequence[float]] | None = None,
) -> tuple[dict[str, Run], Searched]:
    """Every ranker's run over one pool, and again on the queries expanded by ``expand`` tokens (if any);
    each adapter's search runs at the weights ``weights`` gives it (on the plain queries)."""
    runs, searched = ranker_runs(embedders, queries, docs, depth, runs_dir, weights=weights)
    if expand:
        longer = expanded(backbone, queries, expand, runs_dir)
        runs |= ranker_runs(embedders, longer, docs, depth, runs_dir, EXPANDED)[0]
    return runs, searched


def with_search(runs: dict[str, Run], searched: Searched, alphas: dict[str, float]) -> dict[str, Run]:
    """``runs`` and each adapter's search run at its chosen weight, after the adapter's own run."""
    out = {}
    for name, run in runs.items():
        out[name] = run
        if name in alphas:
            out[name + SEARCH] = searched[name][alphas[name]]
    return out


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
        help="score normalisations the convex combination is tried with (default min-max, what search "
        "does; name it too to compare it with others)",
    )  # fmt: skip
    parser.add_argument(
        "--three", action="store_true", help="also fuse each adapter with BM25 and TF-IDF together"
    )
    parser.add_argument(
        "--runs", default=None,
        help="keep each ranker's run (and --expand's expansions) in this folder, keyed by the queries, "
        "documents, depth and ranker (an adapter by its weights and reading); a stored run with the same key "
        "is read, not computed",
    )  # fmt: skip
    parser.add_argument(
        "--expand", type=int, default=0, metavar="TOKENS",
        help="also rank with each query followed by up to this many tokens the backbone writes after it "
        "(greedy, repeats discouraged): every ranker again, and each adapter fused with BM25, on those "
        "queries; at most half the backbone's context; 0 (default) does not",
    )  # fmt: skip
    parser.add_argument("--test", action="store_true", help="also score every run once on the test reviews")
    parser.add_argument("--max_test", type=int, default=None, help="a sample of test reviews (default: all)")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    record = Record("fusion")
    backbone = load_backbone(args.backbone)
    if args.expand:
        try:  # before any ranker runs: the expansions come after the plain queries' runs
            check_expand(backbone, args.expand)
        except ValueError as err:
            parser.error(str(err))
    embedders = {}  # each adapter in each reading, named "adapter N" (+ ", windows")
    for i, path in enumerate(args.adapters):
        head = load_adapter(path, backbone)
        print(f"adapter {i + 1}: {path}")
        for reading in args.readings:
            name = f"adapter {i + 1}" + (", windows" if reading == "windows" else "")
            embedders[name] = DocumentEmbedder(backbone, head=head, windows=reading == "windows")
    record.notes["adapters"] = {f"adapter {i + 1}": path for i, path in enumerate(args.adapters)}

    queries, docs = task(held_out_texts(args.source, args.val_fraction, args.seed))
    print(f"held-out training reviews: {len(queries):,} (choices are made here)")
    qrels = qrels_of(len(queries))
    weights = dict.fromkeys(embedders, ALPHAS)  # held-out: each adapter searched at every weight
    runs, searched = pool_runs(
        backbone, embedders, queries, docs, args.depth, args.runs, args.expand, weights
    )
    alphas = best_alphas(qrels, searched)
    chosen = choose(qrels, runs, combinations(list(embedders), args.three, args.expand > 0), args.norms)
    described = {name + SEARCH: f"alpha {alpha:g}" for name, alpha in alphas.items()}
    described |= {name: describe(params) for name, (*_, params) in chosen.items()}
    record.notes["chosen"] = described
    every = with_search(runs, searched, alphas) | fused(runs, chosen)
    report(record, "held-out training reviews", qrels, every, described)
    record.save(args.out)

    if args.test:
        print()
        started = time.perf_counter()
        test = load_reviews(args.source, "test", args.max_test).texts
        queries, docs = task(test)
        qrels = qrels_of(len(queries))
        weights = {name: [alpha] for name, alpha in alphas.items()}  # the weight chosen for it on held-out
        runs, searched = pool_runs(
            backbone, embedders, queries, docs, args.depth, args.runs, args.expand, weights
        )
        every = with_search(runs, searched, alphas) | fused(runs, chosen)
        report(record, f"test reviews ({len(queries):,})", qrels, every, described)
        record.notes["test_seconds"] = round(time.perf_counter() - started)
        record.save(args.out)


if __name__ == "__main__":
    main()
