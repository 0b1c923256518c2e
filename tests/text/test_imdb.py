"""Loading IMDB: local folders and hub ids, schema checks, HTML cleaning."""

from __future__ import annotations

from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from imdb_transformer.text.imdb import IMDBSourceError, clean_text, is_local, load_split


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


def _split(folder: Path, columns: dict | None = None, raw: bytes | None = None) -> str:
    folder.mkdir(parents=True)
    if raw is not None:
        (folder / "test.parquet").write_bytes(raw)
    else:
        pq.write_table(pa.table(columns), folder / "test.parquet")
    return str(folder)


TEXTS = pa.array(["A fine film.", "A dull film."])
BROKEN = {  # a test split: words its one error line must hold
    "no rows": ({"text": pa.array([], pa.string()), "label": pa.array([], pa.int64())}, "holds no reviews"),
    "garbage": (b"these are not parquet bytes" * 10, "cannot be read as parquet"),
    "empty file": (b"", "cannot be read as parquet"),
    "string ids": (
        {"text": TEXTS, "label": pa.array([0, 1]), "id": pa.array(["a", "b"])},
        "ids must be integers",
    ),
    "null ids": (
        {"text": TEXTS, "label": pa.array([0, 1]), "id": pa.array([1, None])},
        "1 rows without a 'id'",
    ),
    "null labels": ({"text": TEXTS, "label": pa.array([None, 1], pa.int64())}, "rows without a 'label'"),
    "labels 2 and -1": ({"text": TEXTS, "label": pa.array([2, -1])}, "labels [-1, 2] outside {0, 1}"),
    "no text": ({"review": TEXTS, "label": pa.array([0, 1])}, "string column 'text'"),
    "int texts": ({"text": pa.array([1, 2]), "label": pa.array([0, 1])}, "string column 'text'"),
    "a key twice": ({"text": TEXTS, "label": pa.array([1, 1]), "id": pa.array([4, 4])}, "'test/pos/4'"),
}


def test_a_broken_source_is_one_error_line_for_embed_and_classify(
    pretrained_run: Path, tmp_path: Path
) -> None:
    from helpers import error_line, main_each

    runs = []
    for n, (content, _) in enumerate(BROKEN.values()):
        kind = {"raw": content} if isinstance(content, bytes) else {"columns": content}
        source = _split(tmp_path / str(n), **kind)
        out = str(tmp_path / f"index-{n}")
        runs.append(
            ["embed", "--backbone", str(pretrained_run / "backbone"), "--source", source, "--out", out]
        )
        runs.append(
            ["classify", "--classifier", str(tmp_path / "none.ckpt"), "--split", "test", "--source", source]
        )
    results = main_each(runs)
    for n, (case, (_, words)) in enumerate(BROKEN.items()):
        for result in results[2 * n : 2 * n + 2]:
            line = error_line(result)
            assert words in line and str(tmp_path / str(n)) in line, (case, line)  # names the source
    assert not list(tmp_path.glob("index-*"))


def test_the_console_script_reports_a_file_that_is_not_parquet_in_one_line(tmp_path: Path) -> None:
    from helpers import cli

    source = _split(tmp_path / "imdb", raw=b"not parquet at all")
    result = cli("classify", "--classifier", "none.ckpt", "--split", "test", "--source", source)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and "test.parquet cannot be read as parquet" in result.stderr
