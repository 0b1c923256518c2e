"""imdb_transformer: pretrain a causal transformer on IMDB reviews, then reuse it.

The package's layers, lowest first (a module imports only from its own layer or below): ``text``
(loading, cleaning, tokenizing, batching), ``core`` (the decoder and its files), ``data`` and ``models``
(Lightning), ``embedder``, ``ensemble`` and ``generation`` (inference), ``search``, ``serve``, and the
console script (``verbs``, ``cli``). The names below are imported on first use, so importing a low
layer never loads Lightning.
"""

from importlib import import_module

_EXPORTS = {
    "CausalDecoder": "imdb_transformer.core.decoder",
    "DecoderConfig": "imdb_transformer.core.decoder",
    "KVCache": "imdb_transformer.core.decoder",
    "Tokenizer": "imdb_transformer.text.tokenizer",
    "CausalLM": "imdb_transformer.models",
    "LMDataModule": "imdb_transformer.data",
}
__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'imdb_transformer' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
