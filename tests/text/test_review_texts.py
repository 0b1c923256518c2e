"""Texts to classify from a file: a column of anything but text, or a file that is not what its name
says, is one clear error; a CSV column of number-like texts stays text."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import error_line, main_each

from imdb_transformer.errors import InputError
from imdb_transformer.text.texts import is_blank, read_texts


def test_a_csv_column_of_number_like_texts_is_read_as_text(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("text,n\n10,1\n007,2\nA fine film,3\n")
    assert read_texts(tmp_path / "t.csv") == ["10", "007", "A fine film"]  # not 10, 7


def test_a_text_of_only_spaces_and_invisible_characters_is_blank(tmp_path: Path) -> None:
    for blank in ["", "  \n\t", "\u200b", "\ufeff \u200d", "\u00a0\u2060"]:  # zero-width, BOM, NBSP
        assert is_blank(blank), repr(blank)
    for text in ["a", " \u200bno", "\u200b!", "🙂"]:
        assert not is_blank(text), repr(text)
    (tmp_path / "t.txt").write_text("fine\n\u200b\n")
    with pytest.raises(InputError, match="line 2 is empty"):
        read_texts(tmp_path / "t.txt")


def test_files_that_hold_no_texts_are_one_error_line(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": pa.array([1, 2])}), tmp_path / "ints.parquet")
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    cases = {
        "ints.parquet": "holds int64, not text",
        "garbage.parquet": "cannot read",
        "empty.parquet": "no texts",
    }
    with pytest.raises(InputError, match="holds int64, not text"):
        read_texts(tmp_path / "ints.parquet")
    checkpoint = str(tmp_path / "none.ckpt")  # the file is read before any model loads
    runs = [["classify", "--classifier", checkpoint, "--file", str(tmp_path / name)] for name in cases]
    for (name, words), result in zip(cases.items(), main_each(runs), strict=True):
        line = error_line(result)
        assert name in line and words in line, line
