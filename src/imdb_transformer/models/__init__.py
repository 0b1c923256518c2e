"""The backbone (:class:`CausalDecoder`) and the LightningModules built on it."""

from imdb_transformer.models.adapter import EmbeddingAdapter, EmbeddingHead, load_adapter
from imdb_transformer.models.backbone import Backbone, BackboneError, export_backbone, load_backbone
from imdb_transformer.models.classifier import SentimentClassifier
from imdb_transformer.models.decoder import CausalDecoder, DecoderConfig, KVCache
from imdb_transformer.models.lm import CausalLM, LanguageModel
from imdb_transformer.models.lstm import LSTMLM

__all__ = [
    "Backbone",
    "BackboneError",
    "CausalDecoder",
    "CausalLM",
    "DecoderConfig",
    "EmbeddingAdapter",
    "EmbeddingHead",
    "KVCache",
    "LSTMLM",
    "LanguageModel",
    "SentimentClassifier",
    "export_backbone",
    "load_adapter",
    "load_backbone",
]
