"""Sentiment classifiers side by side on the official test split, with paired significance tests.

    pip install -e ".[bench]"
    python benchmarks/sentiment_test.py --source ../shared/data/imdb --tfidf \
        --classifier "pooled=runs/pooled.ckpt" --classifier "pooled + word votes=runs/both.ckpt"

Each classifier (a checkpoint of `fit --config configs/classify.yaml`, chosen on validation) and, with
--tfidf, TF-IDF + logistic regression (C chosen on a validation split of train) reads the 25,000 test
reviews once (classifiers over the same frozen backbone share one pass of it). Prints each one's
accuracy, F1 and AUROC, then McNemar's exact test for every pair: how many reviews only one of the two
got right, and the two-sided p-value that both are equally accurate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import Record, add_ensembles, add_out_argument, ensemble_argument, fit_tfidf, mcnemar_table

from imdb_transformer.ensemble import SentimentEnsemble
from imdb_transformer.text.imdb import load_reviews


def named(value: str) -> tuple[str, str]:
    """``NAME=PATH``, or a bare PATH (named by itself; checkpoint names often hold ``=`` themselves)."""
    name, sep, path = value.partition("=")
    return (name, path) if sep and not Path(value).exists() else (value, value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="stanfordnlp/imdb", help="dataset id or local parquet folder")
    parser.add_argument(
        "--classifier", action="append", type=named, default=[], help="NAME=CHECKPOINT; repeat for each"
    )
    parser.add_argument("--tfidf", action="store_true", help="add TF-IDF + logistic regression")
    parser.add_argument(
        "--ensemble", action="append", type=ensemble_argument, default=[],
        help="NAME=A|B: also the mean of classifiers A and B's probabilities; repeat",
    )  # fmt: skip
    parser.add_argument("--max_reviews", type=int, default=None, help="a sample of the test split")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    add_out_argument(parser)
    args = parser.parse_args(argv)
    if not args.classifier and not args.tfidf:
        parser.error("give at least one --classifier, or --tfidf")
    record = Record("sentiment_test")

    test = load_reviews(args.source, "test", args.max_reviews)
    labels = np.array(test.labels)
    probabilities: dict[str, np.ndarray] = {}
    if args.tfidf:
        train = load_reviews(args.source, "train")
        fitted = fit_tfidf(train.texts, np.array(train.labels))
        record.notes["tfidf_C"] = fitted["c"]
        probabilities["TF-IDF + LR"] = fitted["model"].predict_proba(test.texts)[:, 1]
    if args.classifier:  # one ensemble: classifiers over one frozen backbone share its pass
        started = time.perf_counter()
        ensemble = SentimentEnsemble([path for _, path in args.classifier], args.device)
        members = ensemble.member_probabilities(test.texts, args.batch_size)
        record.notes["classifiers_seconds"] = round(time.perf_counter() - started, 1)
        for (name, _), member in zip(args.classifier, members, strict=True):
            probabilities[name] = member.numpy()

    add_ensembles(probabilities, args.ensemble)
    from sklearn.metrics import f1_score, roc_auc_score

    table = record.table("test", ["model", f"test acc ({len(labels):,} reviews)", "F1", "AUROC"])
    right = {}
    for name, prob in probabilities.items():
        predicted = (prob > 0.5).astype(int)
        right[name] = predicted == labels
        table.add(name, f"{right[name].mean():.2%}", f"{f1_score(labels, predicted):.4f}",
                  f"{roc_auc_score(labels, prob):.4f}")  # fmt: skip
    print()
    mcnemar_table(record, right)
    record.save(args.out)


if __name__ == "__main__":
    main()
