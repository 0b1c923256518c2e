"""imdb_transformer: pretrain a causal transformer on IMDB reviews, then reuse it."""

from imdb_transformer.data import LMDataModule, Tokenizer
from imdb_transformer.models import CausalDecoder, CausalLM, DecoderConfig, KVCache

__all__ = ["CausalDecoder", "CausalLM", "DecoderConfig", "KVCache", "LMDataModule", "Tokenizer"]
__version__ = "0.1.0"
