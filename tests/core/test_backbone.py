"""Backbone export and loading: safetensors + JSON + tokenizer, or a checkpoint, never pickle."""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch
from helpers import fails
from safetensors.torch import load_file, save_file

from imdb_transformer.core.backbone import (
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
    from imdb_transformer.text.tokenizer import fit_or_load

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
    assert spec.signature == load_spec(pretrained_run / "backbone").signature


def test_checkpoints_without_the_record_are_refused_by_name(pretrained_run: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(pretrained_run / "checkpoints" / "last.ckpt")
    checkpoint.pop(CHECKPOINT_KEY)
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.raises(BackboneError, match="no backbone weights and record.*train or export it again"):
        load_backbone(tmp_path / "old.ckpt")


def _export_copy(pretrained_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "backbone"
    shutil.copytree(pretrained_run / "backbone", copy)
    return copy


def _edit(path: Path, change) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


DAMAGED_RECORDS = {
    "a huge layer count": lambda r: r["config"].update(n_layer=10000),
    "a missing field": lambda r: r["config"].pop("n_embd"),
    "a null field": lambda r: r["config"].update(n_head=None),
    "a string for a number": lambda r: r["config"].update(n_layer="2"),
    "a fraction for a count": lambda r: r["config"].update(n_layer=2.5),
    "a bool for a count": lambda r: r["config"].update(n_layer=True),
    "a zero head count": lambda r: r["config"].update(n_head=0),
    "a negative vocabulary": lambda r: r["config"].update(vocab_size=-4),
    "a width the weights do not have": lambda r: r["config"].update(n_embd=32),
    "a vocabulary the weights do not have": lambda r: r["config"].update(vocab_size=500),
    "an absurd context": lambda r: r["config"].update(block_size=10**12),
    "a NaN rotary base": lambda r: r["config"].update(rope_base=float("nan")),
    "a dropout of 2": lambda r: r["config"].update(dropout=2.0),
    "a list for the config": lambda r: r.update(config=[1, 2]),
    "no config": lambda r: r.pop("config"),
    "another format": lambda r: r.update(format="imdb_transformer.backbone/0"),
    "no tokenizer fingerprint": lambda r: r.pop("tokenizer_sha256"),
}


@pytest.mark.parametrize("damage", list(DAMAGED_RECORDS))
def test_a_damaged_export_record_is_refused_before_anything_is_built(
    damage: str, pretrained_run: Path, tmp_path: Path
) -> None:
    export = _export_copy(pretrained_run, tmp_path)
    _edit(export / "config.json", DAMAGED_RECORDS[damage])
    start = time.perf_counter()
    with pytest.raises(BackboneError) as refused:
        load_backbone(export)
    assert time.perf_counter() - start < 5  # refused from the record and the weights' header
    assert str(export) in str(refused.value)  # names the file


@pytest.mark.parametrize(
    "damage", ["a huge layer count", "a missing field", "a string for a number", "a list"]
)
def test_a_damaged_checkpoint_record_is_refused(damage: str, pretrained_run: Path, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(pretrained_run / "checkpoints" / "last.ckpt")
    record = checkpoint[CHECKPOINT_KEY]
    if damage == "a list":
        checkpoint[CHECKPOINT_KEY] = [1, 2, 3]
    else:
        DAMAGED_RECORDS[damage](record)
    torch.save(checkpoint, tmp_path / "damaged.ckpt")
    with pytest.raises(BackboneError, match="damaged.ckpt"):
        load_backbone(tmp_path / "damaged.ckpt")


def test_non_finite_weights_and_a_json_list_are_refused_by_name(pretrained_run: Path, tmp_path: Path) -> None:
    export = _export_copy(pretrained_run, tmp_path)
    weights = load_file(str(export / "model.safetensors"))
    weights["blocks.1.mlp.fc.weight"][3, 5] = float("nan")
    save_file(weights, str(export / "model.safetensors"))
    with pytest.raises(BackboneError, match="blocks.1.mlp.fc.weight holds NaN"):
        load_backbone(export)
    (export / "config.json").write_text("[]")
    with pytest.raises(BackboneError, match="not an object"):
        load_backbone(export)


def test_the_cli_prints_one_line_for_a_crafted_record(pretrained_run: Path, tmp_path: Path) -> None:
    export = _export_copy(pretrained_run, tmp_path)
    _edit(export / "config.json", DAMAGED_RECORDS["a huge layer count"])
    start = time.perf_counter()
    err = fails("generate", "--backbone", str(export), "--prompt", "The film")
    assert time.perf_counter() - start < 30
    assert "Traceback" not in err and err.strip().count("\n") == 0
    assert err.startswith("error: ") and "10000 layers" in err and "2 layers" in err
