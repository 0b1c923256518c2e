"""Callbacks: the ones the configs name, and the ones the CLI puts on every run."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ThroughputMonitor
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from imdb_transformer import hardware
from imdb_transformer.artifacts import atomic_path
from imdb_transformer.errors import TrainingDiverged


class TokenThroughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor set up for packed token blocks: logs ``train|items_per_sec``
    (tokens/s), and ``train|device/mfu`` where the device's peak FLOPs are known.

    Args:
        window_size: Batches in the rolling average.
    """

    def __init__(self, window_size: int = 50, **kwargs: Any) -> None:
        super().__init__(
            batch_size_fn=lambda batch: batch.size(0),
            length_fn=lambda batch: batch.size(0) * (batch.size(1) - 1),  # predicted tokens
            window_size=window_size,
            **kwargs,
        )


class FiniteLossGuard(Callback):
    """Stops training on a NaN or infinite loss: every update after one trains on garbage.

    The check of each step's loss stays on the device (no host sync per step); the flag is read
    every ``log_every_n_steps`` and before any checkpoint is written, so broken weights are never
    saved and the error still names the first bad step.
    """

    def __init__(self) -> None:
        self.first_bad: Tensor | None = None  # step of the first non-finite loss, or -1
        self._step = 0

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, i: int
    ) -> None:
        self._step = trainer.global_step  # the step this batch trains (counted before its update)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, i: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if not isinstance(loss, Tensor):
            return
        if self.first_bad is None or self.first_bad.device != loss.device:
            self.first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach())
        self.first_bad = torch.where(bad & (self.first_bad < 0), self._step, self.first_bad)
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            self.check()

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`TrainingDiverged` if any loss so far was not finite."""
        if self.first_bad is not None and (step := int(self.first_bad)) >= 0:
            raise TrainingDiverged(
                f"the training loss became NaN or infinite at step {step}; stopped before saving broken "
                "weights. Try a lower --model.learning_rate, gradient clipping (--trainer.gradient_clip_val "
                "1.0) or full precision (--trainer.precision 32-true), then resume from an earlier checkpoint"
            )


class ShareTokenizer(Callback):
    """Hands the tokenizer from the data to the model once the data is set up: the one place where
    pretraining's model learns the tokenizer that the data fit (``use_tokenizer``), for bits per byte
    and for the backbone record its checkpoints carry.

    Lightning sets up the datamodule, then callbacks, then the module, so the model has it in
    ``setup``. Models that bring their own tokenizer (adapters over a backbone) are left alone.
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        use = getattr(pl_module, "use_tokenizer", None)
        if tokenizer is not None and use is not None:
            use(tokenizer)


class LatestCheckpoint(ModelCheckpoint):
    """``last.ckpt``, overwritten with the run's latest state every time checkpoints are considered (each
    validation, or each epoch) and when training ends, whatever the monitored metric did.

    Lightning 2.6's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only when the monitored metric
    improved, so a run stopped after an epoch without a new best would resume from an older state. This
    callback, without a monitor, takes over ``save_last`` from the best-checkpoint callback ``best`` and
    writes to the same folder."""

    def __init__(self, best: ModelCheckpoint) -> None:
        super().__init__(
            dirpath=best.dirpath,
            filename=self.CHECKPOINT_NAME_LAST,
            monitor=None,
            save_top_k=1,
            save_on_train_epoch_end=best._save_on_train_epoch_end,
            enable_version_counter=False,
        )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # max_steps reached between two validations: keep the final state too
        if self._last_global_step_saved != trainer.global_step:
            self._save_topk_checkpoint(trainer, self._monitor_candidates(trainer))


class SaveOnTerm(Callback):
    """On SIGTERM (a scheduler's preemption, ``kill``), writes the run's ``last.ckpt`` at the step it
    reached before Lightning ends the run, so ``--ckpt_path last`` resumes from there rather than from
    the last validation."""

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        checkpoint = trainer.checkpoint_callback
        if isinstance(exception, SIGTERMException) and checkpoint is not None and checkpoint.dirpath:
            trainer.save_checkpoint(
                Path(checkpoint.dirpath) / "last.ckpt", weights_only=False
            )  # all, to resume


class PrecisionAdvice(Callback):
    """Warns once when bf16 autocast is asked for on a CPU that has no bf16 matrix hardware (no AMX
    tiles, no AVX512-BF16): there bf16 is emulated and trains slower than fp32, not faster."""

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "bf16" not in str(trainer.precision) or pl_module.device.type != "cpu":
            return
        if not hardware.native_bf16_cpu():
            rank_zero_warn(
                f"--trainer.precision {trainer.precision} on a CPU without bf16 hardware "
                f"({hardware.describe_cpu()}): bf16 is emulated here, so expect it to train more slowly than "
                "fp32, not faster (docs/training.md). Use --trainer.precision 32-true (the default) on this "
                "machine; bf16 pays on CPUs with AMX and on GPUs."
            )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, writing each local checkpoint beside its final path and renaming
    it into place (:func:`~imdb_transformer.artifacts.atomic_path`).

    Lightning's own writer stages the file in the system's temporary folder and, where the run folder
    is on another filesystem, copies it over the old file: a full disk or a kill during the copy leaves
    a partial ``last.ckpt`` in place of the good one. Here the old checkpoint stays whole until the new
    one is complete. Remote paths (``s3://``...) keep Lightning's writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local_file_protocol(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        buffer = io.BytesIO()  # serialised first, so a full disk surfaces as Python's OSError(ENOSPC)
        torch.save(checkpoint, buffer)
        with atomic_path(Path(path)) as tmp:
            tmp.write_bytes(buffer.getbuffer())
