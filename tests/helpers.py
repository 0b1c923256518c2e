"""Test helpers that subprocesses import (the tests folder is put on PYTHONPATH for them)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import yaml
from lightning.pytorch import Callback, LightningModule, Trainer

from imdb_transformer.data import LMDataModule


class RecordBatches(Callback):
    """Saves every training batch a rank sees to ``record_dir/rank{N}.pt``."""

    def __init__(self, record_dir: str) -> None:
        self.record_dir = Path(record_dir)
        self.rows: list[torch.Tensor] = []

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        self.rows.append(batch.cpu())

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        torch.save(torch.cat(self.rows), self.record_dir / f"rank{trainer.global_rank}.pt")


def train_blocks(config_path: Path) -> torch.Tensor:
    """The training blocks of the data module a run's saved config describes (as 2 ranks see them)."""
    args = yaml.safe_load(config_path.read_text())["data"]["init_args"]
    dm = LMDataModule(**args)
    dm.trainer = type("T", (), {"world_size": 2})()
    dm.setup("fit")
    return dm.train_set.blocks


class SlowSteps(Callback):
    """Sleeps after every training step, so a test can kill a run part-way through."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        time.sleep(self.seconds)


class PoisonWeights(Callback):
    """Fills the embedding with NaN before step ``at_step``, as a diverging run would."""

    def __init__(self, at_step: int = 5) -> None:
        self.at_step = at_step

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int
    ) -> None:
        if trainer.global_step == self.at_step:
            with torch.no_grad():
                pl_module.backbone.wte.weight.fill_(float("nan"))
