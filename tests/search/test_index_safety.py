"""``embed --out`` and ``SemanticIndex.save`` replace only an index: a folder of anything else, a file,
and folders that hold the current folder, home, or the data and models are refused, byte for byte
untouched, before any model or data loads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import cli, error_line, main_each

from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.errors import InputError
from imdb_transformer.search import SemanticIndex, check_out_folder

TEXTS = ["A wonderful film, loved it.", "A dull film, a waste.", "Superb music and camera work."]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``root``."""
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
    }


def make_files(root: Path) -> None:
    """A user's notes, a training run, a plain file, an empty folder and a (fake) index with a stray file."""
    (root / "notes").mkdir()
    (root / "notes" / "notes.txt").write_text("my notes\n")
    ckpt = root / "lightning_logs" / "version_0" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "last.ckpt").write_bytes(b"\x80\x02weights" * 100)
    (root / "lightning_logs" / "version_0" / "metrics.csv").write_text("step,loss\n1,2.0\n")
    (root / "file.bin").write_bytes(b"\x00\x01 a file")
    (root / "work").mkdir()  # the current folder of the runs: empty, yet refused
    (root / "index-with-notes").mkdir()
    (root / "index-with-notes" / "index.json").write_text('{"format": "imdb_transformer.index/3"}')
    (root / "index-with-notes" / "notes.txt").write_text("kept\n")
    (root / "run" / "backbone").mkdir(parents=True)  # an index folder holding the backbone
    (root / "run" / "index.json").write_text('{"format": "imdb_transformer.index/3"}')
    (root / "run" / "backbone" / "model.safetensors").write_bytes(b"weights")
    (root / "data").mkdir()  # the IMDB source
    (root / "data" / "test.parquet").write_bytes(b"PAR1 reviews")


def test_embed_refuses_every_out_that_is_not_an_index_and_leaves_it_as_it_was(tmp_path: Path) -> None:
    root = tmp_path / "user"
    root.mkdir()
    (tmp_path / "home").mkdir()  # outside root: imports write caches there
    make_files(root)
    before = snapshot(root)
    outs = {  # --out: words its one error line must hold
        str(root / "notes"): "not a search index",
        str(root / "lightning_logs"): "not a search index",
        str(root / "lightning_logs" / "version_0"): "not a search index",
        str(root / "file.bin"): "is a file",
        str(root / "file.bin" / "index"): "is a file, not a folder",
        str(root / "index-with-notes"): "notes.txt",
        ".": "the current folder",
        "..": "the current folder",
        str(root / "work"): "the current folder",
        str(tmp_path / "home"): "your home folder",
        "~": "your home folder",
        "/": "the root folder",
        str(root / "run"): "the backbone",
        str(root / "data"): "the source",
    }
    # no model or data behind --backbone and --source: the folder is checked before either loads
    common = ["--backbone", str(root / "run" / "backbone"), "--source", str(root / "data")]
    runs = [["embed", *common, "--out", out] for out in outs]
    results = main_each(runs, env={"HOME": str(tmp_path / "home")}, cwd=str(root / "work"))
    for (out, words), result in zip(outs.items(), results, strict=True):
        line = error_line(result)
        assert words in line and "choose a new folder" in line, (out, line)
    assert snapshot(root) == before  # every file byte for byte, no folder added or removed
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_the_console_script_refuses_a_notes_folder_in_one_line(tmp_path: Path, pretrained_run: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("my notes\n")
    result = cli("embed", "--backbone", str(pretrained_run / "backbone"), "--source", str(tmp_path / "none"),
                 "--out", str(tmp_path / "notes"))  # fmt: skip
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: ") and "notes.txt" in result.stderr
    assert (tmp_path / "notes" / "notes.txt").read_text() == "my notes\n"


def test_save_replaces_an_index_or_fills_an_empty_folder_and_refuses_the_rest(
    pretrained_run: Path, tmp_path: Path
) -> None:
    backbone = pretrained_run / "backbone"
    index = SemanticIndex.build(
        DocumentEmbedder(load_backbone(backbone)), TEXTS, backbone=backbone, progress=False
    )
    (tmp_path / "empty").mkdir()
    index.save(tmp_path / "empty")
    index.save(tmp_path / "empty")  # now an index: replaced
    assert len(SemanticIndex.load(tmp_path / "empty")) == 3
    (tmp_path / "empty" / "notes.txt").write_text("mine")
    for folder in (tmp_path / "empty", backbone.parent, Path.cwd()):
        before = snapshot(folder) if folder != Path.cwd() else None
        with pytest.raises(InputError, match="choose a new folder"):
            index.save(folder)
        assert before is None or snapshot(folder) == before
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "empty")
    with pytest.raises(InputError, match="symbolic link"):
        check_out_folder(link)


def test_an_index_written_by_embed_is_replaced_by_the_next(
    pretrained_run: Path, imdb_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "index"
    args = [
        "embed",
        "--backbone",
        str(pretrained_run / "backbone"),
        "--source",
        str(imdb_dir),
        "--out",
        str(out),
    ]
    first, second = main_each([[*args, "--max_reviews", "10"], [*args, "--max_reviews", "12"]])
    assert first["code"] == 0 and second["code"] == 0, second["stderr"][-2000:]
    assert len(SemanticIndex.load(out)) == 12
    assert sorted(os.listdir(out)) == ["index.json", "lexical", "reviews.parquet", "vectors.safetensors"]
