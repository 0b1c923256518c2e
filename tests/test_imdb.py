"""Loading IMDB: local folders and hub ids, schema checks, HTML cleaning."""

from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imdb_transformer.data.imdb import IMDBSourceError, clean_text, is_local, load_split


def test_loads_each_split_with_its_rows(imdb_dir: Path) -> None:
    assert len(load_split(str(imdb_dir), "train")) == 160
    assert len(load_split(str(imdb_dir), "test")) == 80
    assert set(load_split(str(imdb_dir), "unsupervised")["label"]) == {-1}


def test_html_line_breaks_are_cleaned_and_cues_kept() -> None:
    assert clean_text("Great!<br /><br />Really?<br>Yes<BR/>no") == "Great! Really? Yes no"
    assert clean_text("  <br />  ") == ""
    assert clean_text("Mr. Smith seems to... NOT care") == "Mr. Smith seems to... NOT care"


def test_a_missing_folder_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(IMDBSourceError, match=r"does not exist; expected a folder holding train.parquet"):
        load_split(str(tmp_path / "nowhere"), "train")


def test_a_missing_split_names_the_file(imdb_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "train.parquet").write_bytes((imdb_dir / "train.parquet").read_bytes())
    with pytest.raises(IMDBSourceError, match=r"split 'unsupervised' is missing.*has \['train.parquet'\]"):
        load_split(str(tmp_path), "unsupervised")


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"review": pa.array(["a"]), "label": pa.array([1])}, "string column 'text'"),
        ({"text": pa.array(["a"]), "label": pa.array(["pos"])}, "integer column 'label'"),
        ({"text": pa.array([1]), "label": pa.array([1])}, "string column 'text'"),
    ],
)
def test_a_wrong_column_is_one_clear_error(tmp_path: Path, columns: dict, message: str) -> None:
    pq.write_table(pa.table(columns), tmp_path / "train.parquet")
    with pytest.raises(IMDBSourceError, match=message):
        load_split(str(tmp_path), "train")


def test_hub_ids_and_paths_are_told_apart(tmp_path: Path) -> None:
    assert not is_local("stanfordnlp/imdb")
    assert not is_local("imdb")
    assert is_local(str(tmp_path))
    assert is_local("./data/imdb") and is_local("../shared/data/imdb")


def test_an_unreachable_hub_id_points_to_a_local_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    # like a machine without internet, minus the network time-outs
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    with pytest.raises(IMDBSourceError, match="pass --data.source a folder holding"):
        load_split("nobody/no-such-dataset", "train")
