"""TF-IDF + logistic regression on IMDB: the baseline the sentiment classifier must beat.

    pip install -e ".[bench]"
    python benchmarks/tfidf_baseline.py --source ../shared/data/imdb

The regularisation strength C is chosen on a validation split carved out of train (the same 10%
the classifier's ReviewsDataModule holds out, by the same seed); the model is then refit on all of
train and scored once on the 25,000 test reviews. Prints one table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import Record, add_out_argument
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.pipeline import make_pipeline

from imdb_transformer.text.imdb import clean_text, load_split


def tfidf_logreg(c: float):
    return make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=500_000),
        LogisticRegression(C=c, max_iter=2000),
    )


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

    train, test = load_split(args.source, "train"), load_split(args.source, "test")
    x_train, y_train = [clean_text(t) for t in train["text"]], np.array(train["label"])
    x_test, y_test = [clean_text(t) for t in test["text"]], np.array(test["label"])
    order = np.random.default_rng(args.seed).permutation(len(x_train))
    n_val = max(1, round(len(order) * args.val_fraction))
    val_idx, fit_idx = order[:n_val], order[n_val:]

    rows = []
    for c in (1.0, 4.0, 16.0):
        model = tfidf_logreg(c).fit([x_train[i] for i in fit_idx], y_train[fit_idx])
        rows.append((c, accuracy_score(y_train[val_idx], model.predict([x_train[i] for i in val_idx]))))
    best_c = max(rows, key=lambda r: r[1])[0]

    start = time.perf_counter()
    model = tfidf_logreg(best_c).fit(x_train, y_train)
    seconds = time.perf_counter() - start
    prob = model.predict_proba(x_test)[:, 1]
    pred = (prob > 0.5).astype(int)

    record.notes["val_accuracy_by_C"] = {f"{c:g}": round(acc, 4) for c, acc in rows}
    columns = ["model", "C (chosen on val)", "val acc", "test acc", "test F1", "test AUROC", "fit time"]
    table = record.table("sentiment", columns)
    val_acc = dict(rows)[best_c]
    acc, f1, auroc = accuracy_score(y_test, pred), f1_score(y_test, pred), roc_auc_score(y_test, prob)
    scores = [f"{val_acc:.4f}", f"{acc:.4f}", f"{f1:.4f}", f"{auroc:.4f}", f"{seconds:.0f} s"]
    table.add("TF-IDF (1-2 grams) + logistic regression", f"{best_c:g}", *scores)
    record.save(args.out)


if __name__ == "__main__":
    main()
