"""Whatever the logger, each run's files (checkpoints, the exported backbone, config.yaml, tokenizer.model)
land in that run's own folder: two runs, two sets of files, nothing overwritten."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_pretrain_args
from helpers import fails, run_cli

from imdb_transformer.core.backbone import load_backbone

RUN_FILES = {"backbone", "checkpoints", "config.yaml", "tokenizer.model"}


def two_runs(imdb_dir: Path, cache_dir: Path, root: Path, logger: list[str], env: dict | None = None) -> None:
    for seed in ("1", "2"):  # different seeds: different weights, so an overwrite would show
        run_cli(
            "fit", *tiny_pretrain_args(imdb_dir, cache_dir, root), "--trainer.max_steps", "4",
            "--trainer.val_check_interval", "2", "--seed_everything", seed, *logger, env=env,
        )  # fmt: skip


def assert_two_whole_runs(folders: list[Path]) -> None:
    assert len(folders) == 2 and folders[0] != folders[1]
    for folder in folders:
        assert {p.name for p in folder.iterdir()} >= RUN_FILES, sorted(p.name for p in folder.iterdir())
    first, second = (load_backbone(f / "backbone").fingerprint for f in folders)
    assert first != second


def test_tensorboard_runs_keep_their_own_folders(imdb_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="TensorBoard is in the dev extra")
    logger = ["--trainer.logger", "lightning.pytorch.loggers.TensorBoardLogger",
              "--trainer.logger.save_dir", str(tmp_path / "tb")]  # fmt: skip
    two_runs(imdb_dir, cache_dir, tmp_path, logger)
    folders = sorted((tmp_path / "tb" / "lightning_logs").iterdir())
    assert [f.name for f in folders] == ["version_0", "version_1"]
    assert all(any(f.glob("events.out.tfevents.*")) for f in folders)  # TensorBoard's own logs
    assert_two_whole_runs(folders)
    assert not (tmp_path / "lightning_logs").exists()  # no CSV run folder beside them


def test_mlflow_runs_keep_their_own_folders(imdb_dir: Path, cache_dir: Path, tmp_path: Path) -> None:
    """MLflow's ``save_dir`` is its whole store, shared by every run (``trainer.log_dir`` points there):
    the run's files go to the run's own folder in it, beside its checkpoints."""
    pytest.importorskip("mlflow", reason="MLflow is in the dev extra")
    store = tmp_path / "mlruns"
    logger = ["--trainer.logger", "lightning.pytorch.loggers.MLFlowLogger",
              "--trainer.logger.experiment_name", "imdb",
              "--trainer.logger.tracking_uri", f"file:{store}"]  # fmt: skip
    two_runs(imdb_dir, cache_dir, tmp_path, logger, env={"MLFLOW_ALLOW_FILE_STORE": "true"})  # MLflow 3 asks
    folders = sorted(p.parent for p in store.glob("*/*/checkpoints"))
    assert_two_whole_runs(folders)
    assert not (store / "backbone").exists() and not (store / "config.yaml").exists()


def test_a_second_run_in_a_folder_another_run_keeps_is_refused(
    imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """A logger given a fixed version names one folder for every run: the second run stops before it
    replaces the first's files, naming the fix."""
    logger = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
              "--trainer.logger.save_dir", str(tmp_path), "--trainer.logger.version", "fixed"]  # fmt: skip
    args = [*tiny_pretrain_args(imdb_dir, cache_dir, tmp_path), "--trainer.max_steps", "2", *logger]
    run_cli("fit", *args)
    folder = tmp_path / "lightning_logs" / "fixed"
    first = load_backbone(folder / "backbone").fingerprint
    error = fails("fit", *args, "--seed_everything", "2")
    assert "config.yaml exists" in error and "--trainer.default_root_dir a new folder" in error
    assert load_backbone(folder / "backbone").fingerprint == first
