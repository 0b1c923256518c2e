"""A pretrained backbone as a file: the one module that writes and reads it, in either of its forms.

- An **export** is a folder: ``model.safetensors`` (weights), ``config.json`` (the record below) and
  ``tokenizer.model``. No pickle anywhere.
- A **checkpoint** (``.ckpt``) of any LightningModule here that holds the decoder as ``self.backbone``
  (:class:`CausalLM`, :class:`SentimentClassifier`, :class:`EmbeddingAdapter`) carries the same record
  under :data:`CHECKPOINT_KEY`, with the tokenizer's bytes, beside the weights ``backbone.*`` of its
  ``state_dict``. It is loaded with ``torch.load(weights_only=True)``, which never runs code.

The record is ``{"format", "config", "tokenizer_vocab_size", "tokenizer_sha256"}``; :data:`FORMAT`
is its one version. Every field is checked for its type, and the weights' names and shapes against
the shape the record describes, before any tensor is allocated: a damaged or crafted record is
refused by name instead of making the loader build a model of any size it says. Weights that are not
finite are refused too.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from imdb_transformer.artifacts import (
    atomic_path,
    check_shapes,
    read_artifact,
    read_folder_record,
    safetensors_shapes,
    typed_record,
    weights_fingerprint,
)
from imdb_transformer.core.decoder import CausalDecoder, DecoderConfig
from imdb_transformer.errors import InputError
from imdb_transformer.text.tokenizer import Tokenizer

FORMAT = "imdb_transformer.backbone/1"
CHECKPOINT_KEY = "imdb_transformer.backbone"
WEIGHTS_PREFIX = "backbone."  # the attribute every LightningModule here keeps its decoder in
WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer.model"
_SIZES = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")  # fields a record must state


class BackboneError(InputError):
    """A path that does not hold a usable backbone, or a tokenizer that does not fit its weights."""


@dataclass
class BackboneSpec:
    """What a backbone is without its weights: its shape and its tokenizer (enough to prepare data)."""

    config: DecoderConfig
    tokenizer: Tokenizer

    @property
    def signature(self) -> str:
        """The shape, direction and tokenizer (``6x256-ctx512-backward-tok...``): weights trained for one
        signature do not fit another. Not a fingerprint of weights (see :attr:`Backbone.fingerprint`)."""
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
        return f"{weights_fingerprint(self.decoder.state_dict())}-{tokenizer_fingerprint(self.tokenizer)}"


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


def spec_from_checkpoint(
    checkpoint: dict, where: str | os.PathLike, tokenizer: Tokenizer | None = None
) -> BackboneSpec:
    """The backbone shape and tokenizer recorded in a loaded checkpoint, every field checked (an export
    passes its ``tokenizer.model`` as ``tokenizer``; a checkpoint carries the tokenizer's bytes)."""
    saved = checkpoint.get(CHECKPOINT_KEY)
    if saved is None:
        raise _not_a_backbone(Path(where))
    if not isinstance(saved, dict):
        raise BackboneError(f"{where}: its backbone record is a {type(saved).__name__}, not an object")
    if saved.get("format") != FORMAT:
        raise BackboneError(
            f"{where} has a backbone record of format {saved.get('format')!r:.60}, expected {FORMAT!r}: it "
            "was written by another version of imdb_transformer; export or train it again with this one"
        )
    config = typed_record(DecoderConfig, saved.get("config"), f"{where}: config", BackboneError, _SIZES)
    if tokenizer is None:
        model = saved.get("tokenizer_model")
        if not isinstance(model, torch.Tensor) or model.dtype != torch.uint8 or model.dim() != 1:
            raise BackboneError(f"{where}: its record holds no tokenizer (tokenizer_model); {_EXPORT_REMEDY}")
        tokenizer = read_artifact(
            Path(where),
            lambda _: Tokenizer.from_bytes(model.numpy().tobytes()),
            BackboneError,
            _EXPORT_REMEDY,
        )
    _check_vocab(tokenizer, config, where)
    return BackboneSpec(config, tokenizer)


def decoder_shapes(config: DecoderConfig) -> dict[str, tuple[int, ...]]:
    """Name and shape of every weight of a :class:`CausalDecoder` of ``config``, computed without
    building it (the tied LM head is stored once, as ``wte.weight``)."""
    with torch.device("meta"):
        return {
            k: tuple(v.shape) for k, v in CausalDecoder(config).state_dict().items() if k != "lm_head.weight"
        }


def check_weights(
    config: DecoderConfig, shapes: dict[str, tuple[int, ...]], where: str | os.PathLike
) -> None:
    """Refuse weights that do not have the shape ``config`` describes. The sizes the record states
    are compared with the weights' first (layer count, vocabulary, width), so a record that claims a
    huge model is refused before even an empty one is built."""
    remedy = "the record does not describe these weights; " + _EXPORT_REMEDY
    layers = {int(k.split(".")[1]) for k in shapes if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    embedding = shapes.get("wte.weight")
    if embedding is None:
        raise BackboneError(f"{where} holds no token embedding (wte.weight); {remedy}")
    claimed = (config.n_layer, config.vocab_size, config.n_embd)
    if claimed != (len(layers), *embedding) and len(embedding) == 2:
        raise BackboneError(
            f"{where}: the record says {config.n_layer} layers, {config.vocab_size} tokens and width "
            f"{config.n_embd}, but the weights have {len(layers)} layers and an embedding of "
            f"{tuple(embedding)}; {remedy}"
        )
    check_shapes(decoder_shapes(config), shapes, str(where), BackboneError, remedy)


def check_finite(decoder: CausalDecoder, where: str | os.PathLike) -> None:
    """Refuse weights holding NaN or infinity (a diverged run's): every output would be NaN."""
    for name, tensor in decoder.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BackboneError(
                f"{where}: the weight {name} holds NaN or infinite values (a run that diverged); use an "
                "earlier checkpoint of the run"
            )


def export_backbone(decoder: CausalDecoder, tokenizer: Tokenizer, folder: str | os.PathLike) -> Path:
    """Write ``decoder`` and ``tokenizer`` to ``folder`` (replaced atomically if it exists)."""
    with atomic_path(folder, is_dir=True, overwrite=True) as tmp:
        save_model(decoder, str(tmp / WEIGHTS))  # drops the tied LM head's duplicate tensor
        (tmp / CONFIG).write_text(json.dumps(record(decoder.config, tokenizer), indent=2))
        tokenizer.save(tmp / TOKENIZER)
    return Path(folder)


def load_backbone(path: str | os.PathLike) -> Backbone:
    """Load a backbone from an export folder or from a ``.ckpt`` that holds one (checked as the
    module's docstring says)."""
    path = _existing(path)
    if path.is_dir():
        spec = _export_spec(path)
        shapes = read_artifact(path / WEIGHTS, _safetensors_shapes, BackboneError, _EXPORT_REMEDY)
        check_weights(spec.config, shapes, path / WEIGHTS)
        decoder = CausalDecoder(spec.config)
        read_artifact(path / WEIGHTS, lambda p: load_model(decoder, str(p)), BackboneError, _EXPORT_REMEDY)
    else:
        checkpoint = _read_checkpoint(path)
        state = checkpoint.get("state_dict")
        state = state if isinstance(state, dict) else {}
        weights = {
            k.removeprefix(WEIGHTS_PREFIX): v
            for k, v in state.items()
            if isinstance(k, str) and k.startswith(WEIGHTS_PREFIX) and isinstance(v, torch.Tensor)
        }
        if "wte.weight" not in weights:
            raise _not_a_backbone(path)
        spec = spec_from_checkpoint(checkpoint, path)
        weights.pop("lm_head.weight", None)  # tied to wte: stored once
        check_weights(spec.config, {k: tuple(v.shape) for k, v in weights.items()}, path)
        decoder = CausalDecoder(spec.config)
        weights["lm_head.weight"] = weights["wte.weight"]
        read_artifact(path, lambda _: decoder.load_state_dict(weights), BackboneError, _EXPORT_REMEDY)
    check_finite(decoder, path)
    return Backbone(decoder.eval(), spec.tokenizer)


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors in a safetensors file, read from its header alone; the tied
    embedding under one name, ``wte.weight``, whichever of its two names the file kept."""
    shapes = safetensors_shapes(path)
    if "wte.weight" not in shapes and "lm_head.weight" in shapes:
        shapes["wte.weight"] = shapes.pop("lm_head.weight")
    return shapes


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
        f"{path} is not a checkpoint of a pretrained CausalLM (it has no backbone weights and record); "
        "pass a checkpoint written by `imdb-transformer fit --config configs/pretrain.yaml` (one of an "
        "earlier version of imdb_transformer: train or export it again)"
    )


def _read_checkpoint(path: Path) -> dict:
    remedy = "it is truncated, not a checkpoint, or holds code (refused: loaded without unpickling code)"
    checkpoint = read_artifact(path, load_checkpoint, BackboneError, remedy)
    if not isinstance(checkpoint, dict):
        raise _not_a_backbone(path)
    return checkpoint


def _export_spec(folder: Path) -> BackboneSpec:
    meta = read_folder_record(
        folder, (WEIGHTS, CONFIG, TOKENIZER), CONFIG, error=BackboneError, kind="a backbone export",
        fix="pass a pretraining run's backbone/ folder or one of its checkpoints", remedy=_EXPORT_REMEDY,
    )  # fmt: skip
    tokenizer = read_artifact(folder / TOKENIZER, Tokenizer, BackboneError, _EXPORT_REMEDY)
    spec = spec_from_checkpoint({CHECKPOINT_KEY: meta}, folder / CONFIG, tokenizer)
    if tokenizer_fingerprint(tokenizer) != meta.get("tokenizer_sha256"):
        raise BackboneError(
            f"{folder / TOKENIZER} is not the tokenizer these weights were trained with "
            f"(fingerprint {tokenizer_fingerprint(tokenizer)}, expected "
            f"{meta.get('tokenizer_sha256')!r:.40}); "
            "restore the tokenizer.model exported with them"
        )
    return spec


def _check_vocab(tokenizer: Tokenizer, config: DecoderConfig, where: str | os.PathLike) -> None:
    if tokenizer.vocab_size < 4:  # an empty or unparsed model: not even the special pieces
        raise BackboneError(f"{where}: its tokenizer is empty (no pieces); {_EXPORT_REMEDY}")
    if tokenizer.vocab_size > config.vocab_size:
        raise BackboneError(
            f"{where}: the tokenizer has {tokenizer.vocab_size} pieces but the weights only "
            f"{config.vocab_size} embedding rows; use the tokenizer saved with these weights"
        )
