"""Texts to classify from a file: plain text (one per line), CSV or parquet (one column)."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from imdb_transformer.errors import InputError


def is_blank(text: str) -> bool:
    """Whether ``text`` holds nothing to read: it is empty, or only whitespace and invisible format
    characters (zero-width spaces and joiners, byte-order marks: Unicode category Cf)."""
    return not text or all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)


def read_texts(path: str | os.PathLike, column: str = "text") -> list[str]:
    """The texts in ``path``: every line of a ``.txt`` file, or ``column`` of a ``.csv`` / ``.parquet``
    file. An empty text is an error naming where it is (a classifier has nothing to read there)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(f"{path} not found: give a .txt (one text per line), .csv or .parquet file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".parquet"):
            import pyarrow
            import pyarrow.csv
            import pyarrow.parquet

            if suffix == ".csv":  # every value of the column is text, even one that looks like a number
                convert = pyarrow.csv.ConvertOptions(column_types={column: pyarrow.string()})
                table = pyarrow.csv.read_csv(path, convert_options=convert)
            else:
                table = pyarrow.parquet.read_table(path)
            if column not in table.column_names:
                raise InputError(
                    f"{path} has no column {column!r} (it has {', '.join(table.column_names)}); "
                    "name the one holding the texts with --column"
                )
            kind = table.schema.field(column).type
            if not (pyarrow.types.is_string(kind) or pyarrow.types.is_large_string(kind)):
                raise InputError(
                    f"{path}: column {column!r} holds {kind}, not text; name the column holding the texts "
                    "with --column"
                )
            texts = [str(t) if t is not None else "" for t in table.column(column).to_pylist()]
            where = f"row {{}} of column {column!r}"
        else:
            texts = path.read_text(encoding="utf-8").splitlines()
            where = "line {}"
    except InputError:
        raise
    except (OSError, UnicodeDecodeError, ValueError) as err:  # pyarrow's errors are ValueErrors
        raise InputError(f"cannot read {path}: {err}") from err
    if not texts:
        raise InputError(f"{path} holds no texts")
    for i, text in enumerate(texts, start=1):
        if is_blank(text):
            raise InputError(f"{path}: {where.format(i)} is empty; remove it or give it some words")
    return texts
