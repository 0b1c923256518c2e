"""A pretrained backbone as a file: the one module that writes and reads it, in either of its forms.

- An **export** is a folder: ``model.safetensors`` (weights), ``config.json`` (the record below) and
  ``tokenizer.model``. No pickle anywhere.
- A **checkpoint** (``.ckpt``) of any LightningModule here that holds the decoder as ``self.backbone``
  (:class:`CausalLM`, :class:`SentimentClassifier`, :class:`EmbeddingAdapter`) carries the same record
  under :data:`CHECKPOINT_KEY`, with the tokenizer's bytes, beside the weights ``backbone.*`` of its
  ``state_dict``. It is loaded with ``torch.load(weights_only=True)``, which never runs code.

The record is ``{"format", "config", "tokenizer_vocab_size", "tokenizer_sha256"}``; :data:`FORMAT`
is its one version. Checkpoints written before the record existed are read by :func:`_legacy_record`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from imdb_transformer.artifacts import atomic_path, read_artifact
from imdb_transformer.data.tokenizer import Tokenizer
from imdb_transformer.errors import InputError
from imdb_transformer.models.decoder import CausalDecoder, DecoderConfig

FORMAT = "imdb_transformer.backbone/1"
CHECKPOINT_KEY = "imdb_transformer.backbone"
WEIGHTS_PREFIX = "backbone."  # the attribute every LightningModule here keeps its decoder in
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"


class BackboneError(InputError):
    """A path that does not hold a usable backbone, or a tokenizer that does not fit its weights."""


@dataclass
class BackboneSpec:
    """What a backbone is without its weights: its shape and its tokenizer (enough to prepare data)."""

    config: DecoderConfig
    tokenizer: Tokenizer

    @property
    def fingerprint(self) -> str:
        """Identifies the shape and tokenizer; weights trained on one do not fit another."""
        c = self.config
        backward = "-backward" if c.reverse else ""
        return (
            f"{c.n_layer}x{c.n_embd}-ctx{c.block_size}{backward}-tok{tokenizer_fingerprint(self.tokenizer)}"
        )


@dataclass
class Backbone:
    """A pretrained decoder together with the tokenizer it was trained with."""

    decoder: CausalDecoder
    tokenizer: Tokenizer

    @property
    def fingerprint(self) -> str:
        """Identifies these exact weights and tokenizer (what an adapter or an index was built on)."""
        h = hashlib.sha256()
        for name, tensor in sorted(self.decoder.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return f"{h.hexdigest()[:16]}-{tokenizer_fingerprint(self.tokenizer)}"


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_bytes()).hexdigest()[:16]


def record(config: DecoderConfig, tokenizer: Tokenizer) -> dict:
    """The backbone record: what ``config.json`` holds and what checkpoints carry."""
    return {
        "format": FORMAT,
        "config": asdict(config),
        "tokenizer_vocab_size": tokenizer.vocab_size,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
    }


def add_to_checkpoint(checkpoint: dict, config: DecoderConfig, tokenizer: Tokenizer) -> None:
    """Make ``checkpoint`` self-contained: the backbone's record and tokenizer travel with its weights.
    Called from ``on_save_checkpoint`` of every module that holds a backbone."""
    model = torch.frombuffer(bytearray(tokenizer.to_bytes()), dtype=torch.uint8)
    checkpoint[CHECKPOINT_KEY] = {**record(config, tokenizer), "tokenizer_model": model}


def spec_from_checkpoint(checkpoint: dict, where: str | os.PathLike) -> BackboneSpec:
    """The backbone shape and tokenizer recorded in a loaded checkpoint (any version)."""
    saved = checkpoint.get(CHECKPOINT_KEY) or _legacy_record(checkpoint, Path(where))
    if saved.get("format") != FORMAT:
        raise BackboneError(f"{where} has a backbone of format {saved.get('format')!r}, expected {FORMAT!r}")
    names = {f.name for f in fields(DecoderConfig)}
    config = DecoderConfig(**{k: v for k, v in saved["config"].items() if k in names})
    tokenizer = saved.get("tokenizer")
    if tokenizer is None:
        tokenizer = Tokenizer.from_bytes(saved["tokenizer_model"].numpy().tobytes())
    _check_vocab(tokenizer, config, where)
    return BackboneSpec(config, tokenizer)


def export_backbone(decoder: CausalDecoder, tokenizer: Tokenizer, folder: str | os.PathLike) -> Path:
    """Write ``decoder`` and ``tokenizer`` to ``folder`` (replaced atomically if it exists)."""
    with atomic_path(folder, is_dir=True, overwrite=True) as tmp:
        save_model(decoder, str(tmp / WEIGHTS))  # drops the tied LM head's duplicate tensor
        (tmp / CONFIG).write_text(json.dumps(record(decoder.config, tokenizer), indent=2))
        tokenizer.save(tmp / TOKENIZER)
    return Path(folder)


def load_backbone(path: str | os.PathLike) -> Backbone:
    """Load a backbone from an export folder or from a ``.ckpt`` that holds one."""
    path = _existing(path)
    if path.is_dir():
        spec = _export_spec(path)
        decoder = CausalDecoder(spec.config)
        read_artifact(path / WEIGHTS, lambda p: load_model(decoder, str(p)), BackboneError, _EXPORT_REMEDY)
        return Backbone(decoder.eval(), spec.tokenizer)
    checkpoint = _read_checkpoint(path)
    state = checkpoint.get("state_dict", {})
    weights = {k.removeprefix(WEIGHTS_PREFIX): v for k, v in state.items() if k.startswith(WEIGHTS_PREFIX)}
    if "wte.weight" not in weights:
        raise _not_a_backbone(path)
    spec = spec_from_checkpoint(checkpoint, path)
    decoder = CausalDecoder(spec.config)
    weights.setdefault("lm_head.weight", weights["wte.weight"])  # tied: stored once
    decoder.load_state_dict(weights)
    return Backbone(decoder.eval(), spec.tokenizer)


def require_backbone(path: str | os.PathLike | None, who: str) -> Backbone:
    """The backbone an adapter (``who``) is built on: loaded from ``path``, or a clear error if none."""
    if path is None:
        raise BackboneError(
            f"{who} needs a pretrained backbone: pass --model.backbone, a pretraining run's "
            "backbone/ folder (lightning_logs/version_N/backbone) or one of its checkpoints"
        )
    return load_backbone(path)


def load_spec(path: str | os.PathLike) -> BackboneSpec:
    """A backbone's shape and tokenizer, from an export folder or a checkpoint, without its weights."""
    path = _existing(path)
    if path.is_dir():
        return _export_spec(path)
    return spec_from_checkpoint(_read_checkpoint(path), path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning checkpoint's contents, loaded with ``weights_only=True``: tensors and plain values
    only, so a file holding pickled code is refused instead of run."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


_EXPORT_REMEDY = "the export is damaged: export the backbone again, or use a checkpoint of its run"


def _existing(path: str | os.PathLike) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise BackboneError(
            f"backbone {str(path)!r} not found: pass the backbone/ folder of a pretraining run "
            "(lightning_logs/version_N/backbone) or one of its checkpoints (.ckpt)"
        )
    return path


def _not_a_backbone(path: Path) -> BackboneError:
    return BackboneError(
        f"{path} is not a checkpoint of a pretrained CausalLM (it has no backbone weights and config); "
        "pass a checkpoint written by `imdb-transformer fit --config configs/pretrain.yaml`"
    )


def _read_checkpoint(path: Path) -> dict:
    remedy = "it is truncated, not a checkpoint, or holds code (refused: loaded without unpickling code)"
    checkpoint = read_artifact(path, load_checkpoint, BackboneError, remedy)
    if not isinstance(checkpoint, dict):
        raise _not_a_backbone(path)
    return checkpoint


def _export_spec(folder: Path) -> BackboneSpec:
    missing = [name for name in (WEIGHTS, CONFIG, TOKENIZER) if not (folder / name).is_file()]
    if missing:
        raise BackboneError(f"{folder} is not a backbone export: {', '.join(missing)} missing")
    meta = read_artifact(folder / CONFIG, lambda p: json.loads(p.read_text()), BackboneError, _EXPORT_REMEDY)
    tokenizer = read_artifact(folder / TOKENIZER, Tokenizer, BackboneError, _EXPORT_REMEDY)
    spec = spec_from_checkpoint({CHECKPOINT_KEY: {**meta, "tokenizer": tokenizer}}, folder / CONFIG)
    if tokenizer_fingerprint(tokenizer) != meta["tokenizer_sha256"]:
        raise BackboneError(
            f"{folder / TOKENIZER} is not the tokenizer these weights were trained with "
            f"(fingerprint {tokenizer_fingerprint(tokenizer)}, expected {meta['tokenizer_sha256']}); "
            "restore the tokenizer.model exported with them"
        )
    return spec


def _check_vocab(tokenizer: Tokenizer, config: DecoderConfig, where: str | os.PathLike) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise BackboneError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} pieces but the weights only "
            f"{config.vocab_size} embedding rows; use the tokenizer saved with these weights"
        )


def _legacy_record(checkpoint: dict, path: Path) -> dict:
    """The record of a checkpoint written before :data:`CHECKPOINT_KEY` existed: a classifier's kept
    ``backbone_config`` and ``tokenizer_model`` at the top level; a pretraining run's kept the shape in
    ``hyper_parameters`` and the tokenizer in its ``LMDataModule`` entry (or beside the run)."""
    if "backbone_config" in checkpoint:
        config, tokenizer = checkpoint["backbone_config"], checkpoint.get("tokenizer_model")
    else:
        config = checkpoint.get("hyper_parameters", {})
        tokenizer = checkpoint.get("LMDataModule", {}).get("tokenizer_model")
    if not {"n_layer", "n_head", "n_embd"} <= config.keys():
        raise _not_a_backbone(path)
    if isinstance(tokenizer, torch.Tensor):
        return {"format": FORMAT, "config": config, "tokenizer_model": tokenizer}
    beside = path.parent.parent / TOKENIZER  # lightning_logs/version_N/{checkpoints/x.ckpt, tokenizer.model}
    if not beside.is_file():
        raise BackboneError(
            f"{path} holds no tokenizer and there is no {beside}; pass the run's backbone/ folder"
        )
    return {"format": FORMAT, "config": config, "tokenizer": Tokenizer(beside)}
