"""SentimentClassifier: frozen means frozen, cached features, discriminative rates, loading."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from imdb_transformer.core.backbone import BackboneError
from imdb_transformer.data.reviews import ReviewsDataModule
from imdb_transformer.errors import InputError
from imdb_transformer.models.classifier import SentimentClassifier


def fit(
    model: SentimentClassifier, imdb_dir: Path, cache_dir: Path, tmp_path: Path, epochs: int = 2
) -> L.Trainer:
    dm = ReviewsDataModule(str(imdb_dir), str(cache_dir), backbone=model.hparams.backbone, batch_size=16)
    trainer = L.Trainer(
        max_epochs=epochs, default_root_dir=tmp_path, enable_progress_bar=False, logger=False,
        enable_checkpointing=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, dm)
    return trainer


@pytest.mark.parametrize("source", ["backbone", "checkpoints/last.ckpt"])
def test_loads_from_the_export_and_from_an_lm_checkpoint(pretrained_run: Path, source: str) -> None:
    model = SentimentClassifier(backbone=str(pretrained_run / source))
    assert model.tokenizer.vocab_size <= model.backbone.config.vocab_size


def test_frozen_training_leaves_the_backbone_unchanged(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    model = SentimentClassifier(backbone=str(pretrained_run / "backbone"))
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    head_before = model.head[-1].weight.clone()
    calls = []
    real = model.backbone.hidden_states
    model.backbone.hidden_states = lambda *a, **k: calls.append(1) or real(*a, **k)
    fit(model, imdb_dir, cache_dir, tmp_path, epochs=3)
    after = model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(head_before, model.head[-1].weight)  # the head did learn
    n_train_batches, n_val_batches = 9, 1  # 144 and 16 reviews in batches of 16
    assert len(calls) == n_train_batches + n_val_batches  # features computed once, reused in epochs 2 and 3


def test_full_fine_tuning_uses_smaller_rates_deeper_down(pretrained_run: Path) -> None:
    model = SentimentClassifier(backbone=str(pretrained_run / "backbone"), freeze=False, backbone_lr=1e-4)
    model.trainer = type("T", (), {"estimated_stepping_batches": 100})()
    groups = model.configure_optimizers()["optimizer"].param_groups
    lrs = [g["initial_lr"] for g in groups]  # peak rates (the scheduler has already applied warmup)
    assert lrs[0] == model.hparams.learning_rate  # the head
    assert lrs[1] == lrs[2] == pytest.approx(1e-4)  # ln_f and the top block
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False))  # then shrinking to the embedding
    assert all(p.requires_grad for p in model.backbone.parameters())
    n = sum(p.numel() for g in groups for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())  # every parameter in exactly one group


def test_lightning_freeze_is_not_shadowed(pretrained_run: Path) -> None:
    model = SentimentClassifier(backbone=str(pretrained_run / "backbone"), freeze=False)
    assert model.hparams.freeze is False and callable(model.freeze)
    model.freeze()  # LightningModule.freeze: every parameter, head included
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


def test_a_missing_or_wrong_backbone_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a pretrained backbone"):
        SentimentClassifier()
    wrong = tmp_path / "wrong.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}}, wrong)
    with pytest.raises(BackboneError, match="not a checkpoint of a pretrained CausalLM"):
        SentimentClassifier(backbone=str(wrong))


def test_a_classifier_onto_a_backbone_of_another_size_is_a_clear_error(
    pretrained_run: Path, tmp_path: Path
) -> None:
    from imdb_transformer.core.backbone import export_backbone, load_backbone
    from imdb_transformer.core.decoder import CausalDecoder, DecoderConfig

    model = SentimentClassifier(backbone=str(pretrained_run / "backbone"))
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    model.on_load_checkpoint(checkpoint)  # its own backbone: accepted

    tokenizer = load_backbone(pretrained_run / "backbone").tokenizer
    config = DecoderConfig(**{**vars(model.backbone.config), "n_layer": model.backbone.config.n_layer + 1})
    bigger = export_backbone(CausalDecoder(config), tokenizer, tmp_path / "bigger")
    with pytest.raises(
        BackboneError, match=r"trained on another backbone \(2x64-ctx64-tok\w+\) than the one given \(3x64"
    ):
        SentimentClassifier(backbone=str(bigger)).on_load_checkpoint(checkpoint)


@pytest.mark.parametrize(
    ("freeze", "backbone_dropout", "backbone_trains"),
    [(True, False, False), (True, True, False), (False, False, False), (False, True, True)],
)
def test_the_backbone_mode_while_training(
    pretrained_run: Path,
    imdb_dir: Path,
    cache_dir: Path,
    tmp_path: Path,
    freeze: bool,
    backbone_dropout: bool,
    backbone_trains: bool,
) -> None:
    model = SentimentClassifier(
        backbone=str(pretrained_run / "backbone"), freeze=freeze, backbone_dropout=backbone_dropout
    )
    seen: list[tuple[bool, bool]] = []

    class Watch(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append((pl_module.backbone.training, pl_module.head.training))

    dm = ReviewsDataModule(str(imdb_dir), str(cache_dir), backbone=model.hparams.backbone, batch_size=64)
    trainer = L.Trainer(
        max_epochs=2, default_root_dir=tmp_path, enable_progress_bar=False, logger=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[Watch()],
    )  # fmt: skip
    trainer.fit(model, dm)  # validation runs between the epochs and must not change the modes
    assert len(seen) == 6 and set(seen) == {(backbone_trains, True)}


def test_layer_mix_features_are_computed_once_and_leave_the_backbone_unchanged(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    model = SentimentClassifier(backbone=str(pretrained_run / "backbone"), layers=3, layer_mix="scalar")
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    mix_before = model.mix.detach().clone()
    read = []  # the reviews the backbone reads: its token embedding sees each batch once
    model.backbone.wte.register_forward_hook(lambda module, args, out: read.append(args[0].shape[0]))
    fit(model, imdb_dir, cache_dir, tmp_path, epochs=3)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert sum(read) == 144 + 16  # every training and validation review once, in 3 epochs
    assert not torch.equal(mix_before, model.mix)  # the layer weights did learn
    features = model.features(*_batch(model)).pooled
    assert features.shape == (2, 3, 3 * model.backbone.config.n_embd)  # concat pooling of 3 layers
    last = model.features(*_batch(model)).pooled[:, -1]
    one_layer = SentimentClassifier(backbone=str(pretrained_run / "backbone"))
    assert torch.allclose(last, one_layer.features(*_batch(model)).pooled)


def _batch(model: SentimentClassifier) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[3, 10, 11, 12, 3], [3, 20, 21, 3, 0]])
    return ids, ids != 0


def test_gradual_unfreezing_unfreezes_one_more_block_each_epoch(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    model = SentimentClassifier(
        backbone=str(pretrained_run / "backbone"), freeze=False, unfreeze="gradual", schedule="stlr"
    )
    seen: list[list[bool]] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
            if batch_idx == 0:  # after the module's own epoch-start hook
                seen.append([all(p.requires_grad for p in ps) for ps in pl_module.backbone_layers()])

    dm = ReviewsDataModule(str(imdb_dir), str(cache_dir), backbone=model.hparams.backbone, batch_size=16)
    L.Trainer(
        max_epochs=4, default_root_dir=tmp_path, enable_progress_bar=False, logger=False,
        enable_checkpointing=False, enable_model_summary=False, callbacks=[Record()],
    ).fit(model, dm)  # fmt: skip
    n_layer = model.backbone.config.n_layer  # 2: layers top first are ln_f, block 1, block 0, embedding
    assert (
        seen
        == [
            [False, False, False, False],  # epoch 0: the head alone
            [True, True, False, False],  # epoch 1: + the top block (with the final norm)
            [True, True, True, False],  # epoch 2: + the next block down
            [True, True, True, True],  # epoch 3: + the embedding
        ][: n_layer + 2]
    )


def test_the_slanted_triangle_rises_for_a_tenth_then_falls_to_a_32nd() -> None:
    from imdb_transformer.models.optim import slanted_triangular

    rates = [slanted_triangular(s, 100) for s in range(101)]
    assert rates[0] == pytest.approx(1 / 32) and rates[10] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(rates[:10], rates[1:11], strict=True))
    assert all(a > b for a, b in zip(rates[10:100], rates[11:101], strict=True))
    assert rates[100] == pytest.approx(1 / 32)


def test_a_long_review_is_read_as_all_its_windows_and_their_features_averaged(pretrained_run: Path) -> None:
    from imdb_transformer.text.batching import collate_windows

    model = SentimentClassifier(backbone=str(pretrained_run / "backbone"), pooling="mean").eval()
    context = model.backbone.config.block_size
    long, short = list(range(10, 10 + 2 * (context - 2) + 5)), [7, 8, 9]
    batch = collate_windows([{"ids": long}, {"ids": short}], context)
    assert batch["owner"].tolist() == [0, 0, 0, 1]
    rows = [r[m].tolist() for r, m in zip(batch["ids"], batch["mask"], strict=True)]
    assert [t for r in rows[:3] for t in r if t != 3] == long  # every token once, in order
    with torch.no_grad():
        averaged = model.features(batch["ids"], batch["mask"], batch["owner"]).pooled
        each = model.features(batch["ids"], batch["mask"]).pooled
    assert torch.allclose(averaged[0], each[:3].mean(0), atol=1e-6) and torch.allclose(averaged[1], each[3])


@pytest.mark.parametrize(("pooled", "lexical"), [(True, "context"), (False, "context"), (False, "bag")])
def test_word_votes_are_computed_once_per_review_and_leave_the_backbone_unchanged(
    pretrained_run: Path, imdb_dir: Path, cache_dir: Path, tmp_path: Path, pooled: bool, lexical: str
) -> None:
    model = SentimentClassifier(backbone=str(pretrained_run / "backbone"), pooled=pooled, lexical=lexical)
    assert (model.head is not None) == pooled and model.lexical.uses_states == (lexical == "context")
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    votes_before = model.lexical.votes.detach().clone()
    read = []  # the reviews the backbone reads: its token embedding sees each batch once
    model.backbone.wte.register_forward_hook(lambda module, args, out: read.append(args[0].shape[0]))
    fit(model, imdb_dir, cache_dir, tmp_path, epochs=3)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert not torch.equal(votes_before, model.lexical.votes)  # the word votes did learn
    # every training and validation review once in 3 epochs; a plain bag never runs the backbone
    assert sum(read) == (144 + 16 if lexical == "context" else 0)
    if lexical == "context":
        assert not torch.equal(model.lexical.gate.weight, torch.zeros_like(model.lexical.gate.weight))
    # the cached features give the logits the model computes afresh (token states kept in bf16)
    model.eval()
    batch = next(iter(DataLoader_of(model, imdb_dir, cache_dir)))
    cached = model.classify(model._cached_features(batch, "val"))
    fresh = model(batch["ids"], batch["mask"])
    assert torch.allclose(cached, fresh, atol=0.05)


def DataLoader_of(model: SentimentClassifier, imdb_dir: Path, cache_dir: Path):  # noqa: N802
    dm = ReviewsDataModule(str(imdb_dir), str(cache_dir), backbone=model.hparams.backbone, batch_size=16)
    dm.prepare_data()
    dm.setup("fit")
    return dm.val_dataloader()


def test_explain_splits_the_word_votes_among_the_tokens(pretrained_run: Path) -> None:
    model = SentimentClassifier(backbone=str(pretrained_run / "backbone"), lexical="context").eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.lexical.votes)
        torch.nn.init.normal_(model.lexical.gate.weight, std=0.1)
    ids, mask = _batch(model)
    logits, shares = model.explain(ids, mask)
    assert shares.shape == ids.shape and bool((shares[~mask] == 0).all())
    pooled_part = model.head(model.features(ids, mask).pooled).squeeze(-1)
    lexical_part = logits - pooled_part - model.lexical.bias
    assert torch.allclose(shares.sum(1), lexical_part, atol=1e-5)
    assert SentimentClassifier(backbone=str(pretrained_run / "backbone")).explain(ids, mask)[1] is None


def test_word_votes_need_a_known_kind_and_some_head(pretrained_run: Path) -> None:
    with pytest.raises(InputError, match="unknown lexical 'words'"):
        SentimentClassifier(backbone=str(pretrained_run / "backbone"), lexical="words")
    with pytest.raises(InputError, match="pooled false needs word votes"):
        SentimentClassifier(backbone=str(pretrained_run / "backbone"), pooled=False)
    with pytest.raises(InputError, match="with pooled false, leave layers at 1"):
        SentimentClassifier(
            backbone=str(pretrained_run / "backbone"), pooled=False, lexical="context", layers=2
        )
    with pytest.raises(InputError, match="nothing to fine-tune"):
        SentimentClassifier(
            backbone=str(pretrained_run / "backbone"), pooled=False, lexical="bag", freeze=False
        )


def test_cached_word_votes_of_windows_match_the_fresh_ones(pretrained_run: Path) -> None:
    from imdb_transformer.models.classifier import Features
    from imdb_transformer.text.batching import collate_windows

    torch.manual_seed(0)
    model = SentimentClassifier(backbone=str(pretrained_run / "backbone"), lexical="context").eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.lexical.votes)
        torch.nn.init.normal_(model.lexical.gate.weight, std=0.1)
    context = model.backbone.config.block_size
    long, short = list(range(10, 10 + 2 * (context - 2) + 5)), [7, 8, 9]
    batch = collate_windows([{"ids": long}, {"ids": short}], context)
    with torch.no_grad():
        fresh = model.features(batch["ids"], batch["mask"], batch["owner"])
        cached = Features.join(fresh.split(), torch.device("cpu"))
        assert [len(review.ids) for review in fresh.split()] == [3, 1]  # the long review's three windows
        assert torch.allclose(model.classify(cached), model.classify(fresh), atol=0.05)
