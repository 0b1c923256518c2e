"""``embed`` and ``classify`` as Lightning jobs: two CPU processes under DDP give what one process
gives, in the same order, for a number of reviews that does not divide by the number of processes."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from helpers import classifier_checkpoint, run_cli
from safetensors.torch import load_file

DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]


def test_embed_under_ddp_builds_the_index_one_process_builds(
    pretrained_run: Path, imdb_dir: Path, tmp_path: Path
) -> None:
    args = ["embed", "--backbone", str(pretrained_run / "backbone"), "--source", str(imdb_dir),
            "--max_reviews", "37", "--batch_size", "4"]  # fmt: skip  # 10 batches, the last of 1
    run_cli(*args, "--out", str(tmp_path / "one"), "--device", "cpu")
    out = run_cli(*args, "--out", str(tmp_path / "two"), *DDP, process=True).stdout
    assert out.count("Saved 37 review embeddings") == 1  # the first process writes the index
    one, two = (pq.read_table(tmp_path / n / "reviews.parquet").to_pydict() for n in ("one", "two"))
    assert one == two  # the same reviews, in the same order
    vectors = [load_file(tmp_path / n / "vectors.safetensors")["vectors"] for n in ("one", "two")]
    torch.testing.assert_close(vectors[1], vectors[0], atol=1e-6, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no shards left behind


def test_classify_under_ddp_writes_the_predictions_one_process_writes(
    pretrained_run: Path, imdb_dir: Path, tmp_path: Path
) -> None:
    backbone = pretrained_run / "backbone"
    members = [str(classifier_checkpoint(backbone, tmp_path / f"{s}.ckpt", seed=s)) for s in (0, 1)]
    args = ["classify", "--classifier", members[0], "--classifier", members[1], "--split", "test",
            "--source", str(imdb_dir), "--max_reviews", "79", "--batch_size", "4"]  # fmt: skip
    single = run_cli(*args, "--out", str(tmp_path / "one.parquet")).stdout
    double = run_cli(*args, "--out", str(tmp_path / "two.parquet"), *DDP, process=True).stdout
    assert single == double.replace("two.parquet", "one.parquet")  # the same table, printed once
    one, two = (pq.read_table(tmp_path / n).to_pydict() for n in ("one.parquet", "two.parquet"))
    assert list(one) == ["id", "key", "label", "probability", "predicted"]
    assert len(set(one["key"])) == 79 and one["key"] == two["key"] and one["label"] == two["label"]
    assert one["probability"] == pytest.approx(two["probability"], abs=1e-6)
    assert one["predicted"] == [int(p > 0.5) for p in one["probability"]]


def test_fewer_texts_than_processes_each_come_back_once(pretrained_run: Path, tmp_path: Path) -> None:
    """One text on two processes: the second gets a stand-in batch whose row is dropped."""
    checkpoint = str(classifier_checkpoint(pretrained_run / "backbone", tmp_path / "c.ckpt"))
    args = ["classify", "--classifier", checkpoint, "a good film"]
    assert run_cli(*args, *DDP, process=True).stdout == run_cli(*args).stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.ckpt"]


def test_classify_writes_the_predictions_of_given_texts(pretrained_run: Path, tmp_path: Path) -> None:
    backbone = pretrained_run / "backbone"
    checkpoint = str(classifier_checkpoint(backbone, tmp_path / "c.ckpt", lexical="bag"))
    out = run_cli("classify", "--classifier", checkpoint, "--out", str(tmp_path / "p.parquet"), "good", "bad")
    assert out.stdout.strip() == f"Saved 2 predictions to {tmp_path / 'p.parquet'}"
    table = pq.read_table(tmp_path / "p.parquet").to_pydict()
    assert table["id"] == [1, 2] and list(table) == ["id", "probability", "predicted"]
    run_cli("classify", "--classifier", checkpoint, "--out", str(tmp_path / "w.parquet"), "--explain", "true",
            "a good film", "bad")  # fmt: skip
    words = pq.read_table(tmp_path / "w.parquet").to_pydict()["words"]
    assert {w["word"] for w in words[0]} <= {"a", "good", "film"} and words[1][0]["word"] == "bad"
