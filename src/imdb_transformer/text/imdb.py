"""Load IMDB splits from the Hugging Face hub or a local folder of parquet files, and check them."""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from imdb_transformer.errors import InputError

SPLITS = ("train", "test", "unsupervised")
DEFAULT_SOURCE = "stanfordnlp/imdb"
_EXPECTED = (
    "a folder holding train.parquet, test.parquet and unsupervised.parquet (columns text: str, label: int)"
)
_BREAKS = re.compile(r"<br\s*/?>", flags=re.IGNORECASE)
_SPACES = re.compile(r"[ \t]{2,}")


class IMDBSourceError(InputError):
    """The IMDB source is missing, incomplete or has the wrong columns."""


def clean_text(text: str) -> str:
    """Turn the HTML line breaks of raw IMDB reviews (``<br />``) into spaces; keep everything else.

    Case and punctuation are kept: ``!`` and ``?`` are sentiment cues. NUL characters are dropped.
    """
    return _SPACES.sub(" ", _BREAKS.sub(" ", text.replace("\x00", ""))).strip()


def review_texts(ds: datasets.Dataset, where: str) -> tuple[list[str], list[int]]:
    """The cleaned texts of ``ds`` and the row numbers they came from.

    Rows whose text is not valid UTF-8, is missing, or is empty once cleaned (only whitespace or
    HTML) are skipped and counted in one warning, here in the main process rather than as a
    crash inside a tokenising worker.
    """
    column = ds.with_format("arrow")["text"]
    try:
        column.validate(full=True)
        raw = column.to_pylist()
        invalid = 0
    except pa.ArrowInvalid:  # decode row by row, keeping what is valid
        raw = []
        for value in column.cast(pa.binary()).to_pylist():
            try:
                raw.append(None if value is None else value.decode("utf-8"))
            except UnicodeDecodeError:
                raw.append(None)
        invalid = sum(r is None for r in raw) - column.null_count
    texts, rows = [], []
    for i, text in enumerate(raw):
        cleaned = clean_text(text) if text is not None else ""
        if cleaned:
            texts.append(cleaned)
            rows.append(i)
    if len(rows) < len(raw):
        empty = len(raw) - len(rows) - invalid
        warnings.warn(
            f"{where}: skipped {invalid} reviews that are not valid UTF-8 and {empty} that are empty "
            "(missing, or nothing left once HTML and whitespace are removed)",
            stacklevel=2,
        )
    return texts, rows


LABEL_FOLDERS = {0: "neg", 1: "pos", -1: "unsup"}  # the label folders of the original aclImdb archive


def review_key(split: str, label: int, review_id: int) -> str:
    """A review's unique name, as the original archive's file names give it: ``test/pos/2221`` (the id
    alone repeats: it is a file number within one label's folder)."""
    return f"{split}/{LABEL_FOLDERS[label]}/{review_id}"


@dataclass
class Reviews:
    """The usable reviews of a split: cleaned texts with their review ids, labels (-1: unlabelled) and
    unique keys (see :func:`review_key`)."""

    texts: list[str]
    ids: list[int]
    labels: list[int]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def validation_rows(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``0..count-1`` split by ``seed``: those to train on, and the ``fraction`` (at least one)
    held out for validation. The classifier's data and the TF-IDF baseline hold out the same rows."""
    order = np.random.default_rng(seed).permutation(count)
    n_val = max(1, round(count * fraction))
    return order[n_val:], order[:n_val]


def load_reviews(source: str, split: str, max_reviews: int | None = None, seed: int = 1234) -> Reviews:
    """Load a split's reviews as :class:`Reviews`, skipping unusable texts (see :func:`review_texts`).

    Labels of ``train`` and ``test`` must be 0 or 1 (``unsupervised``: -1, or 0 or 1). ``max_reviews``
    keeps a sample of that many, drawn by ``seed``, in the split's order. Ids are the dataset's ``id``
    column, else row numbers; two rows that would get the same key are refused.
    """
    if max_reviews is not None and (isinstance(max_reviews, bool) or max_reviews < 1):
        raise InputError(f"max_reviews={max_reviews!r}: give a positive number of reviews, or None for all")
    ds = load_split(source, split)
    where = f"{source}:{split}"
    all_labels = ds["label"]
    allowed = (0, 1) if split != "unsupervised" else (-1, 0, 1)
    bad = sorted({lab for lab in all_labels if lab not in allowed})
    if bad:
        raise IMDBSourceError(
            f"{where} has labels {bad} outside {{{', '.join(map(str, allowed))}}}; fix or drop those rows"
        )
    all_ids = ds["id"] if "id" in ds.column_names else range(len(ds))
    _check_unique_keys(split, all_ids, all_labels, where)
    texts, rows = review_texts(ds, where)
    keep = list(range(len(texts)))
    if max_reviews is not None:
        random.Random(seed).shuffle(keep)
        keep = sorted(keep[:max_reviews])
    ids = [int(all_ids[rows[i]]) for i in keep]
    labels = [all_labels[rows[i]] for i in keep]
    keys = [review_key(split, lab, i) for lab, i in zip(labels, ids, strict=True)]
    return Reviews([texts[i] for i in keep], ids, labels, keys)


def _check_unique_keys(split: str, ids, labels: list[int], where: str) -> None:
    """Refuse a split where two rows share a label and an id: their keys would name both."""
    seen: set[tuple[int, int]] = set()
    for review_id, label in zip(ids, labels, strict=True):
        if (label, review_id) in seen:
            raise IMDBSourceError(
                f"{where} has two reviews with id {review_id} and label {label}: both would be "
                f"{review_key(split, label, review_id)!r}, so neither could be named; give each review of "
                "a label its own id"
            )
        seen.add((label, review_id))


def is_local(source: str) -> bool:
    """Whether ``source`` names a local folder (existing or not) rather than a hub dataset id."""
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or source.count("/") > 1


def load_split(source: str, split: str) -> datasets.Dataset:
    """Load one IMDB split (``train``, ``test`` or ``unsupervised``) and check its columns.

    ``source`` is a dataset id for :func:`datasets.load_dataset` (such as ``stanfordnlp/imdb``) or
    a local folder of ``{split}.parquet`` files.
    """
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; expected one of {SPLITS}")
    if is_local(source):
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise IMDBSourceError(f"IMDB source folder {str(folder)!r} does not exist; expected {_EXPECTED}.")
        path = folder / f"{split}.parquet"
        if not path.is_file():
            found = sorted(p.name for p in folder.glob("*.parquet")) or "no parquet files"
            raise IMDBSourceError(
                f"IMDB split {split!r} is missing: {str(path)!r} not found (the folder has {found}); "
                f"expected {_EXPECTED}."
            )
        ds = _read_parquet(path, split)
    else:
        try:
            ds = datasets.load_dataset(source, split=split)
        except Exception as err:  # offline, unknown id, missing split: one clear message
            raise IMDBSourceError(
                f"could not load split {split!r} of dataset {source!r} with datasets.load_dataset ({err}). "
                f"Without internet access, pass --data.source {_EXPECTED}."
            ) from err
    if len(ds) == 0:
        raise IMDBSourceError(f"{source}:{split} holds no reviews; expected {_EXPECTED}.")
    _check_columns(ds, f"{source}:{split}")
    return ds


def _read_parquet(path: Path, split: str) -> datasets.Dataset:
    """The split at ``path``, its file checked with pyarrow first: a file that is not parquet, or has
    no rows, is an error naming it, before ``datasets`` logs and raises its own."""
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except Exception as err:  # pyarrow's ArrowInvalid, OSError: the file is not readable as parquet
        raise IMDBSourceError(
            f"{path} cannot be read as parquet ({type(err).__name__}: {str(err).splitlines()[0]}); "
            f"replace it with the split's parquet file: expected {_EXPECTED}."
        ) from err
    if rows == 0:
        raise IMDBSourceError(f"{path} holds no reviews; expected {_EXPECTED}.")
    try:
        return datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
    except Exception as err:  # a file whose footer reads but whose data does not
        raise IMDBSourceError(
            f"{path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
            f"replace it with the split's parquet file: expected {_EXPECTED}."
        ) from err


def _check_columns(ds: datasets.Dataset, where: str) -> None:
    features = ds.features
    text = features.get("text")
    label = features.get("label")
    if not (isinstance(text, datasets.Value) and text.dtype in ("string", "large_string")):
        raise IMDBSourceError(
            f"{where} needs a string column 'text'; it has columns {dict(features)}. Expected {_EXPECTED}."
        )
    if not _is_int(label):
        raise IMDBSourceError(
            f"{where} needs an integer column 'label'; it has columns {dict(features)}. Expected {_EXPECTED}."
        )
    if "id" in features and not _is_int(features["id"]):
        raise IMDBSourceError(
            f"{where} has a column 'id' of {features['id']}; review ids must be integers (the file numbers "
            "of the original archive), or leave the column out to number the reviews by row"
        )
    table = ds.with_format("arrow")
    for name in ("label", "id"):
        if name in features and table[name].null_count:
            raise IMDBSourceError(
                f"{where} has {table[name].null_count} rows without a {name!r}; fill them in or drop "
                "those rows"
            )
    if "id" in features and len(table):
        low, high = pc.min(table["id"]).as_py(), pc.max(table["id"]).as_py()
        if low < 0 or high >= 2**63:
            raise IMDBSourceError(
                f"{where} has review ids from {low} to {high}; ids must be whole numbers from 0 to 2**63 - 1 "
                "(the file numbers of the original archive)"
            )


def _is_int(feature: object) -> bool:
    return isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
    )
