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
from jsonargparse.typing import PositiveInt
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
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
        precision: 32-true, bf16-mixed, 16-mixed, ...
        num_nodes: Machines in the job (started by torchrun, srun, ...; see docs/scaling.md).
    """

    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    strategy: str = "auto"
    precision: str = "32-true"
    num_nodes: PositiveInt = 1


class RankBatches(Sampler[list[int]]):
    """This process's share of ``batches``: every ``world_size``-th one, starting at its ``rank``. The
    shares hold each batch once between them (their sizes differ by at most one batch). A process left
    without a batch (fewer batches than processes) gets the first batch as a stand-in (``stand_in``), so
    every process runs the same hooks; its predictions are not kept."""

    def __init__(self, batches: list[list[int]], rank: int = 0, world_size: int = 1) -> None:
        self.batches = batches[rank::world_size] or batches[:1]
        self.stand_in = not batches[rank::world_size]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class PredictTexts(LightningDataModule):
    """Texts and their token ids (for batching by length) as the predict DataLoader of each process.

    A batch is ``{"index": positions of its texts (B,), "texts": the texts, "ids": their token ids,
    "stand_in": whether it only stands in (see :class:`RankBatches`)}``.
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
        self.stand_in = False

    def predict_dataloader(self) -> DataLoader:
        share = RankBatches(self.batches, self.trainer.global_rank, self.trainer.world_size)
        self.stand_in = share.stand_in
        return DataLoader(range(len(self.texts)), batch_sampler=share, collate_fn=self._collate)

    def _collate(self, rows: list[int]) -> dict[str, Any]:
        return {
            "index": torch.tensor(rows, dtype=torch.long),
            "texts": [self.texts[i] for i in rows],
            "ids": [self.ids[i] for i in rows],
            "stand_in": self.stand_in,
        }


class ShardWriter(BasePredictionWriter):
    """Keeps this process's predictions and, at the end, writes them to ``folder/shard-RANK.pt``
    (complete or not at all: written under a temporary name, then renamed), then waits for the other
    processes to write theirs. ``folder`` is a new folder in ``base`` (private and unguessable, by
    ``mkdtemp``) that the first process makes and tells the others, so runs never share one."""

    def __init__(self, base: str | os.PathLike) -> None:
        super().__init__(write_interval="batch")
        self.base = Path(base)
        self.folder: Path | None = None
        self.parts: list[Outputs] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.parts = []
        made = None
        if trainer.global_rank == 0:
            self.base.mkdir(parents=True, exist_ok=True)
            made = tempfile.mkdtemp(prefix=".shards-", dir=self.base)
        self.folder = Path(trainer.strategy.broadcast(made, src=0))

    def write_on_batch_end(  # noqa: D102
        self,
        trainer: Trainer,
        module: LightningModule,
        prediction: Outputs,
        indices: Any,
        batch: dict,
        *args: Any,
    ) -> None:
        if not batch["stand_in"]:
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
    if (np.diff(order) > 0).all():
        return outputs  # in order already (one process)
    return {key: _rows(value, order) for key, value in outputs.items()}


def _rows(value: Any, rows: np.ndarray) -> Any:
    """The ``rows`` of an output: a tensor's, a sparse matrix's or a list's."""
    if isinstance(value, torch.Tensor):
        return value[torch.from_numpy(rows)]
    if sp.issparse(value):
        return value[rows]
    return [value[i] for i in rows]


def read_shards(folder: str | os.PathLike, count: int, world_size: int) -> Outputs:
    """The predictions of all ``world_size`` processes from ``folder``, in the texts' order."""
    paths = sorted(Path(folder).glob("shard-*.pt"))
    if len(paths) != world_size:
        raise ImdbError(
            f"{folder} holds {len(paths)} prediction shards for {world_size} processes: the processes "
            "must share a filesystem (give --out a folder every machine sees)"
        )
    shards = [torch.load(p, weights_only=False) for p in paths]  # written by this run's processes
    return in_order(joined([s for s in shards if s is not None]), count)


def shard_base(out: str | os.PathLike | None) -> Path:
    """Where the processes of a run make their shard folder: beside ``out`` (which must be on a
    filesystem every process sees), or without one in the temporary folder (one machine's)."""
    return Path(out).absolute().parent if out is not None else Path(tempfile.gettempdir())


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
    shared among the processes, each writing a shard to a new folder in ``shards`` (see
    :func:`shard_base`; by default the temporary folder, which a job over several machines cannot use).

    Returns the outputs of every batch joined in the texts' order (``index`` holds each row's text
    position) in the job's first process, and None in the others (they have nothing left to do).
    """
    if not texts:
        raise InputError("no texts to run the model over")
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
            raise refused_options(err) from None
        check_runner(runner)
        if runner.num_nodes > 1 and shards is None:
            raise InputError(
                "a job over several machines writes its results through files every machine sees: give "
                "--out a path on a shared filesystem"
            )
        writer = ShardWriter(shards if shards is not None else shard_base(None))
        runner.callbacks.append(writer)
        try:
            runner.predict(module, datamodule=data, return_predictions=False)
            if runner.global_rank != 0:
                return None
            return read_shards(writer.folder, len(texts), runner.world_size)
        finally:
            if runner.global_rank == 0 and writer.folder is not None:
                shutil.rmtree(writer.folder, ignore_errors=True)


def check_runner(runner: Trainer) -> None:
    """Refuse what the sharing of texts cannot run: strategies that shard the model (every process must
    join every forward pass, and shares differ by a batch), launchers that start the processes from
    inside this one (spawn, fork: the run's files are made in them), and precisions that convert the
    weights in place (an index would record the fingerprint of converted weights)."""
    strategy = runner.strategy
    if type(strategy) not in (SingleDeviceStrategy, DDPStrategy):  # not FSDP, DeepSpeed (a DDP subclass), ...
        raise InputError(
            f"--trainer.strategy {type(strategy).__name__}: texts are shared among processes, each holding "
            "the whole model: use ddp (or leave it auto)"
        )
    launcher = strategy.launcher
    if launcher is not None and not isinstance(launcher, _SubprocessScriptLauncher):
        raise InputError(
            f"--trainer.strategy starts processes by {type(launcher).__name__} (spawn or fork, as in a "
            "notebook): use --trainer.strategy ddp from a command line or script"
        )
    if str(runner.precision).endswith("-true") and runner.precision != "32-true":
        raise InputError(
            f"--trainer.precision {runner.precision} converts the model's weights in place: use "
            f"{str(runner.precision).replace('-true', '-mixed')} (autocast) or 32-true"
        )


def refused_options(err: Exception) -> InputError:
    """Lightning's refusal of Trainer options as one error line, with the fix where it is known."""
    text = " ".join(str(err).split())
    if "No supported gpu backend" in text or ("gpu" in text.lower() and "not available" in text.lower()):
        text += " (no GPU here: use --trainer.accelerator cpu)"
    return InputError(f"--trainer options: {text}")


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
