"""Tiny fixtures: a synthetic IMDB folder (parquet, same schema as the real one) and CLI arguments
for runs that finish in seconds."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import REPO, run_cli

_POS = ["wonderful", "brilliant", "moving", "superb", "delightful", "great", "loved", "masterpiece"]
_NEG = ["awful", "boring", "dreadful", "terrible", "waste", "dull", "hated", "mess"]
_FILLER = (
    "the movie film story actor actress plot scene director camera music ending characters was is a an and "
    "but with this that of in on at for it they we I my seemed quite rather very really"
).split()


def make_review(rng: random.Random, label: int, n_words: int) -> str:
    """A review of filler words, two in five of them words of its sentiment (enough for a tiny model's
    frozen features to carry the label), and an HTML line break."""
    cue = _POS if label == 1 else _NEG
    words = [rng.choice(cue) if rng.random() < 0.4 else rng.choice(_FILLER) for _ in range(n_words)]
    words.insert(n_words // 2, "<br /><br />")
    return " ".join(words).capitalize() + ("!" if label else ".")


def write_imdb(folder: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """Write ``{split}.parquet`` files with the real dataset's columns (text, label, id, rating)."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in sizes.items():
        labels = [-1] * n if split == "unsupervised" else [i % 2 for i in range(n)]
        texts = [
            make_review(rng, max(lab, 0) if lab >= 0 else rng.randint(0, 1), rng.randint(30, 90))
            for lab in labels
        ]
        table = pa.table(
            {
                "text": pa.array(texts, pa.string()),
                "label": pa.array(labels, pa.int64()),
                "id": pa.array(range(n), pa.int32()),
                "rating": pa.array([0 if lab < 0 else (8 if lab else 2) for lab in labels], pa.int8()),
            }
        )
        pq.write_table(table, folder / f"{split}.parquet")
    return folder


@pytest.fixture(scope="session")
def imdb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic IMDB folder: 160 train, 80 test and 160 unsupervised reviews."""
    return write_imdb(tmp_path_factory.mktemp("imdb"), {"train": 160, "test": 80, "unsupervised": 160})


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the session, so the tokenizer is fit once and later runs start at once."""
    return tmp_path_factory.mktemp("cache")


def tiny_pretrain_args(imdb_dir: Path, cache_dir: Path, root: Path) -> list[str]:
    """``fit`` arguments for a seconds-long pretraining run on the synthetic data, logging under ``root``."""
    return [
        "--config", str(REPO / "configs/pretrain.yaml"),
        "--config", str(REPO / "configs/tiny.yaml"),
        "--data.source", str(imdb_dir),
        "--data.cache_dir", str(cache_dir),
        "--data.vocab_size", "400",
        "--data.max_reviews", "null",
        "--trainer.default_root_dir", str(root),
        "--trainer.max_steps", "30",
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip


@pytest.fixture
def tiny_fit_args(imdb_dir: Path, cache_dir: Path, tmp_path: Path) -> list[str]:
    """Pretraining arguments with a 32-token context and validation every 10 steps, logging to tmp_path."""
    args = tiny_pretrain_args(imdb_dir, cache_dir, tmp_path)
    return [*args, "--data.block_size", "32", "--trainer.val_check_interval", "10"]


@pytest.fixture(scope="session")
def pretrained_run(imdb_dir: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The run folder of a tiny pretraining (64-token context) through the real console script, made
    once per session."""
    root = tmp_path_factory.mktemp("pretrained")
    run_cli("fit", *tiny_pretrain_args(imdb_dir, cache_dir, root), "--trainer.val_check_interval", "15")
    return root / "lightning_logs" / "version_0"


@pytest.fixture(scope="session")
def adapter_run(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A tiny embedding adapter trained through the real console script (made once per session)."""
    root = tmp_path_factory.mktemp("adapter")
    run_cli(
        "fit", *tiny_adapter_args(pretrained_run, imdb_dir, cache_dir, root), "--data.val_fraction", "0.1"
    )
    return root / "lightning_logs" / "version_0"


def tiny_adapter_args(pretrained_run: Path, imdb_dir: Path, cache_dir: Path, root: Path) -> list[str]:
    """``fit`` arguments for a seconds-long embedding adapter on the tiny backbone, logging under ``root``."""
    return [
        "--config", str(REPO / "configs/embed.yaml"),
        "--config", str(REPO / "configs/embed_tiny.yaml"),
        "--model.backbone", str(pretrained_run / "backbone"),
        "--data.source", str(imdb_dir),
        "--data.cache_dir", str(cache_dir),
        "--data.max_reviews", "null",
        "--trainer.default_root_dir", str(root),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
