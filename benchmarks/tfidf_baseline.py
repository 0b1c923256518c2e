"""TF-IDF + logistic regression on IMDB: the baseline the sentiment classifier must beat.

    pip install -e ".[bench]"
    python benchmarks/tfidf_baseline.py --source ../shared/data/imdb

The regularisation strength C is chosen on a validation split carved out of train (the same 10%
the classifier's ReviewsDataModule holds out, by the same seed); the model is then refit on all of
train and scored once on the 25,000 test reviews. Prints one table.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import Record, add_out_argument, fit_tfidf
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

from imdb_transformer.text.imdb import load_reviews


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="stanfordnlp/imdb", help="dataset id or local parquet folder")
    parser.add_argument(
        "--seed", type=int, default=1234, help="seed of the validation split (as ReviewsDataModule)"
    )
    parser.add_argument("--val_fraction", type=float, default=0.1)
    add_out_argument(parser)
    args = parser.parse_args(argv)
    record = Record("tfidf_baseline")

    train, test = load_reviews(args.source, "train"), load_reviews(args.source, "test")
    x_train, y_train = train.texts, np.array(train.labels)
    x_test, y_test = test.texts, np.array(test.labels)
    fitted = fit_tfidf(x_train, y_train, args.seed, args.val_fraction)
    prob = fitted["model"].predict_proba(x_test)[:, 1]
    pred = (prob > 0.5).astype(int)

    record.notes["val_accuracy_by_C"] = {f"{c:g}": round(acc, 4) for c, acc in fitted["val_by_c"].items()}
    columns = ["model", "C (chosen on val)", "val acc", "test acc", "test F1", "test AUROC", "fit time"]
    table = record.table("sentiment", columns)
    val_acc = fitted["val_by_c"][fitted["c"]]
    acc, f1, auroc = accuracy_score(y_test, pred), f1_score(y_test, pred), roc_auc_score(y_test, prob)
    scores = [f"{val_acc:.4f}", f"{acc:.4f}", f"{f1:.4f}", f"{auroc:.4f}", f"{fitted['seconds']:.0f} s"]
    table.add("TF-IDF (1-2 grams) + logistic regression", f"{fitted['c']:g}", *scores)
    record.save(args.out)


if __name__ == "__main__":
    main()
