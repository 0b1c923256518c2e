"""Faults: a killed run resumes, concurrent runs keep apart, damaged or hostile files are refused by
name, bad data is skipped or refused up front, a diverging loss stops the run, seeds repeat."""

from __future__ import annotations

import math
import os
import pickle
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import tiny_pretrain_args, write_imdb
from helpers import HELPERS, SCRIPT, cli, fails, read_metrics, run_cli

from imdb_transformer.core.backbone import BackboneError, load_backbone
from imdb_transformer.data.lm import LMDataModule
from imdb_transformer.search import SearchIndexError, SemanticIndex


def popen_fit(args: list[str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [SCRIPT, "fit", *args, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **HELPERS},
    )


def test_a_killed_fit_resumes_and_ends_at_the_same_step(tiny_fit_args: list[str], tmp_path: Path) -> None:
    last = tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt"
    proc = popen_fit(
        tiny_fit_args, "--trainer.callbacks+=helpers.SlowSteps", "--trainer.callbacks.seconds=0.3"
    )
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGKILL)  # no chance to clean up
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = torch.load(last, weights_only=True)["global_step"]
    assert 0 < killed_at < 30

    out = run_cli("fit", *tiny_fit_args, "--ckpt_path", "last")
    assert "version_0/checkpoints/last.ckpt" in out.stdout
    resumed = tmp_path / "lightning_logs/version_1"
    assert (
        torch.load(resumed / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 30
    )  # as uninterrupted
    after = read_metrics(resumed)["train/loss"]
    assert min(step for step, _ in after) >= killed_at  # the step count continues
    assert after[0][1] < math.log(400) - 0.5  # trained weights came back: not a fresh model's loss


def test_two_runs_started_at_once_keep_to_their_own_folders(tiny_fit_args: list[str], tmp_path: Path) -> None:
    procs = [popen_fit(tiny_fit_args, "--trainer.max_steps", "10") for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    runs = sorted((tmp_path / "lightning_logs").iterdir())
    assert [r.name for r in runs] == ["version_0", "version_1"]
    for run in runs:
        assert (run / "config.yaml").is_file() and (run / "backbone" / "model.safetensors").is_file()
        assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 10
        assert len(read_metrics(run)["val/loss"]) == 1  # one run's metrics, not two interleaved


def test_damaged_or_hostile_checkpoints_are_refused_by_name(pretrained_run: Path, tmp_path: Path) -> None:
    whole = (pretrained_run / "checkpoints/last.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(whole[: len(whole) // 2])
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    hostile = tmp_path / "hostile.ckpt"
    hostile.write_bytes(pickle.dumps({"state_dict": Payload()}))
    for path in (truncated, hostile):
        args = ["fit", "--config", str(pretrained_run / "config.yaml"), "--ckpt_path", str(path)]
        result = subprocess.run([SCRIPT, *args], capture_output=True, text=True)
        assert result.returncode != 0 and f"error: {path} cannot be read" in result.stderr
        with pytest.raises(BackboneError, match=f"{path} cannot be read"):
            load_backbone(path)
    assert not marker.exists()


def test_a_damaged_export_or_index_is_refused_by_name(pretrained_run: Path, tmp_path: Path) -> None:
    export = Path(shutil.copytree(pretrained_run / "backbone", tmp_path / "backbone"))
    weights = export / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(BackboneError, match=f"{weights} cannot be read.*export the backbone again"):
        load_backbone(export)
    (export / "config.json").write_text("{not json")
    with pytest.raises(BackboneError, match="config.json cannot be read"):
        load_backbone(export)

    from imdb_transformer.embedder import DocumentEmbedder

    backbone = str(pretrained_run / "backbone")
    embedder = DocumentEmbedder(load_backbone(backbone))
    folder = SemanticIndex.build(embedder, ["a fine film", "a dull film"], backbone=backbone).save(
        tmp_path / "i"
    )
    for name in ("vectors.safetensors", "reviews.parquet", "index.json"):
        damaged = Path(shutil.copytree(folder, tmp_path / f"damaged-{name}"))
        (damaged / name).write_bytes((damaged / name).read_bytes()[:20])
        with pytest.raises(SearchIndexError, match=f"{name} cannot be read.*build it again"):
            SemanticIndex.load(damaged)


def test_bad_reviews_are_skipped_and_counted_before_any_worker_runs(tmp_path: Path, cache_dir: Path) -> None:
    folder = write_imdb(tmp_path / "imdb", {"train": 60, "unsupervised": 60})
    table = pq.read_table(folder / "train.parquet")
    raw = [t.encode() for t in table.column("text").to_pylist()]
    raw[0] = b"not \xff\xfe valid UTF-8"
    raw[1] = b"   \t  "  # only whitespace
    raw[2] = b"<br /><br /><BR>"  # only HTML
    raw[3] = b"a NUL \x00 inside a fine review"
    raw[4] = ("a very long review " * 55_000).encode()  # about 1 MB
    texts = pa.array(raw, pa.binary()).view(pa.string())
    pq.write_table(table.set_column(0, "text", texts), folder / "train.parquet")
    dm = LMDataModule(source=str(folder), cache_dir=str(cache_dir), vocab_size=300, block_size=32, num_proc=2)
    with pytest.warns(UserWarning, match="skipped 1 reviews that are not valid UTF-8 and 2 that are empty"):
        dm.prepare_data()
    dm.setup("fit")
    train, val = dm.reviews()
    assert "a NUL inside a fine review" in train + val  # the NUL dropped, the spaces around it merged
    assert any(len(t) > 1_000_000 for t in train + val)
    assert len(dm.train_set) > 0


def test_a_diverging_loss_stops_the_run_naming_the_step(tiny_fit_args: list[str], tmp_path: Path) -> None:
    result = subprocess.run(
        [SCRIPT, "fit", *tiny_fit_args, "--trainer.callbacks+=helpers.PoisonWeights"],
        capture_output=True, text=True, env={**os.environ, **HELPERS},
    )  # fmt: skip
    assert result.returncode != 0
    assert (
        "the training loss became NaN or infinite at step 5" in result.stderr
        and "--model.learning_rate" in result.stderr
    )
    assert "Traceback" not in result.stderr  # one clear line
    assert not list(tmp_path.glob("lightning_logs/version_0/checkpoints/*step=*"))  # nothing saved after it


def test_the_same_config_and_seed_repeat_the_first_losses(tiny_fit_args: list[str], tmp_path: Path) -> None:
    losses = []
    for name in ("a", "b"):
        root = tmp_path / name
        run_cli("fit", *tiny_fit_args, "--trainer.default_root_dir", str(root), "--trainer.max_steps", "10")
        losses.append(read_metrics(root / "lightning_logs/version_0")["train/loss"])
    assert len(losses[0]) >= 2 and losses[0] == losses[1]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def test_resuming_last_takes_a_checkpoint_of_the_same_kind_of_run(
    pretrained_run: Path, adapter_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "lightning_logs"
    shutil.copytree(pretrained_run, runs / "version_0")
    shutil.copytree(adapter_run, runs / "version_1")
    os.utime(runs / "version_1/checkpoints/last.ckpt")  # the adapter's is the newest last.ckpt
    args = [*tiny_pretrain_args(imdb_dir, cache_dir, tmp_path), "--trainer.val_check_interval", "15"]
    out = run_cli("fit", *args, "--ckpt_path", "last")
    assert "Resuming from" in out.stdout and "version_0/checkpoints/last.ckpt" in out.stdout

    adapter = str(runs / "version_1/checkpoints/last.ckpt")
    line = _one_error_line(fails("fit", *args, "--ckpt_path", adapter))
    assert "checkpoint of a EmbeddingAdapter run, not of the CausalLM asked for" in line
    line = _one_error_line(fails("fit", *args, "--model.n_layer", "3", "--ckpt_path", "last"))
    assert "does not fit the run asked for: --model.n_layer is 3 here and 2 there" in line
    line = _one_error_line(fails("fit", *args, "--data.reverse", "true", "--ckpt_path", "last"))
    assert "reverse is True here and False there" in line

    shutil.rmtree(runs / "version_0")
    line = _one_error_line(fails("fit", *args, "--ckpt_path", "last"))
    assert (
        "no checkpoint of a CausalLM run" in line
        and "version_1/checkpoints/last.ckpt (EmbeddingAdapter)" in line
    )
    assert sorted(p.name for p in runs.iterdir()) == ["version_1", "version_2"]  # failed runs left nothing


def test_a_failed_fit_leaves_no_empty_run_folder(imdb_dir: Path, tmp_path: Path) -> None:
    args = tiny_pretrain_args(imdb_dir, tmp_path / "cache", tmp_path)
    line = _one_error_line(fails("fit", *args, "--data.vocab_size", "100"))
    assert "--data.vocab_size 100 is too small for these texts" in line and "or more" in line
    assert list((tmp_path / "lightning_logs").iterdir()) == []


def _mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    return done.returncode == 0


def test_a_full_disk_during_fit_keeps_the_last_checkpoint_whole(
    tiny_fit_args: list[str], tmp_path: Path
) -> None:
    """A real full disk: the run folder on a small tmpfs (needs root to mount one) that holds the
    first checkpoints and fills up while the second ones are written."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4300k"):
        pytest.skip(
            "mounting a small tmpfs needs root and mount(8); the faked full disk is tested in test_artifacts"
        )
    try:
        result = cli("fit", *tiny_fit_args, "--trainer.default_root_dir", str(disk))
        assert result.returncode != 0
        line = _one_error_line(result.stderr)
        assert line.startswith("error: no space left on the device writing ") and "--ckpt_path last" in line
        run = disk / "lightning_logs/version_0"
        assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 10
        hidden = [p for p in disk.rglob(".*") if p.name.endswith(".tmp")]
        assert hidden == []
    finally:
        subprocess.run(["umount", str(disk)], check=False)
