"""Running a model over many texts as a Lightning job (``embed`` and ``classify --split/--file``).

``Trainer.predict`` runs the model's ``predict_step`` on any accelerator, number of devices and nodes,
strategy and precision (:class:`TrainerOptions`, the verbs' ``--trainer.*``). The texts go in batches
of similar length, and each process takes every ``world_size``-th batch: no padding of the split with
repeated texts (as Lightning's distributed sampler would), so none is lost or doubled. Each process
writes what it predicted as a shard (:class:`ShardWriter`, a Lightning prediction writer); the first
process reads them back in the texts' order (:func:`predict`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, Sampler

from imdb_transformer.errors import ImdbError, InputError
from imdb_transformer.text.batching import length_batches

Outputs = dict[str, Any]  # one batch's or one run's predictions: "index" and the model's outputs


@dataclass(frozen=True)
class TrainerOptions:
    """How ``Trainer.predict`` runs (the Trainer's arguments of the same names).

    Args:
        accelerator: cpu, gpu (cuda), mps, or auto (a GPU when there is one).
        devices: How many devices (or which, as "0,2"), per node; each runs its own process.
        strategy: auto (one process per device: ddp when there are several), ddp, fsdp, ...
        precision: 32-true (default), bf16-mixed, 16-mixed, ...
        num_nodes: Machines in the job (started by torchrun, srun, ...; see docs/scaling.md).
    """

    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    precision: str | None = None
    num_nodes: int = 1


class RankBatches(Sampler[list[int]]):
    """This process's share of ``batches``: every ``world_size``-th one, starting at its ``rank``. The
    shares hold each batch once between them (their sizes differ by at most one batch)."""

    def __init__(self, batches: list[list[int]], rank: int = 0, world_size: int = 1) -> None:
        self.batches = batches[rank::world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class PredictTexts(LightningDataModule):
    """Texts and their token ids (for batching by length) as the predict DataLoader of each process.

    A batch is ``{"index": positions of its texts (B,), "texts": the texts, "ids": their token ids}``.
    """

    def __init__(
        self,
        texts: list[str],
        ids: list[list[int]],
        batch_size: int,
        context: int,
        max_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.texts, self.ids = texts, ids
        self.batches = length_batches(ids, batch_size, context, max_tokens)

    def predict_dataloader(self) -> DataLoader:
        share = RankBatches(self.batches, self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(range(len(self.texts)), batch_sampler=share, collate_fn=self._collate)

    def _collate(self, rows: list[int]) -> dict[str, Any]:
        return {
            "index": torch.tensor(rows, dtype=torch.long),
            "texts": [self.texts[i] for i in rows],
            "ids": [self.ids[i] for i in rows],
        }


class ShardWriter(BasePredictionWriter):
    """Keeps this process's predictions and, at the end, writes them to ``folder/shard-RANK.pt``
    (complete or not at all: written under a temporary name, then renamed), then waits for the other
    processes to write theirs. The first process empties ``folder`` before anyone writes."""

    def __init__(self, folder: str | os.PathLike) -> None:
        super().__init__(write_interval="batch")
        self.folder = Path(folder)
        self.parts: list[Outputs] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.parts = []
        if trainer.global_rank == 0:  # Lightning waits for every process after setup
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir(parents=True)

    def write_on_batch_end(  # noqa: D102
        self, trainer: Trainer, pl_module: LightningModule, prediction: Outputs, *args: Any
    ) -> None:
        self.parts.append(prediction)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        path = self.folder / f"shard-{trainer.global_rank:05d}.pt"
        partial = path.with_suffix(".partial")
        torch.save(joined(self.parts) if self.parts else None, partial)
        partial.replace(path)
        self.parts = []
        trainer.strategy.barrier("shards written")


class _ProgressBar(TQDMProgressBar):
    """Lightning's progress bar on stderr, so a verb's stdout holds its results alone."""

    def init_predict_tqdm(self) -> Tqdm:
        return Tqdm(
            desc=self.predict_description, position=2 * self.process_position, disable=self.is_disabled,
            leave=True, dynamic_ncols=True, file=sys.stderr, smoothing=0, bar_format=self.BAR_FORMAT,
        )  # fmt: skip


def joined(parts: list[Outputs]) -> Outputs:
    """Batches' outputs as one: tensors and sparse rows stacked, lists concatenated, key by key."""
    out = {}
    for key in parts[0]:
        values = [part[key] for part in parts]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.cat(values)
        elif sp.issparse(values[0]):
            out[key] = values[0] if len(values) == 1 else sp.vstack(values, format="csr")
        else:
            out[key] = [item for value in values for item in value]
    return out


def in_order(outputs: Outputs, count: int) -> Outputs:
    """``outputs`` of ``count`` texts rearranged into the texts' order by their ``index``; refuses
    outputs that miss a text or hold one twice."""
    index = outputs["index"].numpy()
    order = np.argsort(index, kind="stable")
    if len(index) != count or not np.array_equal(index[order], np.arange(count)):
        missing = count - len(np.unique(index))
        raise ImdbError(
            f"the predictions cover {len(np.unique(index)):,} of {count:,} texts ({missing:,} missing) with "
            f"{len(index) - len(np.unique(index)):,} repeated: the processes did not share the texts "
            "exactly; run again"
        )
    out = {}
    for key, value in outputs.items():
        if isinstance(value, torch.Tensor):
            out[key] = value[torch.from_numpy(order)]
        elif sp.issparse(value):
            out[key] = value if (np.diff(order) > 0).all() else value[order]
        else:
            out[key] = [value[i] for i in order]
    return out


def read_shards(folder: str | os.PathLike, count: int, world_size: int) -> Outputs:
    """The predictions of all ``world_size`` processes from ``folder``, in the texts' order."""
    paths = sorted(Path(folder).glob("shard-*.pt"))
    if len(paths) != world_size:
        raise ImdbError(
            f"{folder} holds {len(paths)} prediction shards for {world_size} processes: a process did "
            "not finish; run again"
        )
    shards = [torch.load(p, weights_only=False) for p in paths]  # written by this run's processes
    return in_order(joined([s for s in shards if s is not None]), count)


def shard_folder(out: str | os.PathLike | None, verb: str) -> Path:
    """Where the processes of one run put their shards: beside ``out`` (on a filesystem every process
    sees), or without one in the temporary folder, named by the command and the working folder, which
    every process of a run shares."""
    if out is not None:
        out = Path(out).absolute()
        return out.parent / f".{out.name}.shards"
    job = hashlib.sha1(f"{os.getcwd()}\0{sys.argv}".encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"imdb-transformer-{verb}-{job}.shards"


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Without Lightning's notes on which accelerators exist, on DataLoader workers (the texts are
    already tokenised: a worker would add nothing) and on custom batch samplers (:class:`RankBatches`
    hands out every text once by construction)."""
    logger = logging.getLogger("lightning.pytorch")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            for note in ("does not have many workers", "custom batch sampler", "treespec, LeafSpec"):
                warnings.filterwarnings("ignore", message=f".*{note}.*")
            yield
    finally:
        logger.setLevel(level)


def predict(
    module: LightningModule,
    texts: list[str],
    encode: Callable[[list[str]], list[list[int]]],
    *,
    context: int,
    batch_size: int,
    trainer: TrainerOptions | None = None,
    shards: str | os.PathLike | None = None,
    max_tokens: int | None = None,
    progress: bool = True,
) -> Outputs | None:
    """Run ``module.predict_step`` over ``texts`` with ``Trainer.predict``: batches of similar length
    (``encode`` gives the token ids the lengths are counted in, ``context`` the most read of each),
    shared among the processes, each writing a shard to the folder ``shards`` (see :func:`shard_folder`;
    a process alone uses a temporary folder of its own).

    Returns the outputs of every batch joined in the texts' order (``index`` holds each row's text
    position) in the job's first process, and None in the others (they have nothing left to do).
    """
    options = trainer or TrainerOptions()
    data = PredictTexts(texts, encode(texts), batch_size, context, max_tokens)
    with _quiet_lightning():
        progress = progress and len(data.batches) > 1
        try:
            runner = Trainer(
                **asdict(options), logger=False, enable_checkpointing=False, enable_model_summary=False,
                use_distributed_sampler=False, callbacks=[_ProgressBar()] if progress else [],
                enable_progress_bar=progress,
            )  # fmt: skip
        except (MisconfigurationException, ValueError) as err:  # an accelerator that is not here, ...
            raise InputError(f"--trainer options: {err}") from None
        if runner.world_size == 1:  # one process: a folder of its own, whatever else runs
            shards = Path(tempfile.mkdtemp(prefix="imdb-transformer-shards-"))
        elif shards is None:
            shards = shard_folder(None, "predict")
        writer = ShardWriter(shards)
        runner.callbacks.append(writer)
        try:
            runner.predict(module, datamodule=data, return_predictions=False)
            if runner.global_rank != 0:
                return None
            return read_shards(shards, len(texts), runner.world_size)
        finally:
            if runner.global_rank == 0:
                shutil.rmtree(shards, ignore_errors=True)


def trainer_options(trainer: TrainerOptions | dict | None, device: str | None) -> TrainerOptions:
    """The Trainer options of a verb, from ``--trainer.*`` and the older ``--device`` (cpu, cuda or
    cuda:N: a shorthand for one device), refused together."""
    options = TrainerOptions(**trainer) if isinstance(trainer, dict) else trainer or TrainerOptions()
    if device is None:
        return options
    if (options.accelerator, options.devices) != ("auto", 1):
        raise InputError("give the device one way: --device, or --trainer.accelerator and --trainer.devices")
    number = device.partition(":")[2]
    accelerator = "cpu" if device == "cpu" else "gpu"
    return replace(options, accelerator=accelerator, devices=[int(number)] if number else 1)
