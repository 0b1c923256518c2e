"""LMDataModule: IMDB reviews as packed blocks of token ids for next-token pretraining."""

from __future__ import annotations

import random
from pathlib import Path

import datasets
import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset

from imdb_transformer.artifacts import atomic_path, cache_key, corpus_fingerprint
from imdb_transformer.errors import InputError
from imdb_transformer.hardware import usable_cores
from imdb_transformer.text.imdb import DEFAULT_SOURCE, load_split, review_texts
from imdb_transformer.text.tokenizer import EOS_ID, ModelType, Tokenizer, fit_or_load, tokenize

_CACHE_VERSION = "1"  # bump when tokenising or packing changes


class PackedBlocks(Dataset):
    """Rows of a (N, block_size + 1) tensor of token ids: each row gives the inputs
    ``row[:-1]`` and the next-token targets ``row[1:]``. Map-style, so under DDP Lightning's
    DistributedSampler gives each rank its own share of the rows."""

    def __init__(self, blocks: torch.Tensor) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.size(0)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.blocks[i].long()


def pack(reviews: list[list[int]] | pa.ListArray, block_size: int, reverse: bool = False) -> np.ndarray:
    """Join tokenised reviews, each followed by EOS, into rows of ``block_size + 1`` ids.

    No padding: every row is full. Rows do not overlap, so no token is seen twice; only the
    stream's last partial row (fewer than ``block_size + 1`` ids) is dropped. ``reverse`` turns each
    review's tokens around (last first) before its EOS, for a backward LM: reviews stay in their order
    and apart, each still opened by the EOS of the one before, as the classifier will feed them.
    """
    if not isinstance(reviews, pa.Array | pa.ChunkedArray):
        reviews = pa.array(reviews, type=pa.list_(pa.int32()))
    if reverse:
        reviews = reverse_each(reviews)
    with_eos = pc.list_flatten(_append_eos(reviews)).to_numpy(zero_copy_only=False).astype(np.int32)
    n = len(with_eos) // (block_size + 1)
    return with_eos[: n * (block_size + 1)].reshape(n, block_size + 1)


def _lengths_and_values(reviews: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The length of each list and all their values, flat."""
    if isinstance(reviews, pa.ChunkedArray):
        reviews = reviews.combine_chunks()
    lengths = pc.list_value_length(reviews).to_numpy(zero_copy_only=False)
    return lengths, pc.list_flatten(reviews).to_numpy(zero_copy_only=False)


def reverse_each(reviews: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    """Each list's values last to first; the lists keep their order and lengths."""
    lengths, values = _lengths_and_values(reviews)
    ends = np.cumsum(lengths)
    starts = ends - lengths
    owner = np.repeat(np.arange(len(lengths)), lengths)  # which review each value belongs to
    flipped = values[starts[owner] + ends[owner] - 1 - np.arange(len(values))]
    offsets = np.concatenate([[0], ends]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flipped, pa.int32()))


def _append_eos(reviews: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    lengths, values = _lengths_and_values(reviews)
    ends = np.cumsum(lengths)
    out = np.insert(values, ends, EOS_ID)  # an EOS after each review
    offsets = np.concatenate([[0], ends + np.arange(1, len(lengths) + 1)])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(out, pa.int32()))


class LMDataModule(L.LightningDataModule):
    """IMDB ``train`` + ``unsupervised`` reviews, tokenised and packed for language modelling.

    ``prepare_data`` does the one-time work (load, fit the tokenizer, tokenise in parallel,
    pack, ``save_to_disk``), cached under ``cache_dir`` by a key of its inputs and settings, so
    a second run starts at once. ``setup`` only loads. The ``test`` split is never read here.

    Args:
        source: A dataset id for ``datasets.load_dataset`` or a local folder holding
            ``train/test/unsupervised.parquet``.
        cache_dir: Where the tokenizer and tokenised blocks are cached.
        vocab_size: Number of SentencePiece pieces to learn (the model's embedding rows).
        tokenizer_type: SentencePiece algorithm: ``unigram`` or ``bpe``.
        block_size: Tokens of context per training example (each row holds one more, the last target).
        val_fraction: Share of whole reviews held out for validation (never inside a training block).
        max_reviews: Use only this many (shuffled) reviews: for smoke runs. None uses all 75,000.
        reverse: Each review's tokens last to first: data for a backward LM (ULMFiT trains one of each
            direction and ensembles their classifiers). The tokenizer is the same as forward's.
        batch_size: Blocks per batch on each device.
        num_workers: DataLoader worker processes. The blocks live in memory, so 0 keeps up.
        num_proc: Processes for tokenising in ``prepare_data`` (default: every core this process may use).
        seed: Seeds the review shuffle and the validation split.
    """

    def __init__(
        self,
        source: str = DEFAULT_SOURCE,
        cache_dir: str = "~/.cache/imdb_transformer",
        vocab_size: int = 8192,
        tokenizer_type: ModelType = "unigram",
        block_size: int = 256,
        val_fraction: float = 0.02,
        max_reviews: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        num_proc: int | None = None,
        seed: int = 1234,
        reverse: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if block_size < 1 or batch_size < 1:
            raise InputError(f"block_size and batch_size must be positive, got {block_size} and {batch_size}")
        self.save_hyperparameters()
        self.source = source
        self.cache_dir = Path(cache_dir).expanduser()
        self.vocab_size = vocab_size
        self.tokenizer_type = tokenizer_type
        self.block_size = block_size
        self.val_fraction = val_fraction
        self.max_reviews = max_reviews
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.num_proc = num_proc or usable_cores()
        self.seed = seed
        self.reverse = reverse
        self._reviews: tuple[list[str], list[str]] | None = None
        self.tokenizer: Tokenizer | None = None
        self.train_set: PackedBlocks | None = None
        self.val_set: PackedBlocks | None = None

    def reviews(self) -> tuple[list[str], list[str]]:
        """The cleaned (train, validation) review texts: whole reviews, split by ``seed``."""
        if self._reviews is None:
            kept = [
                text
                for split in ("train", "unsupervised")
                for text in review_texts(load_split(self.source, split), f"{self.source}:{split}")[0]
            ]
            random.Random(self.seed).shuffle(kept)
            if self.max_reviews is not None:
                kept = kept[: self.max_reviews]
            n_val = max(1, round(len(kept) * self.val_fraction))
            if len(kept) - n_val < 1:
                raise InputError(f"only {len(kept)} non-empty reviews: too few to hold out a validation set")
            self._reviews = (kept[n_val:], kept[:n_val])
        return self._reviews

    def fit_tokenizer(self) -> Tokenizer:
        """The tokenizer of these reviews and settings, fit once into ``cache_dir`` (the longest part of
        preparing the data: a minute on 2 CPU cores). Fit it ahead, and copy the cache folder, to spare
        a rented GPU's time (benchmarks/gpu_check.py ``--cache``)."""
        train, _ = self.reviews()
        return fit_or_load(train, self.cache_dir, self.vocab_size, self.tokenizer_type, say=rank_zero_info)

    def _blocks_path(self, tokenizer: Tokenizer) -> Path:
        train, val = self.reviews()
        key = cache_key(
            _CACHE_VERSION,
            corpus_fingerprint(train),
            corpus_fingerprint(val),
            tokenizer.path.name,
            self.block_size,
            *(["reverse"] if self.reverse else []),  # forward keeps the key it always had
        )
        return self.cache_dir / f"lm-blocks-{key}"

    def prepare_data(self) -> None:
        """Fit (or find) the tokenizer, then tokenise and pack both splits once, into the cache."""
        tokenizer = self.fit_tokenizer()
        path = self._blocks_path(tokenizer)
        if path.exists():
            rank_zero_info(f"Using cached token blocks: {path}")
            return
        train, val = self.reviews()
        packed = {}
        for name, texts in (("train", train), ("validation", val)):
            ids = tokenize(datasets.Dataset.from_dict({"text": texts}), tokenizer, self.num_proc, name)
            blocks = pack(ids.data.column("ids"), self.block_size, self.reverse)
            if len(blocks) == 0:
                raise InputError(
                    f"the {name} split has fewer than block_size + 1 = {self.block_size + 1} tokens; "
                    "use more reviews or a smaller block_size"
                )
            flat = pa.array(blocks.reshape(-1), pa.int32())
            packed[name] = datasets.Dataset(
                pa.table({"ids": pa.FixedSizeListArray.from_arrays(flat, self.block_size + 1)})
            )
        with atomic_path(path, is_dir=True) as tmp:
            datasets.DatasetDict(packed).save_to_disk(str(tmp))
        sizes = ", ".join(f"{name} {len(d):,} blocks" for name, d in packed.items())
        rank_zero_info(f"Cached token blocks ({sizes} of {self.block_size + 1} ids): {path}")

    def setup(self, stage: str | None = None) -> None:
        """Load the cached tokenizer and blocks into memory (no tokenising here)."""
        self.tokenizer = self.fit_tokenizer()
        path = self._blocks_path(self.tokenizer)
        if not path.exists():
            raise RuntimeError(f"tokenised blocks not found at {path}: call prepare_data() first")
        saved = datasets.load_from_disk(str(path))
        blocks = {
            name: torch.from_numpy(
                pc.list_flatten(saved[name].data.column("ids"))
                .to_numpy()
                .reshape(-1, self.block_size + 1)
                .copy()
            )
            for name in ("train", "validation")
        }
        world = self.trainer.world_size if self.trainer is not None else 1
        # Equal shares per rank, so the DistributedSampler never repeats a block to even them out.
        train = blocks["train"][: len(blocks["train"]) // world * world]
        self.train_set, self.val_set = PackedBlocks(train), PackedBlocks(blocks["validation"])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(
            self.train_set,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers
        )
