"""LMDataModule: packing, the held-out validation reviews, caching, and what it never reads."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import write_imdb

from imdb_transformer.data.lm import LMDataModule, pack
from imdb_transformer.text import imdb as imdb_module
from imdb_transformer.text.tokenizer import EOS_ID


def test_packing_loses_and_duplicates_no_token() -> None:
    rng = random.Random(0)
    reviews = [[rng.randint(4, 50) for _ in range(rng.randint(1, 30))] for _ in range(200)]
    stream = [t for r in reviews for t in [*r, EOS_ID]]
    for block_size in (1, 7, 16, 63):
        blocks = pack(reviews, block_size)
        assert blocks.shape[1] == block_size + 1  # no padding: every row is full
        flat = blocks.reshape(-1).tolist()
        assert flat == stream[: len(flat)]  # in order, nothing lost, nothing repeated...
        assert len(stream) - len(flat) < block_size + 1  # ...but the last partial row


def test_an_eos_follows_every_review() -> None:
    assert pack([[5, 6], [7], [8, 9, 10]], 4).tolist() == [[5, 6, EOS_ID, 7, EOS_ID]]


def make_dm(imdb_dir: Path, cache_dir: Path, **kwargs) -> LMDataModule:
    args = dict(source=str(imdb_dir), cache_dir=str(cache_dir), vocab_size=400, block_size=16, batch_size=4)
    return LMDataModule(**{**args, **kwargs})


def test_validation_reviews_never_appear_in_training_blocks(imdb_dir: Path, cache_dir: Path) -> None:
    dm = make_dm(imdb_dir, cache_dir, val_fraction=0.1)
    dm.prepare_data()
    dm.setup("fit")
    train_reviews, val_reviews = dm.reviews()
    assert len(val_reviews) == 32 and len(train_reviews) == 288  # whole reviews, 10% of 320
    assert not set(train_reviews) & set(val_reviews)
    tok = dm.tokenizer
    train_stream = dm.train_set.blocks.reshape(-1).tolist()
    train_text = tok.decode(train_stream)
    for review in val_reviews:
        ids = tok.encode(review)
        window = ids[len(ids) // 2 : len(ids) // 2 + 12]  # an inner piece of each held-out review
        assert tok.decode(window) not in train_text
    # and the training reviews are all there
    assert sum(tok.decode(tok.encode(r)) in train_text for r in train_reviews) >= len(train_reviews) - 2


def test_batches_are_full_blocks_of_ids(imdb_dir: Path, cache_dir: Path) -> None:
    dm = make_dm(imdb_dir, cache_dir)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (4, 17) and batch.dtype == torch.long
    assert int(batch.max()) < dm.tokenizer.vocab_size <= dm.vocab_size


def test_second_run_reuses_the_cache(
    imdb_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_dm(imdb_dir, cache_dir, seed=7).prepare_data()
    monkeypatch.setattr("datasets.Dataset.map", lambda *a, **k: pytest.fail("re-tokenised despite the cache"))
    monkeypatch.setattr("imdb_transformer.text.tokenizer.Tokenizer.fit", lambda *a, **k: pytest.fail("refit"))
    dm = make_dm(imdb_dir, cache_dir, seed=7)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_set) > 0


def test_the_test_split_is_never_read(
    imdb_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read = []
    real = imdb_module.load_split
    monkeypatch.setattr(
        "imdb_transformer.data.lm.load_split", lambda source, split: read.append(split) or real(source, split)
    )
    dm = make_dm(imdb_dir, cache_dir, seed=99)
    dm.prepare_data()
    dm.setup("fit")
    assert set(read) == {"train", "unsupervised"}


def test_train_blocks_split_evenly_across_ranks(imdb_dir: Path, cache_dir: Path) -> None:
    dm = make_dm(imdb_dir, cache_dir)
    dm.prepare_data()
    dm.setup("fit")
    n = len(dm.train_set)
    dm.trainer = SimpleNamespace(world_size=3)
    dm.setup("fit")
    assert len(dm.train_set) % 3 == 0 and n - len(dm.train_set) < 3


def test_too_little_text_for_one_block_is_a_clear_error(tmp_path: Path, cache_dir: Path) -> None:
    folder = write_imdb(tmp_path / "imdb", {"train": 40, "unsupervised": 40})
    dm = make_dm(folder, cache_dir, block_size=4000, val_fraction=0.05)
    with pytest.raises(ValueError, match="fewer than block_size"):
        dm.prepare_data()


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        LMDataModule(val_fraction=0.0)


def test_tokenising_processes_default_to_the_cores_this_process_may_use(monkeypatch, tmp_path) -> None:
    """Not the machine's count: a container or ``taskset`` may allow fewer (hardware.usable_cores)."""
    import os

    from imdb_transformer.data import LMDataModule, ReviewsDataModule

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    assert LMDataModule("x", str(tmp_path)).num_proc == 3
    assert ReviewsDataModule("x", str(tmp_path)).num_proc == 3
    assert LMDataModule("x", str(tmp_path), num_proc=1).num_proc == 1
