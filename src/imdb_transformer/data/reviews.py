"""ReviewsDataModule: labelled IMDB reviews as padded batches of token ids, for classification."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import ClassVar

import datasets
import lightning as L
import numpy as np
import pyarrow.compute as pc
import torch
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Sampler

from imdb_transformer.artifacts import atomic_path, cache_key, corpus_fingerprint
from imdb_transformer.core.backbone import load_spec
from imdb_transformer.errors import InputError
from imdb_transformer.hardware import usable_cores
from imdb_transformer.text.batching import collate_for
from imdb_transformer.text.imdb import DEFAULT_SOURCE, load_reviews, validation_rows
from imdb_transformer.text.tokenizer import Tokenizer, tokenize

_CACHE_VERSION = "1"


class _Reviews(Dataset):
    """Rows of a tokenised split, in the order of ``order`` (indices into the split)."""

    def __init__(self, table: datasets.Dataset, order: np.ndarray) -> None:
        self.table, self.order = table, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict:
        return self.table[int(self.order[i])]


def _by_length(table: datasets.Dataset, idx: np.ndarray) -> np.ndarray:
    """``idx`` reordered by review length, so evaluation batches hold reviews of similar length."""
    lengths = pc.list_value_length(table.data.column("ids")).to_numpy()
    return idx[np.argsort(lengths[idx], kind="stable")]


class ReviewsDataModule(L.LightningDataModule):
    """IMDB ``train`` (split into train and validation) and ``test`` reviews with their labels.

    Tokenised once in ``prepare_data`` with the backbone's tokenizer and cached; ``setup`` only loads.
    What it needs from the model is explicit: the backbone (for its tokenizer and context), which the
    CLI fills in from ``--model.backbone``, or a tokenizer and a length given directly.
    A review longer than the context keeps its head and tail (see :func:`fit_to_context`). Batches
    are padded to their longest review; evaluation batches are sorted by length so little is padding.

    Args:
        source: A dataset id for ``datasets.load_dataset`` or a local folder of ``{split}.parquet``.
        cache_dir: Where the tokenised reviews are cached.
        backbone: The backbone the model reads the reviews with (an export folder or checkpoint): its
            tokenizer and context are the defaults of the next two. Filled in from ``model.backbone``.
        tokenizer: A SentencePiece ``.model`` (overrides the backbone's).
        max_length: Tokens per review, EOS marks included (default: the backbone's context).
        val_fraction: Share of ``train`` held out for validation (model selection never sees ``test``).
        max_reviews: Use only this many (shuffled) reviews of each split: for smoke runs.
        batch_size: Reviews per batch on each device.
        num_workers: DataLoader worker processes.
        num_proc: Processes for tokenising in ``prepare_data`` (default: every core this process may use).
        seed: Seeds the validation split and the ``max_reviews`` sample.
        windows: A review longer than the context is read as all its windows (the classifier averages
            their features) instead of its head and tail.
    """

    def __init__(
        self,
        source: str = DEFAULT_SOURCE,
        cache_dir: str = "~/.cache/imdb_transformer",
        backbone: str | None = None,
        tokenizer: str | None = None,
        max_length: int | None = None,
        val_fraction: float = 0.1,
        max_reviews: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        num_proc: int | None = None,
        seed: int = 1234,
        windows: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.windows = windows
        self.source = source
        self.cache_dir = Path(cache_dir).expanduser()
        self.backbone = backbone
        self.tokenizer_path = tokenizer
        self.max_length = max_length
        self.val_fraction = val_fraction
        self.max_reviews = max_reviews
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.num_proc = num_proc or usable_cores()
        self.seed = seed
        self.tokenizer: Tokenizer | None = None
        self.reverse = False  # set from the backbone: a backward one reads each review reversed
        self.splits: dict[str, _Reviews] = {}
        self._paths: dict[str, Path] = {}  # each split's cache folder, as prepare_data found it

    def _reader(self) -> tuple[Tokenizer, int, bool]:
        """The tokenizer, tokens per review and whether the backbone reads reviews reversed, from the
        arguments (no model or trainer involved)."""
        if self.backbone is None and (self.tokenizer_path is None or self.max_length is None):
            raise InputError(
                "ReviewsDataModule needs the backbone it prepares reviews for (data.backbone, which the CLI "
                "fills in from --model.backbone), or both data.tokenizer and data.max_length"
            )
        spec = load_spec(self.backbone) if self.backbone is not None else None
        tokenizer = Tokenizer(self.tokenizer_path) if self.tokenizer_path else spec.tokenizer
        reverse = spec is not None and spec.config.reverse
        return tokenizer, self.max_length or spec.config.block_size, reverse

    def _load(self, split: str) -> tuple[list[str], list[int]]:
        reviews = load_reviews(self.source, split, self.max_reviews, self.seed)
        return reviews.texts, reviews.labels

    def _cache_path(self, split: str, texts: list[str], tokenizer: Tokenizer) -> Path:
        key = cache_key(_CACHE_VERSION, corpus_fingerprint(texts), tokenizer.to_bytes())
        return self.cache_dir / f"reviews-{split}-{key}"

    source_splits: tuple[str, ...] = ("train", "test")  # the dataset splits this module reads
    # the splits a Trainer stage needs (no stage, or one not named, reads them all): a fit never reads the
    # test reviews, nor a test the training reviews
    stage_splits: ClassVar[dict[str, tuple[str, ...]]] = {
        "fit": ("train",),
        "validate": ("train",),
        "test": ("test",),
        "predict": ("test",),
    }

    def _splits(self, stage: str | None) -> tuple[str, ...]:
        """The splits ``stage`` needs: every one for no stage, or a stage not named."""
        return self.stage_splits.get(stage or "", self.source_splits)

    def _stage(self) -> str | None:
        """The stage the attached Trainer is running (fit, validate, test, predict), or None when none
        runs (no Trainer, or one that has finished)."""
        state = getattr(self.trainer, "state", None)
        if state is None or state.fn is None or state.status != TrainerStatus.RUNNING:
            return None
        return str(state.fn.value)

    def prepare_data(self) -> None:
        """Tokenise the splits the Trainer's stage needs (all of them outside a Trainer), once, batched and
        in parallel, into the cache."""
        tokenizer, _, _ = self._reader()
        for split in self._splits(self._stage()):
            texts, labels = self._load(split)
            path = self._paths[split] = self._cache_path(split, texts, tokenizer)
            if path.exists():
                continue
            ds = datasets.Dataset.from_dict({"text": texts, "label": labels, "idx": list(range(len(texts)))})
            ds = tokenize(ds, tokenizer, self.num_proc, split)
            with atomic_path(path, is_dir=True) as tmp:
                ds.save_to_disk(str(tmp))
            rank_zero_info(f"Cached {len(ds):,} tokenised {split} reviews: {path}")

    def setup(self, stage: str | None = None) -> None:
        """Load the cached splits ``stage`` needs and arrange them: train and validation (from the
        training reviews), test; those of an earlier ``setup`` stay."""
        self.tokenizer, self.context, self.reverse = self._reader()
        tables = {}
        for split in self._splits(stage):  # the cache folder prepare_data found, else found again
            path = self._paths.get(split) or self._cache_path(split, self._load(split)[0], self.tokenizer)
            if not path.exists():
                raise RuntimeError(f"tokenised reviews not found at {path}: call prepare_data() first")
            tables[split] = datasets.load_from_disk(str(path))
        self.splits.update(self._arrange(tables))

    def _arrange(self, tables: dict[str, datasets.Dataset]) -> dict[str, _Reviews]:
        """Validation carved out of ``train`` by ``seed``; ``test`` whole. Evaluation sorted by length."""
        arranged = {}
        if "train" in tables:
            fit, val = validation_rows(len(tables["train"]), self.val_fraction, self.seed)
            arranged["train"] = _Reviews(tables["train"], fit)
            arranged["val"] = _Reviews(tables["train"], _by_length(tables["train"], val))
        if "test" in tables:
            test = tables["test"]
            arranged["test"] = _Reviews(test, _by_length(test, np.arange(len(test))))
        return arranged

    def _loader(
        self,
        split: str,
        shuffle: bool = False,
        sampler: Sampler | None = None,
        dataset: Dataset | None = None,
    ) -> DataLoader:
        """Batches of ``split`` (its reviews, or ``dataset`` in their place, collated as ``split``'s)."""
        if dataset is None and split not in self.splits:
            stage = "fit" if split in ("train", "val") else "test"
            raise RuntimeError(
                f"the {split} reviews are not set up (a Trainer's stage sets up only its own): call "
                f"prepare_data() and setup({stage!r}) first"
            )
        return DataLoader(
            self.splits[split] if dataset is None else dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=self._collate(split),
            persistent_workers=self.num_workers > 0,
        )

    def _collate(self, split: str) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        return partial(collate_for(self.windows), max_length=self.context, reverse=self.reverse)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test reviews (sorted by length; each batch carries their ``idx`` in the split)."""
        return self._loader("test", shuffle=False)
