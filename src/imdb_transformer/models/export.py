"""The export every run makes when ``fit`` ends: its best weights (by the checkpoint callback's
monitor, ``val/loss``), else its last, written in plain files beside its checkpoints."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info

from imdb_transformer.core.backbone import load_checkpoint


def export_best(
    module: L.LightningModule, name: str, export: Callable[[dict | None, Path], os.PathLike]
) -> None:
    """Call ``export(state, folder)`` with the best checkpoint's ``state_dict`` (None: no best one,
    export the module's weights as they are) and ``folder``, ``name/`` in the run's folder (see
    :func:`run_folder`); on the main process only, after the collective call every rank makes."""
    run = run_folder(module.trainer)
    if not module.trainer.is_global_zero:
        return
    best = getattr(module.trainer.checkpoint_callback, "best_model_path", "")
    state = load_checkpoint(best)["state_dict"] if best else None
    folder = export(state, run / name)
    rank_zero_info(f"Exported the {name} ({'best' if best else 'last'} weights) to {folder}")


def part(state: dict, prefix: str) -> dict:
    """The entries of ``state`` under ``prefix`` (``backbone.``, ``head.``), without it."""
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def run_folder(trainer: L.Trainer) -> Path:
    """The folder of one run's own files (its exports, config and tokenizer): the folder in which
    ``ModelCheckpoint`` puts the run's ``checkpoints/`` unless ``--checkpoint.dirpath`` moves them,
    ``save_dir/name/version`` of the first logger (``lightning_logs/version_N`` for CSV and TensorBoard,
    the run's id for MLflow or W&B), else the root folder when there is no logger. Unlike
    ``trainer.log_dir``, which for loggers other than CSV and TensorBoard is the ``save_dir`` all their
    runs share, it is the run's own wherever the logger names each run apart. A collective call under
    DDP: every rank must make it (rank 0's answer is broadcast)."""
    if not trainer.loggers:
        folder = trainer.default_root_dir
    else:
        logger = trainer.loggers[0]
        version = logger.version if isinstance(logger.version, str) else f"version_{logger.version}"
        folder = os.path.join(logger.save_dir or trainer.default_root_dir, str(logger.name), version)
    return Path(trainer.strategy.broadcast(folder))
