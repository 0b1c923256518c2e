"""ReviewsDataModule: head-and-tail truncation, padded batches, splits, label checks."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_imdb

from imdb_transformer.data.reviews import ReviewsDataModule
from imdb_transformer.text.batching import collate_reviews, fit_to_context
from imdb_transformer.text.imdb import IMDBSourceError
from imdb_transformer.text.tokenizer import EOS_ID, PAD_ID


def test_long_reviews_keep_head_and_tail() -> None:
    ids = list(range(10, 110))
    out = fit_to_context(ids, max_length=22)
    assert len(out) == 22 and out[0] == out[-1] == EOS_ID
    assert out[1:6] == ids[:5] and out[6:-1] == ids[-15:]  # a quarter head, the rest tail
    assert fit_to_context([5, 6], 22) == [EOS_ID, 5, 6, EOS_ID]  # short ones untouched


def test_batches_are_padded_to_the_longest_with_a_mask() -> None:
    batch = collate_reviews(
        [{"ids": [5, 6, 7], "label": 1, "idx": 0}, {"ids": [8], "label": 0, "idx": 1}], 16
    )
    assert batch["ids"].tolist() == [[EOS_ID, 5, 6, 7, EOS_ID], [EOS_ID, 8, EOS_ID, PAD_ID, PAD_ID]]
    assert batch["mask"].sum(1).tolist() == [5, 3]
    assert batch["label"].tolist() == [1, 0] and batch["idx"].tolist() == [0, 1]


def test_splits_are_disjoint_and_test_is_whole(imdb_dir: Path, cache_dir: Path, pretrained_run: Path) -> None:
    dm = ReviewsDataModule(
        source=str(imdb_dir), cache_dir=str(cache_dir), tokenizer=str(pretrained_run / "tokenizer.model"),
        max_length=32, val_fraction=0.25,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    assert sorted(dm.splits) == ["train", "val"]  # a fit does not load the test reviews
    dm.setup("test")
    train, val, test = (set(dm.splits[s].order.tolist()) for s in ("train", "val", "test"))
    assert len(val) == 40 and len(train) == 120 and not train & val
    assert len(test) == 80
    batch = next(iter(dm.val_dataloader()))
    assert batch["ids"].shape[1] <= 32 and set(batch["label"].tolist()) <= {0, 1}


@pytest.mark.parametrize(
    ("stage", "read", "unread"),
    [
        ("fit", "train", "test"),
        ("validate", "train", "test"),
        ("test", "test", "train"),
        ("predict", "test", "train"),
    ],
)
def test_a_trainer_stage_reads_and_tokenises_only_the_split_it_needs(
    tmp_path: Path, pretrained_run: Path, monkeypatch, stage: str, read: str, unread: str
) -> None:
    """Under a running Trainer, ``prepare_data`` tokenises only its stage's split and ``setup`` loads only
    it; a loader of the other split says what it needs; after the Trainer, ``prepare_data`` does both."""
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn, TrainerState, TrainerStatus

    import imdb_transformer.data.reviews as reviews

    folder = write_imdb(tmp_path / "imdb", {"train": 40, "test": 30})
    loaded: list[str] = []
    real = reviews.load_reviews
    monkeypatch.setattr(
        reviews, "load_reviews", lambda src, split, *a: loaded.append(split) or real(src, split, *a)
    )
    dm = ReviewsDataModule(str(folder), str(tmp_path / "cache"), backbone=str(pretrained_run / "backbone"))
    dm.trainer = SimpleNamespace(state=TrainerState(fn=TrainerFn(stage), status=TrainerStatus.RUNNING))
    dm.prepare_data()
    dm.setup(stage)
    assert loaded == [read]  # read once for prepare_data and setup together
    assert [p.name.split("-")[1] for p in (tmp_path / "cache").glob("reviews-*")] == [read]
    other = {"train": dm.train_dataloader, "test": dm.test_dataloader}[unread]
    needed = "fit" if unread == "train" else "test"
    with pytest.raises(RuntimeError, match=rf"call prepare_data\(\) and setup\('{needed}'\) first"):
        other()
    # once the Trainer has finished, prepare_data is for any use again: every split
    dm.trainer.state.status = TrainerStatus.FINISHED
    dm.prepare_data()
    dm.setup(needed)
    assert len(other().dataset) == {"train": 36, "test": 30}[unread]
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "cache").glob("reviews-*")) == ["test", "train"]


def test_labels_outside_0_1_are_refused(tmp_path: Path, cache_dir: Path, pretrained_run: Path) -> None:
    folder = write_imdb(tmp_path / "imdb", {"train": 20, "test": 20})
    table = pq.read_table(folder / "train.parquet")
    pq.write_table(
        table.set_column(1, "label", pa.array([0, 1, 2] + [0] * 17, pa.int64())), folder / "train.parquet"
    )
    dm = ReviewsDataModule(str(folder), str(cache_dir), backbone=str(pretrained_run / "backbone"))
    with pytest.raises(IMDBSourceError, match=r"labels \[2\] outside \{0, 1\}"):
        dm.prepare_data()


def test_the_backbone_or_a_tokenizer_and_length_are_required(pretrained_run: Path) -> None:
    with pytest.raises(ValueError, match="needs the backbone it prepares reviews for"):
        ReviewsDataModule().prepare_data()
    with pytest.raises(ValueError, match="or both data.tokenizer and data.max_length"):
        ReviewsDataModule(tokenizer=str(pretrained_run / "tokenizer.model")).prepare_data()


def test_built_alone_from_a_backbone_it_reads_with_its_tokenizer_and_context(
    imdb_dir: Path, cache_dir: Path, pretrained_run: Path
) -> None:
    dm = ReviewsDataModule(str(imdb_dir), str(cache_dir), backbone=str(pretrained_run / "backbone"))
    dm.prepare_data()
    dm.setup("test")  # no model and no trainer
    assert dm.context == 64  # tiny.yaml's block_size
    assert dm.tokenizer.to_bytes() == (pretrained_run / "tokenizer.model").read_bytes()
    assert max(len(b["ids"][0]) for b in dm.test_dataloader()) <= 64


def test_a_real_trainer_fits_on_the_training_reviews_then_tests_on_the_test_reviews(
    tmp_path: Path, pretrained_run: Path
) -> None:
    """Lightning's own fit prepares and loads only the training reviews; a test on the same Trainer and data
    module then adds the test reviews, keeping the splits the fit set up."""
    import lightning as L

    from imdb_transformer.models.classifier import SentimentClassifier

    folder, cache = write_imdb(tmp_path / "imdb", {"train": 40, "test": 30}), tmp_path / "cache"
    backbone = str(pretrained_run / "backbone")
    dm = ReviewsDataModule(str(folder), str(cache), backbone=backbone, batch_size=16)
    trainer = L.Trainer(
        max_steps=2, limit_val_batches=1, default_root_dir=tmp_path, enable_progress_bar=False, logger=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    model = SentimentClassifier(backbone=backbone)
    trainer.fit(model, dm)
    assert [p.name.split("-")[1] for p in cache.glob("reviews-*")] == ["train"]
    assert sorted(dm.splits) == ["train", "val"]
    trainer.test(model, dm, verbose=False)
    assert sorted(p.name.split("-")[1] for p in cache.glob("reviews-*")) == ["test", "train"]
    assert sorted(dm.splits) == ["test", "train", "val"] and len(dm.splits["test"]) == 30
