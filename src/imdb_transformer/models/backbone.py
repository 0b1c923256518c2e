"""Save and load the pretrained backbone without pickle, for the adapters that reuse it.

An export is a folder: ``model.safetensors`` (weights), ``config.json`` (the
:class:`DecoderConfig` and a fingerprint of the tokenizer) and ``tokenizer.model``. Adapters also
accept a Lightning ``.ckpt`` of a :class:`CausalLM` (or of a model that holds one), loaded with
``torch.load(weights_only=True)``, which never runs code from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from imdb_transformer.atomic import atomic_path, read_artifact
from imdb_transformer.data.tokenizer import Tokenizer
from imdb_transformer.models.decoder import CausalDecoder, DecoderConfig

EXPORT_FORMAT = "imdb_transformer.backbone/1"
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"


class BackboneError(ValueError):
    """A path that does not hold a usable backbone, or a tokenizer that does not fit its weights."""


@dataclass
class Backbone:
    """A pretrained decoder together with the tokenizer it was trained with."""

    decoder: CausalDecoder
    tokenizer: Tokenizer


def tokenizer_fingerprint(tokenizer: Tokenizer) -> str:
    return hashlib.sha256(tokenizer.to_bytes()).hexdigest()[:16]


def export_backbone(decoder: CausalDecoder, tokenizer: Tokenizer, folder: str | os.PathLike) -> Path:
    """Write ``decoder`` and ``tokenizer`` to ``folder`` (replaced atomically if it exists)."""
    meta = {
        "format": EXPORT_FORMAT,
        "config": asdict(decoder.config),
        "tokenizer_vocab_size": tokenizer.vocab_size,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
    }
    with atomic_path(folder, is_dir=True, overwrite=True) as tmp:
        save_model(decoder, str(tmp / WEIGHTS))  # drops the tied LM head's duplicate tensor
        (tmp / CONFIG).write_text(json.dumps(meta, indent=2))
        tokenizer.save(tmp / TOKENIZER)
    return Path(folder)


def load_backbone(path: str | os.PathLike) -> Backbone:
    """Load a backbone from an export folder or from a ``.ckpt`` that holds one."""
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_export(path)
    if path.is_file():
        return _load_checkpoint(path)
    raise BackboneError(
        f"backbone {str(path)!r} not found: pass the backbone/ folder of a pretraining run "
        "(lightning_logs/version_N/backbone) or one of its checkpoints (.ckpt)"
    )


def _check_vocab(tokenizer: Tokenizer, config: DecoderConfig, where: Path) -> None:
    if tokenizer.vocab_size > config.vocab_size:
        raise BackboneError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} pieces but the weights only "
            f"{config.vocab_size} embedding rows; use the tokenizer saved with these weights"
        )


def _load_export(folder: Path) -> Backbone:
    missing = [name for name in (WEIGHTS, CONFIG, TOKENIZER) if not (folder / name).is_file()]
    if missing:
        raise BackboneError(f"{folder} is not a backbone export: {', '.join(missing)} missing")
    remedy = "the export is damaged: export the backbone again, or use a checkpoint of its run"
    meta = read_artifact(folder / CONFIG, lambda p: json.loads(p.read_text()), BackboneError, remedy)
    if meta.get("format") != EXPORT_FORMAT:
        raise BackboneError(
            f"{folder / CONFIG} has format {meta.get('format')!r}, expected {EXPORT_FORMAT!r}"
        )
    config = DecoderConfig(**meta["config"])
    tokenizer = read_artifact(folder / TOKENIZER, Tokenizer, BackboneError, remedy)
    _check_vocab(tokenizer, config, folder)
    if tokenizer_fingerprint(tokenizer) != meta["tokenizer_sha256"]:
        raise BackboneError(
            f"{folder / TOKENIZER} is not the tokenizer these weights were trained with "
            f"(fingerprint {tokenizer_fingerprint(tokenizer)}, expected {meta['tokenizer_sha256']}); "
            "restore the tokenizer.model exported with them"
        )
    decoder = CausalDecoder(config)
    read_artifact(folder / WEIGHTS, lambda p: load_model(decoder, str(p)), BackboneError, remedy)
    return Backbone(decoder.eval(), tokenizer)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A Lightning checkpoint's contents, loaded with ``weights_only=True``: tensors and plain values
    only, so a file holding pickled code is refused instead of run."""
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _load_checkpoint(path: Path) -> Backbone:
    remedy = "it is truncated, not a checkpoint, or holds code (refused: loaded without unpickling code)"
    ckpt = read_artifact(path, load_checkpoint, BackboneError, remedy)
    state = ckpt.get("state_dict", {}) if isinstance(ckpt, dict) else {}
    weights = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    config_dict = ckpt.get("backbone_config") or ckpt.get("hyper_parameters", {})
    names = {f.name for f in fields(DecoderConfig)}
    if "wte.weight" not in weights or not {"n_layer", "n_head", "n_embd"} <= config_dict.keys():
        raise BackboneError(
            f"{path} is not a checkpoint of a pretrained CausalLM (it has no backbone weights and config); "
            "pass a checkpoint written by `imdb-transformer fit --config configs/pretrain.yaml`"
        )
    config = DecoderConfig(**{k: v for k, v in config_dict.items() if k in names})
    tokenizer = _checkpoint_tokenizer(ckpt, path)
    _check_vocab(tokenizer, config, path)
    decoder = CausalDecoder(config)
    weights.setdefault("lm_head.weight", weights["wte.weight"])
    decoder.load_state_dict(weights)
    return Backbone(decoder.eval(), tokenizer)


def _checkpoint_tokenizer(ckpt: dict, path: Path) -> Tokenizer:
    """The tokenizer stored in the checkpoint, else the ``tokenizer.model`` of its run folder."""
    for holder in (ckpt, *[v for v in ckpt.values() if isinstance(v, dict)]):
        if isinstance(holder.get("tokenizer_model"), torch.Tensor):
            return Tokenizer.from_bytes(holder["tokenizer_model"].numpy().tobytes())
    beside = path.parent.parent / TOKENIZER
    if beside.is_file():
        return Tokenizer(beside)
    raise BackboneError(
        f"{path} holds no tokenizer and there is no {beside}; pass the run's backbone/ folder"
    )
