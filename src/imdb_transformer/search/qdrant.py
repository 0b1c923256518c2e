"""An index exported to Qdrant, for collections that outgrow one process: :func:`export_index` copies a
:class:`SemanticIndex` into a Qdrant collection, :class:`QdrantIndex` queries it as the index would.

Qdrant stores both kinds of vectors the project makes: the embedder's vectors (named ``dense``, or
``sparse`` for an adapter's vocabulary-sized vectors, whose CSR rows are Qdrant sparse vectors as they
are) and BM25 (named ``bm25``). ``bm25s`` stores each review's BM25 score for each of its words, IDF
included, so a query's BM25 score is a sparse dot product: the query's word counts against those
weights. Words become sparse dimensions by a stable hash (as Qdrant's own BM25 does), so no vocabulary
has to travel with the collection. The collection's metadata records the embedder (its fingerprint and
where its files are) and the fusion weight; a hybrid query fuses as :meth:`SemanticIndex.top_k` does,
over the union of each ranker's candidates, on the client.

``qdrant-client`` (the ``qdrant`` extra) reaches a server by URL, or keeps a collection in a local
folder in-process (its local mode, for tests and small collections).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from imdb_transformer.embedder import DocumentEmbedder
from imdb_transformer.errors import InputError
from imdb_transformer.search.bm25 import BM25Index
from imdb_transformer.search.hits import Hit, hits_of
from imdb_transformer.search.index import SemanticIndex, check_embedder, embedder_for, located
from imdb_transformer.search.ranking import (
    CANDIDATES,
    Mode,
    check_k,
    check_mode,
    filled,
    fused_top,
    fusion_rows,
)
from imdb_transformer.search.storage import SearchIndexError
from imdb_transformer.text.texts import is_blank

if TYPE_CHECKING:
    from qdrant_client import QdrantClient

QDRANT_FORMAT = "imdb_transformer.qdrant/1"
LEXICAL = "bm25"


def word_dimension(word: str) -> int:
    """The sparse dimension of a BM25 word: 31 bits of its BLAKE2 hash (stable across processes)."""
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest(), "little") & 0x7FFFFFFF


def connect(
    url: str | None = None, path: str | os.PathLike | None = None, create: bool = True
) -> QdrantClient:
    """A ``QdrantClient`` for a server at ``url`` or a local collection folder ``path`` (one of them);
    without ``create``, a ``path`` that does not exist is refused rather than made."""
    if (url is None) == (path is None):
        raise InputError(
            "give Qdrant's place one way: --url http://HOST:6333 (a server) or --path DIR (local)"
        )
    if path is not None and not create and not Path(path).is_dir():
        raise InputError(f"--path {path}: no such folder; give the folder `export-index --path` wrote")
    try:
        from qdrant_client import QdrantClient
    except ImportError:
        raise InputError("Qdrant needs qdrant-client: pip install 'imdb-transformer[qdrant]'") from None
    try:
        client = QdrantClient(url=url) if url is not None else QdrantClient(path=str(path))
        client.get_collections()  # reach it now: a wrong URL fails here, in one line
    except Exception as err:  # the client raises its own types (connection, lock, HTTP errors)
        where = f"the Qdrant server at {url}" if url is not None else f"the local Qdrant folder {path}"
        fix = "is the server running (docker run -p 6333:6333 qdrant/qdrant), and is --url right?"
        if url is None:
            fix = "another process may hold it open: only one can use a local folder at a time"
        raise InputError(f"cannot use {where} ({' '.join(str(err).split())[:200]}): {fix}") from None
    return client


def _vector_name(index_sparse: bool) -> str:
    return "sparse" if index_sparse else "dense"


def _sparse(row: sp.csr_matrix) -> Any:
    from qdrant_client import models

    return models.SparseVector(indices=row.indices.tolist(), values=row.data.tolist())


def _bm25_rows(lexical: BM25Index) -> sp.csr_matrix:
    """Each review's BM25 weights as a CSR row over its words' hashed dimensions (:func:`word_dimension`).
    Two words of one review with one hash (rare: 31 bits) share their dimension, their weights summed."""
    by_word, words = lexical.weights()
    dimension = np.array([word_dimension(word) for word in words], dtype=np.int64)
    rows = by_word.tocsr()
    hashed = sp.csr_matrix((rows.data, dimension[rows.indices], rows.indptr), shape=(rows.shape[0], 2**31))
    hashed.sum_duplicates()
    return hashed


def export_index(
    index: SemanticIndex,
    client: QdrantClient,
    collection: str,
    batch_size: int = 256,
    replace: bool = False,
    progress: bool = True,
) -> int:
    """Copy ``index`` into the Qdrant ``collection`` (point ids are the index's rows; the payload holds
    each review's key, id, label and text). An existing collection is refused unless ``replace``. A
    collection left incomplete by an error is deleted. Returns the number of points written."""
    from qdrant_client import models

    if client.collection_exists(collection):
        if not replace:
            raise InputError(
                f"Qdrant already has a collection {collection!r}: pass --replace true to replace it"
            )
        client.delete_collection(collection)
    name = _vector_name(index.sparse)
    dense = (
        {}
        if index.sparse
        else {name: models.VectorParams(size=index.vectors.shape[1], distance=models.Distance.DOT)}
    )
    sparse = {name: models.SparseVectorParams()} if index.sparse else {}
    if index.lexical is not None:
        sparse[LEXICAL] = models.SparseVectorParams()
    metadata = {
        "format": QDRANT_FORMAT,
        "count": len(index),
        **index.embedder.settings,
        "backbone": str(Path(index.backbone).resolve()) if index.backbone else None,
        "adapter": str(Path(index.adapter).resolve()) if index.adapter else None,
        "lexical": index.lexical is not None,
        "alpha": float(index.alpha),
    }
    client.create_collection(
        collection, vectors_config=dense, sparse_vectors_config=sparse, metadata=metadata
    )
    try:
        words = _bm25_rows(index.lexical) if index.lexical is not None else None
        reviews = index.reviews.select(["key", "id", "label", "text"])
        starts = range(0, len(index), batch_size)
        for start in tqdm(starts, desc="Exporting", unit="batch", disable=not progress or len(starts) < 2):
            rows = range(start, min(start + batch_size, len(index)))
            payloads = reviews.slice(start, len(rows)).to_pylist()
            points = []
            for row, payload in zip(rows, payloads, strict=True):
                vectors = {name: _sparse(index.vectors[row]) if index.sparse else index.vectors[row].tolist()}
                if words is not None:
                    vectors[LEXICAL] = _sparse(words[row])
                points.append(models.PointStruct(id=row, vector=vectors, payload=payload))
            client.upsert(collection, points=points, wait=True)
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped the export is the one to show
            client.delete_collection(collection)
        raise
    return len(index)


class QdrantIndex:
    """A Qdrant collection written by :func:`export_index`, queried as :class:`SemanticIndex` is: the
    same modes and, for the same vectors, the same ranking (Qdrant's local mode and a server's exact
    search; a server's HNSW makes the dense candidates approximate, as FAISS does for the index).

    Args:
        client: A ``QdrantClient`` (see :func:`connect`).
        collection: The collection's name.
        embedder: Embeds queries; by default one built from ``backbone`` and ``adapter``, by default
            those the collection records (where they were when it was exported). Its fingerprint is
            checked against the collection's.
    """

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        embedder: DocumentEmbedder | None = None,
        backbone: str | os.PathLike | None = None,
        adapter: str | os.PathLike | None = None,
    ) -> None:
        if not client.collection_exists(collection):
            raise InputError(
                f"Qdrant has no collection {collection!r}: write one with `imdb-transformer export-index`"
            )
        meta = client.get_collection(collection).config.metadata or {}
        where = f"Qdrant collection {collection!r}"
        if meta.get("format") != QDRANT_FORMAT:
            raise SearchIndexError(
                f"{where} was not written by `imdb-transformer export-index` (format {meta.get('format')!r}, "
                f"expected {QDRANT_FORMAT}; collection metadata needs Qdrant 1.16 or later)"
            )
        if embedder is None:
            recorded = {what: meta[what] for what in ("backbone", "adapter")}
            backbone, adapter = located(where, {"backbone": backbone, "adapter": adapter}, recorded)
            embedder = embedder_for(where, meta, backbone, adapter)
        check_embedder(where, meta, embedder)
        self.client, self.collection, self.embedder, self.meta = client, collection, embedder, meta
        self.alpha = float(meta["alpha"])
        self.name = _vector_name(embedder.sparse)

    def __len__(self) -> int:
        return int(self.meta["count"])

    def query(self, text: str, k: int = 5, mode: Mode | None = None) -> list[Hit]:
        """The ``k`` reviews that best match ``text``, best first (see :meth:`SemanticIndex.query`)."""
        if is_blank(text):
            raise InputError("empty query: give some words to search for")
        check_k(k, len(self))
        rows, scores = self.top_k(text, check_mode(mode, self.meta["lexical"]), k)
        points = self.client.retrieve(self.collection, ids=rows.tolist(), with_payload=True)
        payload = {p.id: p.payload for p in points}
        return hits_of([payload[row] for row in rows.tolist()], scores.tolist(), text)

    def top_k(self, text: str, mode: Mode, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the top ``k`` under ``mode``, ranked as :meth:`SemanticIndex.top_k` ranks."""
        vector = self._query_vector(text) if mode != "lexical" else None
        words = self._words(text) if mode != "dense" else None
        if mode != "hybrid":
            using, query = (self.name, vector) if mode == "dense" else (LEXICAL, words)
            return filled(*self._search(using, query, k), k, len(self))
        dense_rows, _ = self._search(self.name, vector, CANDIDATES)
        lexical_rows, _ = self._search(LEXICAL, words, CANDIDATES)
        rows = fusion_rows([dense_rows, lexical_rows], k, len(self))
        dense = self._scores_of(self.name, vector, rows)
        return fused_top(rows, dense, self._scores_of(LEXICAL, words, rows), self.alpha, k)

    def _query_vector(self, text: str) -> Any:
        vector = self.embedder.embed([text], progress=False)
        return _sparse(vector) if self.embedder.sparse else vector[0].tolist()

    def _words(self, text: str) -> Any:
        """The query's BM25 words as a sparse vector of their counts (each word scores once per time it
        appears in the query, as bm25s scores it)."""
        from qdrant_client import models

        counts = Counter(word_dimension(w) for w in BM25Index.words([text])[0])
        return models.SparseVector(indices=list(counts), values=[float(c) for c in counts.values()])

    def _search(
        self, using: str, vector: Any, k: int, rows: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        from qdrant_client import models

        if hasattr(vector, "indices") and not vector.indices:  # no word of the query is indexed
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        only = None
        if rows is not None:
            only = models.Filter(must=[models.HasIdCondition(has_id=rows.tolist())])
        found = self.client.query_points(
            self.collection, query=vector, using=using, limit=k, query_filter=only, with_payload=False
        ).points
        return np.array([p.id for p in found], dtype=np.int64), np.array(
            [p.score for p in found], dtype=np.float32
        )

    def _scores_of(self, using: str, vector: Any, rows: np.ndarray) -> np.ndarray:
        """The score of each of ``rows`` (0 where its vector shares nothing with the query's)."""
        found, scores = self._search(using, vector, len(rows), rows)
        out = np.zeros(len(rows), dtype=np.float32)
        out[np.searchsorted(rows, found)] = scores
        return out
