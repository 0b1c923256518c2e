"""What the benchmark scripts share: printing their tables, writing them as a JSON record (``--out``),
and the retrieval evaluation (``retrieval.py`` and ``adapter_choice.py``).

A record is one JSON object: ``benchmark`` (the script's name), ``tables`` (each table's ``columns``
and ``rows``, the cells as printed), ``notes`` (other figures the script prints), and what says where
the figures came from: ``command``, ``date`` (UTC), ``commit`` (``git rev-parse HEAD``, null outside a
checkout), ``hardware`` (the CPU's bf16 features, the GPU's name) and the ``torch`` version.

    python benchmarks/decode_speed.py --checkpoint RUN/backbone --out docs/results/decode_speed.json
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from imdb_transformer.core.pooling import pool
from imdb_transformer.hardware import describe_cpu
from imdb_transformer.search import SemanticIndex, Vectors
from imdb_transformer.text.batching import collate_reviews
from imdb_transformer.text.imdb import validation_rows

REPO = Path(__file__).resolve().parents[1]
SCHEMA = "imdb_transformer.benchmark/1"


def add_out_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--out PATH`` option every benchmark takes."""
    parser.add_argument(
        "--out", default=None, help="also write the figures as a JSON record here (docs/results/NAME.json)"
    )


class Table:
    """A markdown table, printed row by row as it is measured, and kept for the record."""

    def __init__(self, columns: list[str]) -> None:
        self.columns = list(columns)
        self.rows: list[list[str]] = []
        print("| " + " | ".join(self.columns) + " |")
        print("|" + " --- |" * len(self.columns))

    def add(self, *cells: object) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{len(cells)} cells for {len(self.columns)} columns")
        row = [str(cell) for cell in cells]
        self.rows.append(row)
        print("| " + " | ".join(row) + " |", flush=True)

    def as_dict(self) -> dict:
        return {"columns": self.columns, "rows": self.rows}


class Record:
    """The tables and notes of one benchmark run, written by :meth:`save` where ``--out`` says."""

    def __init__(self, benchmark: str) -> None:
        self.benchmark = benchmark
        self.tables: dict[str, Table] = {}
        self.notes: dict[str, object] = {}

    def table(self, name: str, columns: list[str]) -> Table:
        """A new table, printed now and kept under ``name``."""
        self.tables[name] = Table(columns)
        return self.tables[name]

    def as_dict(self) -> dict:
        return {
            "schema": SCHEMA,
            "benchmark": self.benchmark,
            "command": shlex.join(["python", *sys.argv]),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": git_commit(),
            "hardware": hardware(),
            "torch": torch.__version__,
            "tables": {name: table.as_dict() for name, table in self.tables.items()},
            "notes": self.notes,
        }

    def save(self, path: str | Path | None) -> None:
        """Write the record to ``path`` (nothing when it is None): beside it first, then renamed into
        place, so an interrupted run leaves the previous record whole."""
        if path is None:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(dumps(self.as_dict()) + "\n")
        os.replace(partial, path)
        print(f"record: {path}")


def dumps(record: dict) -> str:
    """``record`` as indented JSON, with each list of plain values (a table's columns, a row) on one line."""
    flat: dict[str, str] = {}

    def mark(value: object) -> object:
        if isinstance(value, dict):
            return {k: mark(v) for k, v in value.items()}
        if isinstance(value, list):
            if all(v is None or isinstance(v, str | int | float | bool) for v in value):
                key = f"\0{len(flat)}\0"
                flat[json.dumps(key)] = json.dumps(value, ensure_ascii=False)
                return key
            return [mark(v) for v in value]
        return value

    text = json.dumps(mark(record), indent=2, ensure_ascii=False)
    for key, line in flat.items():
        text = text.replace(key, line, 1)
    return text


def git_commit() -> str | None:
    """The checkout's commit (``git rev-parse HEAD``), or None where there is no git or no checkout."""
    try:
        found = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if found.returncode != 0:
        return None
    return found.stdout.strip() or None


def hardware() -> dict[str, str | None]:
    """The CPU with its SIMD level and bf16 features, and the GPU's name where there is one."""
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": describe_cpu(), "gpu": gpu}


# --- retrieval evaluation: the halves task and ranking through the index ---------------------------


def held_out_texts(source: str, val_fraction: float, seed: int) -> list[str]:
    """The training reviews (train + unsupervised) the embedding adapters held out of training, by their
    data module's ``val_fraction`` and ``seed``: where retrieval choices are made."""
    from imdb_transformer.data.crops import held_out
    from imdb_transformer.text.imdb import load_reviews

    pool = load_reviews(source, "train").texts + load_reviews(source, "unsupervised").texts
    return [pool[i] for i in held_out(len(pool), val_fraction, seed)]


def tfidf_matrices(queries: list[str], docs: list[str]):
    """TF-IDF vectors (sublinear tf, English stop words, fit on ``docs``) of queries and documents: their
    products are cosines. Needs scikit-learn."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(sublinear_tf=True, stop_words="english", min_df=2)
    d = vectorizer.fit_transform(docs)
    return vectorizer.transform(queries), d


def halves(text: str) -> tuple[str, str]:
    """A review split at the word boundary nearest its middle."""
    words = text.split()
    middle = len(words) // 2
    return " ".join(words[:middle]), " ".join(words[middle:])


@torch.no_grad()
def encode(backbone, head, texts: list[str], batch_size: int) -> dict[str, Vectors]:
    """Unit vectors of ``texts`` by every method, from one backbone pass per batch (a sparse adapter's
    as a CSR matrix)."""
    decoder, tokenizer = backbone.decoder, backbone.tokenizer
    ids = tokenizer.encode(texts)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: dict[str, torch.Tensor] = {}
    sparse_rows = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = collate_reviews([{"ids": ids[i]} for i in chunk], decoder.config.block_size)
        states = decoder.layer_states(batch["ids"], batch["mask"])
        found = {
            "mean": pool(states[-1], batch["mask"], "mean"),
            "weighted_mean": pool(states[-1], batch["mask"], "weighted_mean"),
        }
        if head is not None:
            vectors = head(
                states[: head.config.n_states], batch["mask"], batch["ids"], embedding=decoder.wte.weight
            )
            if head.config.pooling == "sparse":
                sparse_rows.append(sp.csr_matrix(vectors.numpy()))
            else:
                found["adapter"] = vectors
        for name, vectors in found.items():
            out.setdefault(name, torch.empty(len(texts), vectors.size(1)))[chunk] = F.normalize(
                vectors.float(), dim=-1
            )
        print(f"\rencoded {min(start + batch_size, len(order)):,}/{len(order):,}", end="", flush=True)
    print()
    if sparse_rows:
        out["adapter"] = sp.vstack(sparse_rows, format="csr")[np.argsort(order)]
    return out


def dense_top(queries: Vectors, docs: Vectors, k: int, exclude_self: bool = False) -> np.ndarray:
    """Top ``k`` documents per query by dot product (dense tensors or sparse CSR matrices)."""
    out = []
    for start in range(0, queries.shape[0], 1024):
        if sp.issparse(queries):
            scores = torch.from_numpy((queries[start : start + 1024] @ docs.T).toarray())
        else:
            scores = queries[start : start + 1024] @ docs.T
        if exclude_self:
            rows = torch.arange(start, start + len(scores))
            scores[torch.arange(len(scores)), rows] = float("-inf")
        out.append(scores.topk(k, dim=1).indices.numpy())
    return np.concatenate(out)


def index_top(
    index: SemanticIndex, vectors, texts: list[str], mode: str, k: int, exclude_self=False
) -> np.ndarray:
    """Top ``k`` rows per query through :meth:`SemanticIndex.scores` (the ranking search uses)."""
    out = []
    for i, text in enumerate(texts):
        rows, _ = index.top_k(vectors[i] if vectors is not None else None, text, mode, k + exclude_self)
        out.append([r for r in rows if not (exclude_self and r == i)][:k])
    return np.array(out)


def mrr_recall(top: np.ndarray) -> tuple[float, float]:
    """MRR@10 and recall@10 when query i's only relevant document is document i."""
    hits = top[:, :10] == np.arange(len(top))[:, None]
    first = hits.argmax(1)
    found = hits.any(1)
    return float(np.where(found, 1 / (first + 1), 0).mean()), float(found.mean())


def fit_tfidf(texts: list[str], labels: np.ndarray, seed: int = 1234, val_fraction: float = 0.1) -> dict:
    """TF-IDF (word 1-2 grams) + logistic regression, the bag of words a user tries first: C chosen on a
    validation split carved out of ``texts`` (given as ``load_reviews`` reads the train split, these are
    the rows the classifier's ReviewsDataModule holds out, by the same seed), then refit on all of
    them. Returns the model, the chosen C, the validation accuracy of each C and the final fit's
    seconds. Needs scikit-learn (``pip install -e ".[bench]"``)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    def model(c: float):
        return make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=500_000),
            LogisticRegression(C=c, max_iter=2000),
        )

    fit_idx, val_idx = validation_rows(len(texts), val_fraction, seed)
    by_c = {}
    for c in (1.0, 4.0, 16.0):
        fitted = model(c).fit([texts[i] for i in fit_idx], labels[fit_idx])
        by_c[c] = float((fitted.predict([texts[i] for i in val_idx]) == labels[val_idx]).mean())
    best = max(by_c, key=by_c.get)
    start = time.perf_counter()
    final = model(best).fit(texts, labels)
    return {"model": final, "c": best, "val_by_c": by_c, "seconds": time.perf_counter() - start}


def ensemble_argument(value: str) -> tuple[str, list[str]]:
    """``--ensemble NAME=A|B``: a row for the mean of models A and B's probabilities (what ``classify
    --classifier A --classifier B`` computes); ``|`` apart, since names hold ``+``."""
    name, sep, members = value.partition("=")
    if not sep or not name.strip() or "|" not in members:
        raise argparse.ArgumentTypeError(f"expected NAME=MODEL|MODEL, got {value!r}")
    return name.strip(), [m.strip() for m in members.split("|")]


def add_ensembles(
    probabilities: dict[str, np.ndarray], ensembles: list[tuple[str, list[str]]]
) -> dict[str, list[str]]:
    """Add each ensemble's mean probabilities to ``probabilities`` (models by name); returns what each
    averages. Raises ``SystemExit`` naming a member that is not there."""
    for name, members in ensembles:
        if unknown := [m for m in members if m not in probabilities]:
            sys.exit(f"--ensemble {name}: no model named {unknown[0]!r}; models: {', '.join(probabilities)}")
        probabilities[name] = np.mean([probabilities[m] for m in members], axis=0)
    return dict(ensembles)


def mcnemar_table(record: Record, right: dict[str, np.ndarray]) -> None:
    """McNemar's exact test for every pair of models (``right``: which examples each got right)."""
    pairs = record.table("mcnemar", ["A", "B", "only A right", "only B right", "p (McNemar, exact)"])
    for a, b in itertools.combinations(right, 2):
        only_a, only_b, p = mcnemar(right[a], right[b])
        pairs.add(a, b, only_a, only_b, f"{p:.2g}" if p > 0 else "< 1e-300")  # 0: below a double's range


def mcnemar(right_a: np.ndarray, right_b: np.ndarray) -> tuple[int, int, float]:
    """McNemar's exact test of two classifiers on the same examples: how many only A got right, how many
    only B, and the two-sided p-value that they are equally accurate (a binomial test on those)."""
    from scipy.stats import binomtest

    only_a = int((right_a & ~right_b).sum())
    only_b = int((~right_a & right_b).sum())
    p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return only_a, only_b, float(p)
