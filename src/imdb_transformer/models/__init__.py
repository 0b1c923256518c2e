"""The LightningModules: pretraining (:class:`CausalLM`, the :class:`LSTMLM` baseline), sentiment
(:class:`SentimentClassifier`) and the embedding adapter (:class:`EmbeddingAdapter`). The math they
train lives in :mod:`imdb_transformer.core`."""

from imdb_transformer.models.adapter import EmbeddingAdapter
from imdb_transformer.models.classifier import SentimentClassifier
from imdb_transformer.models.lm import CausalLM, LanguageModel
from imdb_transformer.models.lstm import LSTMLM

__all__ = ["LSTMLM", "CausalLM", "EmbeddingAdapter", "LanguageModel", "SentimentClassifier"]
