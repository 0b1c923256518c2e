"""ContrastiveDataModule: pairs of random crops of the same review, for training an embedding adapter.

Two independent random spans of one review are a positive pair (Contriever's independent cropping), or
two spans from either side of a cut, which share no text (``positives="disjoint"``, as the inverse cloze
task pairs a passage with its context); every other review in the batch is a negative. No labels and
no outside text: the ``train`` and ``unsupervised`` reviews only. The ``test`` split is never read, so
retrieval benchmarks on it stay honest.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader

from imdb_transformer.data.reviews import ReviewsDataModule, _Reviews
from imdb_transformer.errors import InputError
from imdb_transformer.text.batching import pad, reading_order
from imdb_transformer.text.imdb import DEFAULT_SOURCE
from imdb_transformer.text.tokenizer import EOS_ID


def random_crop(ids: list[int], rng: random.Random, crop_min: int, crop_max: int) -> list[int]:
    """A span of ``crop_min`` to ``crop_max`` tokens (a whole review if it is shorter), after an EOS as
    every review began in pretraining."""
    length = min(len(ids), rng.randint(crop_min, crop_max))
    start = rng.randint(0, len(ids) - length)
    return [EOS_ID, *ids[start : start + length]]


def disjoint_crops(
    ids: list[int], rng: random.Random, crop_min: int, crop_max: int
) -> tuple[list[int], list[int]]:
    """Two crops that share no token position: the review cut at a random point of its middle third,
    one crop from each side (see :func:`random_crop`), in random order. A review of one token gives it
    twice."""
    if len(ids) < 2:
        return random_crop(ids, rng, crop_min, crop_max), random_crop(ids, rng, crop_min, crop_max)
    cut = rng.randint(max(1, len(ids) // 3), max(1, 2 * len(ids) // 3))
    pair = random_crop(ids[:cut], rng, crop_min, crop_max), random_crop(ids[cut:], rng, crop_min, crop_max)
    return pair if rng.random() < 0.5 else pair[::-1]


POSITIVES = ("crops", "disjoint")


def collate_crops(
    items: list[dict],
    crop_min: int,
    crop_max: int,
    fixed: bool,
    reverse: bool = False,
    positives: str = "crops",
) -> dict[str, torch.Tensor]:
    """Two crops ``a`` and ``b`` of each review: independent (``positives="crops"``) or from either side of
    a cut (``"disjoint"``). With ``fixed`` each review's crops are drawn from a generator seeded by its
    index, so validation sees the same pairs every time. ``reverse``: reviews read last token first, for
    a backward backbone."""
    shared = random.Random()
    a, b = [], []
    for item in items:
        rng = random.Random(int(item["idx"])) if fixed else shared
        ids = reading_order(item["ids"], reverse)
        if positives == "disjoint":
            first, second = disjoint_crops(ids, rng, crop_min, crop_max)
        else:
            first, second = (
                random_crop(ids, rng, crop_min, crop_max),
                random_crop(ids, rng, crop_min, crop_max),
            )
        a.append(first)
        b.append(second)
    (a_ids, a_mask), (b_ids, b_mask) = pad(a), pad(b)
    return {"a_ids": a_ids, "a_mask": a_mask, "b_ids": b_ids, "b_mask": b_mask}


def held_out(n: int, val_fraction: float, seed: int) -> np.ndarray:
    """Which of ``n`` reviews (``train`` then ``unsupervised``, in order) are held out for validation:
    the adapter never trains on them, so ``benchmarks/retrieval.py`` tunes on them too."""
    order = np.random.default_rng(seed).permutation(n)
    return order[: max(1, round(n * val_fraction))]


class ContrastiveDataModule(ReviewsDataModule):
    """IMDB ``train`` + ``unsupervised`` reviews (75,000) as pairs of random crops of the same review.

    Tokenised once with the backbone's tokenizer and cached, as :class:`ReviewsDataModule` does. A
    share of whole reviews is held out for validation, with crops fixed per review.

    Args:
        source: A dataset id for ``datasets.load_dataset`` or a local folder of ``{split}.parquet``.
        cache_dir: Where the tokenised reviews are cached.
        backbone: The backbone the adapter runs on (its tokenizer and context); filled in from
            ``model.backbone`` by the CLI.
        tokenizer: A SentencePiece ``.model`` (overrides the backbone's).
        max_length: Longest crop, EOS included (default: the backbone's context).
        crop_min: Shortest crop, in tokens.
        crop_max: Longest crop, in tokens, capped at the context (a query is short, a review long:
            crops span both).
        positives: ``crops``: two independent random crops of a review (they may overlap); ``disjoint``:
            one crop from each side of a random cut in the review's middle third (no shared text, so
            the pair must match by topic and names rather than by copied words).
        val_fraction: Share of whole reviews held out for validation.
        max_reviews: Use only this many reviews of each split: for smoke runs.
        batch_size: Reviews per batch: each brings two crops, and every other review is a negative.
        num_workers: DataLoader worker processes.
        num_proc: Processes for tokenising in ``prepare_data`` (default: all CPU cores).
        seed: Seeds the validation split and the ``max_reviews`` sample.
    """

    source_splits = ("train", "unsupervised")

    def __init__(
        self,
        source: str = DEFAULT_SOURCE,
        cache_dir: str = "~/.cache/imdb_transformer",
        backbone: str | None = None,
        tokenizer: str | None = None,
        max_length: int | None = None,
        crop_min: int = 16,
        crop_max: int = 128,
        positives: str = "crops",
        val_fraction: float = 0.02,
        max_reviews: int | None = None,
        batch_size: int = 256,
        num_workers: int = 0,
        num_proc: int | None = None,
        seed: int = 1234,
    ) -> None:
        if not 1 <= crop_min <= crop_max:
            raise InputError(f"need 1 <= crop_min <= crop_max, got {crop_min} and {crop_max}")
        if positives not in POSITIVES:
            raise InputError(f"--data.positives must be one of {', '.join(POSITIVES)} (got {positives!r})")
        super().__init__(
            source, cache_dir, backbone, tokenizer, max_length, val_fraction, max_reviews, batch_size,
            num_workers, num_proc, seed,
        )  # fmt: skip
        self.crop_min, self.crop_max, self.positives = crop_min, crop_max, positives

    def _arrange(self, tables: dict[str, datasets.Dataset]) -> dict[str, _Reviews]:
        table = datasets.concatenate_datasets([tables[s] for s in self.source_splits])
        table = table.remove_columns("idx").add_column("idx", list(range(len(table))))
        val = held_out(len(table), self.val_fraction, self.seed)
        train = np.setdiff1d(np.arange(len(table)), val)
        return {
            "train": _Reviews(table, np.random.default_rng(self.seed).permutation(train)),
            "val": _Reviews(table, val),
        }

    def _collate(self, split: str) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        crop_max = min(self.crop_max, self.context - 1)  # room for the EOS before it
        crop_min = min(self.crop_min, crop_max)
        return partial(
            collate_crops, crop_min=crop_min, crop_max=crop_max, fixed=split != "train", reverse=self.reverse,
            positives=self.positives,
        )  # fmt: skip

    def test_dataloader(self) -> DataLoader:
        raise InputError(
            "the embedding adapter has no test split here (it never reads test reviews); measure it with "
            "`python benchmarks/retrieval.py`"
        )

    predict_dataloader = test_dataloader
