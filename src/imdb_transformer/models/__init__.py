"""The backbone (:class:`CausalDecoder`) and the LightningModules built on it."""

from imdb_transformer.models.decoder import CausalDecoder, DecoderConfig, KVCache
from imdb_transformer.models.lm import CausalLM

__all__ = ["CausalDecoder", "CausalLM", "DecoderConfig", "KVCache"]
