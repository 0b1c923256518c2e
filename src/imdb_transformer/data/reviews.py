"""ReviewsDataModule: labelled IMDB reviews as padded batches of token ids, for classification."""

from __future__ import annotations

import os
import random
from functools import partial
from pathlib import Path

import datasets
import lightning as L
import numpy as np
import pyarrow.compute as pc
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from imdb_transformer.atomic import atomic_path
from imdb_transformer.data.imdb import DEFAULT_SOURCE, IMDBSourceError, load_split, review_texts
from imdb_transformer.data.tokenizer import EOS_ID, PAD_ID, Tokenizer, cache_key, corpus_fingerprint, tokenize

_CACHE_VERSION = "1"


def fit_to_context(ids: list[int], max_length: int, head_fraction: float = 0.25) -> list[int]:
    """``[EOS] + ids + [EOS]`` cut to ``max_length``: a long review keeps its head and its tail.

    EOS is what precedes every review in pretraining, so the model reads the review as it learned
    to. Reviews state their verdict mostly at the start and the end; keeping a quarter from the head
    and the rest from the tail is the best split found for long documents by Sun et al. (2019),
    "How to Fine-Tune BERT for Text Classification".
    """
    room = max_length - 2
    if len(ids) > room:
        head = int(room * head_fraction)
        ids = ids[:head] + ids[len(ids) - (room - head) :]
    return [EOS_ID, *ids, EOS_ID]


def collate_reviews(items: list[dict], max_length: int) -> dict[str, torch.Tensor]:
    """Pad a list of ``{"ids", "label", "idx"}`` to the longest in the batch; ``mask`` marks real tokens."""
    seqs = [fit_to_context(list(item["ids"]), max_length) for item in items]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = True
    batch = {"ids": ids, "mask": mask}
    for key in ("label", "idx"):
        if key in items[0]:
            batch[key] = torch.tensor([int(item[key]) for item in items])
    return batch


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
    A review longer than the context keeps its head and tail (see :func:`fit_to_context`). Batches
    are padded to their longest review; evaluation batches are sorted by length so little is padding.

    Args:
        source: A dataset id for ``datasets.load_dataset`` or a local folder of ``{split}.parquet``.
        cache_dir: Where the tokenised reviews are cached.
        tokenizer: A SentencePiece ``.model``; default: the model's (its backbone's) tokenizer.
        max_length: Tokens per review, EOS marks included; default: the model's context length.
        val_fraction: Share of ``train`` held out for validation (model selection never sees ``test``).
        max_reviews: Use only this many (shuffled) reviews of each split: for smoke runs.
        batch_size: Reviews per batch on each device.
        num_workers: DataLoader worker processes.
        num_proc: Processes for tokenising in ``prepare_data`` (default: all CPU cores).
        seed: Seeds the validation split and the ``max_reviews`` sample.
    """

    def __init__(
        self,
        source: str = DEFAULT_SOURCE,
        cache_dir: str = "~/.cache/imdb_transformer",
        tokenizer: str | None = None,
        max_length: int | None = None,
        val_fraction: float = 0.1,
        max_reviews: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        num_proc: int | None = None,
        seed: int = 1234,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.save_hyperparameters()
        self.source = source
        self.cache_dir = Path(cache_dir).expanduser()
        self.tokenizer_path = tokenizer
        self.max_length = max_length
        self.val_fraction = val_fraction
        self.max_reviews = max_reviews
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.num_proc = num_proc or os.cpu_count() or 1
        self.seed = seed
        self.tokenizer: Tokenizer | None = None
        self.splits: dict[str, _Reviews] = {}

    def _tokenizer(self) -> Tokenizer:
        if self.tokenizer_path is not None:
            return Tokenizer(self.tokenizer_path)
        model = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        tokenizer = getattr(model, "tokenizer", None)
        if tokenizer is None:
            raise ValueError(
                "ReviewsDataModule needs a tokenizer: pass data.tokenizer or use a model with a backbone"
            )
        return tokenizer

    def _context(self) -> int:
        if self.max_length is not None:
            return self.max_length
        model = getattr(self.trainer, "lightning_module", None) if self.trainer is not None else None
        return model.backbone.config.block_size if model is not None else 512

    def _load(self, split: str) -> tuple[list[str], list[int]]:
        ds = load_split(self.source, split)
        where = f"{self.source}:{split}"
        all_labels = ds["label"]
        bad = sorted({lab for lab in all_labels if lab not in (0, 1)})
        if bad:
            raise IMDBSourceError(f"{where} has labels {bad} outside {{0, 1}}; fix or drop those rows")
        texts, rows = review_texts(ds, where)
        labels = [all_labels[i] for i in rows]
        keep = list(range(len(texts)))
        if self.max_reviews is not None:
            random.Random(self.seed).shuffle(keep)
            keep = sorted(keep[: self.max_reviews])
        return [texts[i] for i in keep], [labels[i] for i in keep]

    def _cache_path(self, split: str, texts: list[str], tokenizer: Tokenizer) -> Path:
        key = cache_key(_CACHE_VERSION, corpus_fingerprint(texts), tokenizer.to_bytes())
        return self.cache_dir / f"reviews-{split}-{key}"

    def prepare_data(self) -> None:
        """Tokenise ``train`` and ``test`` once (batched, in parallel) into the cache."""
        tokenizer = self._tokenizer()
        for split in ("train", "test"):
            texts, labels = self._load(split)
            path = self._cache_path(split, texts, tokenizer)
            if path.exists():
                continue
            ds = datasets.Dataset.from_dict({"text": texts, "label": labels, "idx": list(range(len(texts)))})
            ds = tokenize(ds, tokenizer, self.num_proc, split)
            with atomic_path(path, is_dir=True) as tmp:
                ds.save_to_disk(str(tmp))
            rank_zero_info(f"Cached {len(ds):,} tokenised {split} reviews: {path}")

    def setup(self, stage: str | None = None) -> None:
        """Load the cached splits; carve validation out of ``train`` by ``seed``."""
        self.tokenizer = self._tokenizer()
        self.context = self._context()
        tables = {}
        for split in ("train", "test"):
            texts, _ = self._load(split)
            path = self._cache_path(split, texts, self.tokenizer)
            if not path.exists():
                raise RuntimeError(f"tokenised reviews not found at {path}: call prepare_data() first")
            tables[split] = datasets.load_from_disk(str(path))
        order = np.random.default_rng(self.seed).permutation(len(tables["train"]))
        n_val = max(1, round(len(order) * self.val_fraction))
        self.splits = {
            "train": _Reviews(tables["train"], order[n_val:]),
            "val": _Reviews(tables["train"], _by_length(tables["train"], order[:n_val])),
            "test": _Reviews(tables["test"], _by_length(tables["test"], np.arange(len(tables["test"])))),
        }

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=partial(collate_reviews, max_length=self.context),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test reviews (sorted by length; each batch carries their ``idx`` in the split)."""
        return self._loader("test", shuffle=False)
