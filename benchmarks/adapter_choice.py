"""Compare embedding adapters on held-out training reviews, where choices are made (never on test).

    python benchmarks/adapter_choice.py --backbone lightning_logs/version_0/backbone \\
        --adapters lightning_logs/version_1/adapter lightning_logs/version_2/adapter \\
        --source ../shared/data/imdb

The halves task of ``benchmarks/retrieval.py`` built from the reviews the adapters held out (train +
unsupervised, their validation split): MRR@10 and recall@10 of each adapter alone, and MRR@10 of hybrid
search (adapter + BM25) at each weight ``alpha``, the vectors made as ``embed`` makes them. The evaluation
helpers are in ``common.py``.
"""

from __future__ import annotations

import argparse

from common import Record, add_out_argument, dense_top, halves, held_out_texts, index_top, mrr_recall

from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.core.head import load_adapter
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.search import BM25Index, SemanticIndex, review_table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--adapters", nargs="+", required=True)
    parser.add_argument("--source", default="stanfordnlp/imdb")
    parser.add_argument(
        "--val_fraction", type=float, default=0.2, help="as the adapters' data module held out"
    )
    parser.add_argument("--seed", type=int, default=1234, help="as the adapters' data module split")
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.4, 0.5, 0.6, 0.7])
    add_out_argument(parser)
    args = parser.parse_args(argv)
    record = Record("adapter_choice")

    backbone = load_backbone(args.backbone)
    val = held_out_texts(args.source, args.val_fraction, args.seed)
    queries, docs = (list(half) for half in zip(*(halves(t) for t in val), strict=True))
    lexical = BM25Index.build(docs)
    print()
    columns = ["adapter", "blocks read", "alone MRR@10", "alone recall@10"]
    table = record.table("adapters", columns + [f"hybrid MRR@10, alpha {a}" for a in args.alphas])
    for path in args.adapters:
        head = load_adapter(path, backbone)
        embedder = DocumentEmbedder(backbone, head=head)  # as `embed` reads reviews: whole, cleaned
        q, d = embedder.embed(queries), embedder.embed(docs)
        alone = mrr_recall(dense_top(q, d, 10))
        index = SemanticIndex(None, d, review_table([""] * len(docs)), lexical=lexical)
        fused = []
        for alpha in args.alphas:
            index.alpha = alpha
            fused.append(mrr_recall(index_top(index, q, queries, "hybrid", 10))[0])
        scores = [f"{alone[0]:.3f}", f"{alone[1]:.3f}", *(f"{m:.3f}" for m in fused)]
        table.add(path, head.config.n_states - 1, *scores)
    record.save(args.out)


if __name__ == "__main__":
    main()
