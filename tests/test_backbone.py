"""Backbone export and loading: safetensors + JSON + tokenizer, or a checkpoint, never pickle."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from imdb_transformer.models.backbone import (
    CHECKPOINT_KEY,
    FORMAT,
    BackboneError,
    export_backbone,
    load_backbone,
    load_checkpoint,
    load_spec,
)


def logits_of(path: Path, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return load_backbone(path).decoder(ids)


def test_a_run_exports_its_best_backbone(pretrained_run: Path) -> None:
    export = pretrained_run / "backbone"
    assert sorted(p.name for p in export.iterdir()) == ["config.json", "model.safetensors", "tokenizer.model"]
    best = next((pretrained_run / "checkpoints").glob("best-*.ckpt"))
    ids = torch.randint(4, 300, (2, 20))
    torch.testing.assert_close(logits_of(export, ids), logits_of(best, ids))  # same weights either way
    backbone = load_backbone(export)
    assert not backbone.decoder.training
    assert backbone.decoder.lm_head.weight is backbone.decoder.wte.weight  # still tied after loading


def test_checkpoint_tokenizer_is_the_runs(pretrained_run: Path) -> None:
    backbone = load_backbone(pretrained_run / "checkpoints" / "last.ckpt")
    assert backbone.tokenizer.to_bytes() == (pretrained_run / "tokenizer.model").read_bytes()


def test_export_round_trip_and_overwrite(pretrained_run: Path, tmp_path: Path) -> None:
    backbone = load_backbone(pretrained_run / "backbone")
    export_backbone(backbone.decoder, backbone.tokenizer, tmp_path / "b")
    export_backbone(backbone.decoder, backbone.tokenizer, tmp_path / "b")  # replaces, no error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no temporary folders left
    ids = torch.randint(4, 300, (1, 9))
    torch.testing.assert_close(logits_of(tmp_path / "b", ids), logits_of(pretrained_run / "backbone", ids))


def test_a_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="not found: pass the backbone/ folder"):
        load_backbone(tmp_path / "nope")
    with pytest.raises(BackboneError, match="config.json, tokenizer.model missing"):
        (tmp_path / "half").mkdir()
        (tmp_path / "half" / "model.safetensors").write_bytes(b"")
        load_backbone(tmp_path / "half")


def test_a_checkpoint_of_the_wrong_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2, 2)}, "hyper_parameters": {"lr": 0.1}}, path)
    with pytest.raises(BackboneError, match="not a checkpoint of a pretrained CausalLM"):
        load_backbone(path)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_payload_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))
    with pytest.raises(BackboneError, match="without unpickling code"):
        load_backbone(path)
    assert not marker.exists()


def test_a_tokenizer_that_does_not_match_the_weights_is_refused(pretrained_run: Path, tmp_path: Path) -> None:
    from imdb_transformer.data.tokenizer import fit_or_load

    backbone = load_backbone(pretrained_run / "backbone")
    export = export_backbone(backbone.decoder, backbone.tokenizer, tmp_path / "b")
    other = fit_or_load(["some other text entirely, quite different"] * 50, tmp_path / "tok", 300, "bpe")
    other.save(export / "tokenizer.model")
    with pytest.raises(BackboneError, match="is not the tokenizer these weights were trained with"):
        load_backbone(export)
    meta = json.loads((export / "config.json").read_text())
    meta["config"]["vocab_size"] = 100  # fewer embedding rows than the tokenizer has pieces
    (export / "config.json").write_text(json.dumps(meta))
    with pytest.raises(BackboneError, match="embedding rows"):
        load_backbone(export)


def test_checkpoints_of_every_kind_carry_one_backbone_record(pretrained_run: Path) -> None:
    checkpoint = load_checkpoint(pretrained_run / "checkpoints" / "last.ckpt")
    saved = checkpoint[CHECKPOINT_KEY]
    assert saved["format"] == FORMAT and saved["config"]["n_layer"] == 2
    assert "LMDataModule" not in checkpoint  # the tokenizer lives in the record only
    spec = load_spec(pretrained_run / "checkpoints" / "last.ckpt")
    assert spec.fingerprint == load_spec(pretrained_run / "backbone").fingerprint


def test_checkpoints_from_before_the_record_still_load(pretrained_run: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(pretrained_run / "checkpoints" / "last.ckpt")
    saved = checkpoint.pop(CHECKPOINT_KEY)
    ids = torch.randint(4, 300, (1, 9))
    expected = logits_of(pretrained_run / "checkpoints" / "last.ckpt", ids)
    pretraining = {**checkpoint, "LMDataModule": {"tokenizer_model": saved["tokenizer_model"]}}
    classifier = {
        **checkpoint,
        "backbone_config": saved["config"],
        "tokenizer_model": saved["tokenizer_model"],
    }
    classifier.pop("hyper_parameters")
    for name, old in [("pretraining", pretraining), ("classifier", classifier)]:
        torch.save(old, tmp_path / f"{name}.ckpt")
        torch.testing.assert_close(logits_of(tmp_path / f"{name}.ckpt", ids), expected)
