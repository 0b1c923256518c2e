"""Retrieval quality of every search method on tasks built from IMDB, and embedding throughput.

Tasks (the test split; nothing is chosen on it):

- **halves**: the first half of each test review is a query; its second half is the one relevant document
  among all the test reviews' second halves. MRR@10 and recall@10.
- **kNN sentiment**: for a sample of whole test reviews, the share of each one's 10 nearest other reviews
  (by the method's own similarity) that carry its label. Labels are only read to score, never to choose.

The hybrid weight ``alpha`` is chosen on the halves task built from held-out training reviews (the
embedding adapter's validation split of train + unsupervised, which it never trained on), then used
unchanged on test. Embedding throughput compares the default path (mean pooling) with the adapter,
alternating rounds, medians.

    python benchmarks/retrieval.py --backbone lightning_logs/version_0/backbone \\
        --adapter lightning_logs/version_1/adapter --source ../shared/data/imdb
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from common import (
    Record,
    add_out_argument,
    dense_top,
    encode,
    halves,
    held_out_texts,
    index_top,
    mrr_recall,
    tfidf_matrices,
)

from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.core.head import load_adapter
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.search import BM25Index, SemanticIndex, review_table
from imdb_transformer.text.imdb import load_reviews

TOPICS = [
    "classic horror movie that is terrifying",
    "a musical with great songs and dancing",
    "war film about soldiers in world war II",
    "animated cartoon for kids and families",
    "Clint Eastwood western",
]


def whitening(vectors: torch.Tensor, dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-whitening (Su et al. 2021): centre, then rotate and scale to unit covariance, top ``dims``."""
    mean = vectors.mean(0, keepdim=True)
    u, s, _ = torch.linalg.svd(torch.cov((vectors - mean).T))
    return mean, u[:, :dims] / s[:dims].sqrt()


def tfidf_top(queries: list[str], docs: list[str], k: int, exclude_self: bool = False) -> np.ndarray:
    q, d = tfidf_matrices(queries, docs)
    out = []
    for start in range(0, q.shape[0], 1024):
        scores = (q[start : start + 1024] @ d.T).toarray()
        if exclude_self:
            scores[np.arange(len(scores)), np.arange(start, start + len(scores))] = -np.inf
        out.append(np.argsort(-scores, axis=1)[:, :k])
    return np.concatenate(out)


def agreement(top: np.ndarray, labels: np.ndarray) -> float:
    return float((labels[top[:, :10]] == labels[:, None]).mean())


def throughput(embedders: dict[str, DocumentEmbedder], texts: list[str], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in embedders}
    for e in embedders.values():
        e.embed(texts[:64], progress=False)  # warm up
    for _ in range(rounds):
        for name, e in embedders.items():
            start = time.perf_counter()
            e.embed(texts, progress=False)
            times[name].append(time.perf_counter() - start)
    return {name: len(texts) / statistics.median(t) for name, t in times.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--adapter", default=None)
    parser.add_argument("--source", default="stanfordnlp/imdb")
    parser.add_argument("--max_test", type=int, default=None, help="a sample of test reviews (default: all)")
    parser.add_argument("--knn_reviews", type=int, default=5000, help="whole test reviews for kNN sentiment")
    parser.add_argument(
        "--val_fraction", type=float, default=0.2, help="as the adapter's data module held out"
    )
    parser.add_argument("--seed", type=int, default=1234, help="as the adapter's data module split")
    parser.add_argument("--whiten_dims", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--speed_reviews", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    record = Record("retrieval")

    backbone = load_backbone(args.backbone)
    head = load_adapter(args.adapter, backbone) if args.adapter else None
    cpu = platform.processor() or platform.machine()
    amx = torch.cpu._is_amx_tile_supported() if hasattr(torch.cpu, "_is_amx_tile_supported") else False
    print(
        f"backbone {args.backbone} ({backbone.decoder.config.n_layer} x {backbone.decoder.config.n_embd}); "
        f"adapter {args.adapter}; torch {torch.__version__}, {os.cpu_count()} CPU threads ({cpu}, "
        f"SIMD {torch.backends.cpu.get_cpu_capability()}, AMX {amx})"
    )

    # held-out training reviews: where alpha is chosen
    val_texts = held_out_texts(args.source, args.val_fraction, args.seed)
    train = load_reviews(args.source, "train")  # its first reviews time the embedders
    val_q, val_d = zip(*(halves(t) for t in val_texts), strict=True)
    test = load_reviews(args.source, "test", args.max_test)
    test_q, test_d = zip(*(halves(t) for t in test.texts), strict=True)
    print(f"halves task: {len(val_texts):,} held-out training reviews (alpha), {len(test_q):,} test reviews")

    vq, vd = (
        encode(backbone, head, list(val_q), args.batch_size),
        encode(backbone, head, list(val_d), args.batch_size),
    )
    tq, td = (
        encode(backbone, head, list(test_q), args.batch_size),
        encode(backbone, head, list(test_d), args.batch_size),
    )
    mean, w = whitening(torch.cat([vq["mean"], vd["mean"]]), args.whiten_dims)  # fit on training text only
    for enc in (vq, vd, tq, td):
        enc["whitened_mean"] = F.normalize((enc["mean"] - mean) @ w, dim=-1)

    dense = "adapter" if head is not None else "mean"
    val_lex, test_lex = BM25Index.build(list(val_d)), BM25Index.build(list(test_d))
    val_index = SemanticIndex(None, vd[dense], review_table([""] * len(val_d)), lexical=val_lex)
    scores = {}
    for alpha in [round(a * 0.1, 1) for a in range(11)]:
        val_index.alpha = alpha
        scores[alpha] = mrr_recall(index_top(val_index, vq[dense], list(val_q), "hybrid", 10))[0]
    alpha = max(scores, key=scores.get)
    record.notes["alpha_mrr10_held_out"] = {str(a): round(s, 4) for a, s in scores.items()}
    record.notes["chosen_alpha"] = alpha
    print(
        "alpha on held-out training reviews (MRR@10): "
        + ", ".join(f"{a}: {s:.3f}" for a, s in scores.items())
    )
    print(f"chosen alpha = {alpha}")

    rows = {}
    rows["BM25 (bm25s)"] = mrr_recall(
        index_top(
            SemanticIndex(None, td[dense], review_table([""] * len(test_d)), lexical=test_lex),
            None,
            list(test_q),
            "lexical",
            10,
        )
    )
    rows["TF-IDF cosine (scikit-learn)"] = mrr_recall(tfidf_top(list(test_q), list(test_d), 10))
    for name in ("mean", "weighted_mean", "whitened_mean", "adapter"):
        if name in tq:
            rows[f"dense: {name.replace('_', ' ')}"] = mrr_recall(dense_top(tq[name], td[name], 10))
    hybrid = SemanticIndex(None, td[dense], review_table([""] * len(test_d)), lexical=test_lex, alpha=alpha)
    rows[f"hybrid: {dense} + BM25, alpha {alpha}"] = mrr_recall(
        index_top(hybrid, tq[dense], list(test_q), "hybrid", 10)
    )

    # kNN sentiment over whole reviews
    knn = load_reviews(args.source, "test", args.knn_reviews, seed=args.seed + 1)
    labels = np.array(knn.labels)
    kw = encode(backbone, head, knn.texts, args.batch_size)
    kw["whitened_mean"] = F.normalize((kw["mean"] - mean) @ w, dim=-1)
    knn_rows = {
        "BM25 (bm25s)": None,
        "TF-IDF cosine (scikit-learn)": agreement(tfidf_top(knn.texts, knn.texts, 10, True), labels),
    }
    knn_index = SemanticIndex(
        None, kw[dense], review_table([""] * len(knn.texts)), lexical=BM25Index.build(knn.texts), alpha=alpha
    )
    knn_rows["BM25 (bm25s)"] = agreement(index_top(knn_index, None, knn.texts, "lexical", 10, True), labels)
    for name in ("mean", "weighted_mean", "whitened_mean", "adapter"):
        if name in kw:
            knn_rows[f"dense: {name.replace('_', ' ')}"] = agreement(
                dense_top(kw[name], kw[name], 10, True), labels
            )
    knn_rows[f"hybrid: {dense} + BM25, alpha {alpha}"] = agreement(
        index_top(knn_index, kw[dense], knn.texts, "hybrid", 10, True), labels
    )

    print()
    knn_column = f"kNN-10 sentiment agreement ({len(knn.texts):,} reviews)"
    table = record.table("methods", ["method", "halves MRR@10", "halves recall@10", knn_column])
    for name, (mrr, recall) in rows.items():
        table.add(name, f"{mrr:.3f}", f"{recall:.3f}", f"{knn_rows[name]:.3f}")

    # top 5 for topical queries, over the same whole reviews: dense before, dense after, hybrid
    print()
    before = DocumentEmbedder(backbone)
    after = DocumentEmbedder(backbone, head=head) if head is not None else None
    for query in TOPICS:
        print(f"**{query}**\n")
        columns = ["#", "dense before (mean pooling)"]
        columns += ["dense after (adapter)", "hybrid"] if after is not None else []
        table = record.table(f"top 5: {query}", columns)
        cols = [dense_top(before.embed([query], progress=False), kw["mean"], 5)[0]]
        if after is not None:
            vector = after.embed([query], progress=False)
            cols.append(dense_top(vector, kw["adapter"], 5)[0])
            cols.append(index_top(knn_index, vector, [query], "hybrid", 5)[0])
        for rank in range(5):
            cells = [
                _short(knn.texts[col[rank]]) + f" ({'pos' if labels[col[rank]] else 'neg'})" for col in cols
            ]
            table.add(rank + 1, *cells)
        print()

    embedders = {"mean pooling (default)": before}
    if after is not None:
        embedders["adapter"] = after
    rates = throughput(embedders, train.texts[: args.speed_reviews], args.rounds)
    table = record.table("embedding throughput", ["embedder", "reviews/s"])
    for name, rate in rates.items():
        table.add(name, f"{rate:.1f}")
    record.save(args.out)


def _short(text: str, width: int = 70) -> str:
    text = text.replace("|", "/")
    return text if len(text) <= width else text[: width - 1].rsplit(" ", 1)[0] + "…"


if __name__ == "__main__":
    main()
