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
    export the module's weights as they are) and ``folder``, the run's ``name/`` folder; on the main
    process only, after the collective ``log_dir`` call every rank must make under DDP."""
    log_dir = module.trainer.log_dir
    if not module.trainer.is_global_zero or log_dir is None:
        return
    best = getattr(module.trainer.checkpoint_callback, "best_model_path", "")
    state = load_checkpoint(best)["state_dict"] if best else None
    folder = export(state, Path(log_dir) / name)
    rank_zero_info(f"Exported the {name} ({'best' if best else 'last'} weights) to {folder}")


def part(state: dict, prefix: str) -> dict:
    """The entries of ``state`` under ``prefix`` (``backbone.``, ``head.``), without it."""
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
