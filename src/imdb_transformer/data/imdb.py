"""Load IMDB splits from the Hugging Face hub or a local folder of parquet files, and check them."""

from __future__ import annotations

import random
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa

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


@dataclass
class Reviews:
    """The usable reviews of a split: cleaned texts with their review ids and labels (-1: unlabelled)."""

    texts: list[str]
    ids: list[int]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)


def load_reviews(source: str, split: str, max_reviews: int | None = None, seed: int = 1234) -> Reviews:
    """Load a split's reviews as :class:`Reviews`, skipping unusable texts (see :func:`review_texts`).

    Labels of ``train`` and ``test`` must be 0 or 1. ``max_reviews`` keeps a sample of that many,
    drawn by ``seed``, in the split's order. Ids are the dataset's ``id`` column, else row numbers.
    """
    ds = load_split(source, split)
    where = f"{source}:{split}"
    all_labels = ds["label"]
    if split != "unsupervised":
        bad = sorted({lab for lab in all_labels if lab not in (0, 1)})
        if bad:
            raise IMDBSourceError(f"{where} has labels {bad} outside {{0, 1}}; fix or drop those rows")
    texts, rows = review_texts(ds, where)
    all_ids = ds["id"] if "id" in ds.column_names else range(len(ds))
    keep = list(range(len(texts)))
    if max_reviews is not None:
        random.Random(seed).shuffle(keep)
        keep = sorted(keep[:max_reviews])
    return Reviews(
        [texts[i] for i in keep], [int(all_ids[rows[i]]) for i in keep], [all_labels[rows[i]] for i in keep]
    )


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
        ds = datasets.load_dataset("parquet", data_files={split: str(path)}, split=split)
    else:
        try:
            ds = datasets.load_dataset(source, split=split)
        except Exception as err:  # offline, unknown id, missing split: one clear message
            raise IMDBSourceError(
                f"could not load split {split!r} of dataset {source!r} with datasets.load_dataset ({err}). "
                f"Without internet access, pass --data.source {_EXPECTED}."
            ) from err
    _check_columns(ds, f"{source}:{split}")
    return ds


def _check_columns(ds: datasets.Dataset, where: str) -> None:
    features = ds.features
    text = features.get("text")
    label = features.get("label")
    if not (isinstance(text, datasets.Value) and text.dtype in ("string", "large_string")):
        raise IMDBSourceError(
            f"{where} needs a string column 'text'; it has columns {dict(features)}. Expected {_EXPECTED}."
        )
    is_int = isinstance(label, datasets.ClassLabel) or (
        isinstance(label, datasets.Value) and label.dtype.startswith(("int", "uint"))
    )
    if not is_int:
        raise IMDBSourceError(
            f"{where} needs an integer column 'label'; it has columns {dict(features)}. Expected {_EXPECTED}."
        )
