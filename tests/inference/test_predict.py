"""Trainer.predict for many texts: each process's share of the batches, the shards put back in order,
the Trainer options of the verbs, and the predict path against the plain loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from helpers import classifier_checkpoint

from imdb_transformer.core.backbone import load_backbone
from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.ensemble import SentimentEnsemble
from imdb_transformer.errors import ImdbError, InputError
from imdb_transformer.predict import (
    RankBatches,
    TrainerOptions,
    in_order,
    joined,
    predict,
    read_shards,
    trainer_options,
)
from imdb_transformer.text.imdb import load_reviews


@pytest.mark.parametrize("world_size", [1, 2, 3, 7, 8, 9])
def test_the_ranks_share_every_batch_exactly_once(world_size: int) -> None:
    batches = [[i, i + 100] for i in range(7)]  # 7 batches: no even split for 2, 3, 8 or 9 ranks
    shares = [RankBatches(batches, rank, world_size) for rank in range(world_size)]
    real = [b for share in shares if not share.stand_in for b in share]
    assert sorted(real) == batches
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    stand_ins = [list(share) for share in shares if share.stand_in]  # ranks past the 7th: a stand-in
    assert stand_ins == [[[0, 100]]] * max(0, world_size - 7)


def test_shards_are_joined_and_put_back_in_the_texts_order() -> None:
    first = {"index": torch.tensor([2, 0]), "dense": torch.tensor([[2.0], [0.0]]), "words": ["c", "a"]}
    second = {"index": torch.tensor([3, 1]), "dense": torch.tensor([[3.0], [1.0]]), "words": ["d", "b"]}
    for part, rows in ((first, [2, 0]), (second, [3, 1])):
        part["sparse"] = sp.csr_matrix(np.array([[float(r), 0.0] for r in rows], dtype=np.float32))
    out = in_order(joined([first, second]), 4)
    assert out["index"].tolist() == [0, 1, 2, 3] and out["words"] == ["a", "b", "c", "d"]
    assert out["dense"][:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert out["sparse"].toarray()[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("index", [[0, 1, 1], [0, 2], [0, 1, 2, 3]], ids=["doubled", "lost", "extra"])
def test_predictions_that_lose_or_double_a_text_are_refused(index: list[int]) -> None:
    with pytest.raises(ImdbError, match="of 3 texts"):
        in_order({"index": torch.tensor(index)}, 3)


def test_a_missing_shard_is_refused(tmp_path: Path) -> None:
    torch.save({"index": torch.tensor([0])}, tmp_path / "shard-00000.pt")
    with pytest.raises(ImdbError, match="1 prediction shards for 2 processes.*every machine sees"):
        read_shards(tmp_path, 2, 2)


def test_device_is_a_shorthand_for_the_trainer_options() -> None:
    assert trainer_options(None, None) == TrainerOptions()
    assert trainer_options({"devices": 2, "strategy": "ddp"}, None).devices == 2
    assert trainer_options(None, "cpu") == TrainerOptions(accelerator="cpu")
    assert trainer_options(None, "cuda:1") == TrainerOptions(accelerator="gpu", devices=[1])
    with pytest.raises(InputError, match="one way"):
        trainer_options(TrainerOptions(devices=2), "cpu")


def test_predict_gives_what_the_plain_loop_gives(
    pretrained_run: Path, imdb_dir: Path, tmp_path: Path
) -> None:
    reviews = load_reviews(str(imdb_dir), "test", 23)
    embedder = DocumentEmbedder(load_backbone(pretrained_run / "backbone"))
    out = predict(embedder, reviews.texts, embedder.encode, context=embedder.max_length, batch_size=4,
                  shards=tmp_path / "shards", progress=False)  # fmt: skip
    assert out["index"].tolist() == list(range(23))
    torch.testing.assert_close(out["vectors"], embedder.embed(reviews.texts, batch_size=4, progress=False))
    backbone = pretrained_run / "backbone"
    members = [classifier_checkpoint(backbone, tmp_path / f"{s}.ckpt", seed=s) for s in (0, 1)]
    ensemble = SentimentEnsemble(members)
    out = predict(ensemble, reviews.texts, ensemble.encode, context=64, batch_size=5,
                  shards=tmp_path / "shards", progress=False)  # fmt: skip
    loop = ensemble.member_probabilities(reviews.texts, batch_size=5, progress=False)
    torch.testing.assert_close(out["probabilities"].T, loop)
    assert not list((tmp_path / "shards").iterdir())  # each run's shard folder is removed


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"strategy": "ddp_spawn", "devices": 2}, "spawn or fork"),
        ({"precision": "bf16-true"}, "use bf16-mixed"),
        ({"precision": "64-true"}, "converts the model's weights in place"),
    ],
)
def test_what_the_sharing_of_texts_cannot_run_is_refused_first(
    pretrained_run: Path, options: dict, refusal: str
) -> None:
    embedder = DocumentEmbedder(load_backbone(pretrained_run / "backbone"))
    trainer = TrainerOptions(accelerator="cpu", **options)
    with pytest.raises(InputError, match=refusal):
        predict(embedder, ["a film"], embedder.encode, context=32, batch_size=1, trainer=trainer)
    with pytest.raises(InputError, match="no texts"):
        predict(embedder, [], embedder.encode, context=32, batch_size=1)
