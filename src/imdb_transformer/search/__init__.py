"""Search over a folder of review embeddings and their words: :class:`SemanticIndex` (``index``) ranks
with the embedder's vectors, BM25 (``bm25``) or both fused (``ranking``), exactly or with FAISS
(``ann``); results are :class:`Hit`s (``hits``); the folder's format and checks are in ``storage``."""

from imdb_transformer.search.ann import Ann, build_faiss
from imdb_transformer.search.bm25 import BM25Index
from imdb_transformer.search.hits import Hit, format_hits, snippet
from imdb_transformer.search.index import SemanticIndex
from imdb_transformer.search.ranking import CANDIDATES, Mode, candidates, minmax, top_k_rows
from imdb_transformer.search.storage import (
    DEFAULT_ALPHA,
    INDEX_FORMAT,
    SearchIndexError,
    Vectors,
    check_alpha,
    check_out_folder,
    review_table,
)

__all__ = [
    "CANDIDATES",
    "DEFAULT_ALPHA",
    "INDEX_FORMAT",
    "Ann",
    "BM25Index",
    "Hit",
    "Mode",
    "SearchIndexError",
    "SemanticIndex",
    "Vectors",
    "build_faiss",
    "candidates",
    "check_alpha",
    "check_out_folder",
    "format_hits",
    "minmax",
    "review_table",
    "snippet",
    "top_k_rows",
]
