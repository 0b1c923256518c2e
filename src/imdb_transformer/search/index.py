"""SemanticIndex: dense vectors and a BM25 index of the same reviews, ranked alone or fused.

The index is a folder: ``vectors.safetensors`` (N, C) unit vectors (dense, or for a sparse adapter the
arrays of a CSR matrix), ``reviews.parquet`` (key, id,
label, text), ``lexical/`` (a BM25 index written by ``bm25s``: numpy arrays and JSON, no pickle) and
``index.json`` (what built it: backbone, adapter, fingerprint, the hybrid weight).

Every review is named by a unique key, as the original archive's file names name it (``test/pos/2221``):
IMDB's ``id`` alone repeats across labels and splits. Loading checks every array and field of the
folder before any library reads them (scipy and bm25s trust their index arrays), so a damaged or
crafted index is one clear error, never a crash.

- ``dense``: cosine of the query's vector against every review's (one matrix product: exact), or, for
  indexes that outgrow that, an approximate FAISS HNSW graph (``ann="hnsw"``, the ``faiss`` extra).
  Sparse vectors (one dimension per vocabulary entry) are searched exactly through their inverted index:
  only the reviews that share a token with the query are touched. "dense" names the embedding ranker,
  as against the BM25 one, whatever the vectors' storage.
- ``lexical``: BM25 over lower-cased words without stop words (``bm25s``): names and rare words.
- ``hybrid``: both, fused. Each ranker proposes its top candidates; both score every candidate; each
  score is min-max normalised over the candidates and the two are mixed convexly,
  ``alpha * dense + (1 - alpha) * lexical`` (Bruch et al. 2023, "An Analysis of Fusion Functions for
  Hybrid Retrieval"). ``alpha`` is chosen on held-out training reviews by ``benchmarks/retrieval.py``
  and stored in the index.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

from imdb_transformer.artifacts import atomic_path, read_artifact, read_folder_record
from imdb_transformer.embedder import DocumentEmbedder, load_embedder
from imdb_transformer.errors import InputError
from imdb_transformer.search.ann import Ann, build_faiss
from imdb_transformer.search.bm25 import BM25Index
from imdb_transformer.search.hits import Hit, hits_of
from imdb_transformer.search.ranking import (
    CANDIDATES,
    Mode,
    candidates,
    check_k,
    check_mode,
    fused_top,
    fusion_rows,
    hybrid_top,
    top_k_rows,
)
from imdb_transformer.search.storage import (
    DEFAULT_ALPHA,
    INDEX_FORMAT,
    REMEDY,
    REVIEW_COLUMNS,
    SearchIndexError,
    Vectors,
    check_alpha,
    check_lexical,
    check_meta,
    check_out_folder,
    check_unique_keys,
    checked_arrays,
    checked_reviews,
    review_table,
    vector_arrays,
    vectors_from_arrays,
)
from imdb_transformer.text.texts import is_blank


class SemanticIndex:
    """Reviews, their embeddings and a BM25 index; ``query(text, k, mode)`` returns the k best.

    Args:
        embedder: What embeds queries (the one that embedded the reviews).
        vectors: Unit vectors (N, C) of the reviews: a tensor, or a ``scipy.sparse`` CSR matrix.
        reviews: Table of ``id``, ``label``, ``text``.
        backbone: Where the embedder's backbone came from, saved so queries can find it.
        adapter: Where its adapter came from, if it has one.
        lexical: The BM25 index of the same reviews (None: dense only).
        alpha: Weight of the dense score in hybrid ranking.
        ann: ``exact`` (default), or approximate with FAISS for indexes that outgrow it: ``hnsw`` (a
            graph; best recall, slow to build) or ``ivf`` (clusters; quick to build at a million).
    """

    def __init__(
        self,
        embedder: DocumentEmbedder,
        vectors: Vectors,
        reviews: pa.Table,
        backbone: str | os.PathLike | None = None,
        adapter: str | os.PathLike | None = None,
        lexical: BM25Index | None = None,
        alpha: float = DEFAULT_ALPHA,
        ann: Ann = "exact",
    ) -> None:
        if vectors.shape[0] != reviews.num_rows:
            raise InputError(f"{vectors.shape[0]} vectors for {reviews.num_rows} reviews")
        check_alpha(alpha)
        missing = [c for c in ("key", "id", "label", "text") if c not in reviews.column_names]
        if missing:
            raise InputError(f"the reviews table lacks columns {missing}; make it with review_table()")
        check_unique_keys(reviews.column("key"))
        self.sparse = sp.issparse(vectors)
        if embedder is not None and (vectors.shape[1] != embedder.dim or self.sparse != embedder.sparse):
            kind = "sparse" if self.sparse else "dense"
            raise InputError(
                f"{kind} vectors of width {vectors.shape[1]} do not fit this embedder's "
                f"{'sparse' if embedder.sparse else 'dense'} vectors of width {embedder.dim}"
            )
        if lexical is not None and lexical.retriever.scores["num_docs"] != vectors.shape[0]:
            raise InputError(
                f"the BM25 index holds {lexical.retriever.scores['num_docs']} reviews, the vectors "
                f"{vectors.shape[0]}: build both from the same reviews"
            )
        if self.sparse and ann != "exact":
            raise InputError(
                f"ann={ann!r} needs dense vectors; an index of sparse vectors is searched exactly through "
                "its inverted index, which stays fast at scale: leave ann at exact"
            )
        self.embedder, self.vectors, self.reviews = embedder, vectors, reviews
        # sparse: the transpose (vocab_size, N) in CSR is an inverted index, one posting list per token
        self._postings = vectors.T.tocsr() if self.sparse else None
        self.backbone = str(backbone) if backbone is not None else None
        self.adapter = str(adapter) if adapter is not None else None
        self.lexical, self.alpha = lexical, alpha
        self._ids = reviews.column("id").to_numpy()
        self.ann = ann
        self._faiss = build_faiss(vectors, ann) if ann != "exact" else None

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @classmethod
    def build(
        cls,
        embedder: DocumentEmbedder,
        texts: list[str],
        ids: list[int] | None = None,
        labels: list[int] | None = None,
        batch_size: int = 64,
        backbone: str | os.PathLike | None = None,
        adapter: str | os.PathLike | None = None,
        progress: bool = True,
        lexical: bool = True,
        alpha: float = DEFAULT_ALPHA,
        keys: list[str] | None = None,
        vectors: torch.Tensor | sp.csr_matrix | None = None,
    ) -> SemanticIndex:
        """Embed ``texts`` (with their review ids, labels and unique keys, if known) into a new index,
        and index their words with BM25 (``lexical``); ``backbone`` and ``adapter`` record where the
        embedder came from, so the saved index can load it again. Without ``keys`` the reviews are
        named by their ids (which must then be unique), or without ids by their row numbers.
        ``vectors``: the texts' vectors by this embedder, computed already (by ``Trainer.predict``)."""
        if not texts:
            raise InputError("cannot build an index of no reviews")
        check_alpha(alpha)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size={batch_size!r}: give a positive number of reviews per pass")
        reviews = review_table(texts, ids, labels, keys)  # before embedding: a bad key fails at once
        if vectors is None:
            vectors = embedder.embed(texts, batch_size=batch_size, progress=progress)
        elif vectors.shape != (len(texts), embedder.dim):
            raise InputError(f"{vectors.shape[0]} vectors of width {vectors.shape[1]} for {len(texts)} texts")
        words = BM25Index.build(texts) if lexical else None
        return cls(embedder, vectors, reviews, backbone, adapter, words, alpha)

    def query(self, text: str, k: int = 5, mode: Mode | None = None) -> list[Hit]:
        """The ``k`` reviews that best match ``text``, best first. ``mode``: ``hybrid`` (the default
        when the index has a lexical part), ``dense`` or ``lexical``."""
        return self.query_many([(text, k, mode)])[0]

    def query_many(self, queries: list[tuple[str, int, Mode | None]]) -> list[list[Hit]]:
        """:meth:`query` for several ``(text, k, mode)`` at once: their texts are embedded together, in
        one pass of the model (what the server's batching relies on)."""
        for text, k, _ in queries:
            if is_blank(text):
                raise InputError("empty query: give some words to search for")
            self._check_k(k)
        modes = [self._mode(mode) for _, _, mode in queries]
        dense = [i for i, mode in enumerate(modes) if mode != "lexical"]
        vectors = self.embedder.embed([queries[i][0] for i in dense], progress=False) if dense else None
        where = {row: n for n, row in enumerate(dense)}
        return [
            self._rank(_row(vectors, where[i]) if i in where else None, text, k, modes[i])
            for i, (text, k, _) in enumerate(queries)
        ]

    def like(self, review: str | int, k: int = 5, mode: Mode | None = None) -> list[Hit]:
        """ "More like this": the ``k`` reviews closest to the index's own ``review`` (itself left out),
        by its stored vector and, for ``lexical``/``hybrid``, its words. ``review`` is a key
        (``test/pos/2221``), or a bare review id that names exactly one review of the index."""
        if not 1 <= k < len(self):
            raise InputError(
                f"k={k} is out of range: the index holds {len(self)} reviews, one of them the review itself, "
                f"so 1 <= k <= {len(self) - 1}"
            )
        row = self.row_of(review)
        text = self.reviews.column("text")[row].as_py()
        hits = self._rank(self.vectors[row], text, k + 1, self._mode(mode), exclude=row)
        return [replace(h, rank=i + 1) for i, h in enumerate(hits[:k])]

    def row_of(self, review: str | int) -> int:
        """The row of the review named by ``review``: its key, or a review id that only it has."""
        name = str(review).strip()
        if isinstance(review, str):
            found = pc.index(self.reviews.column("key"), name).as_py()
            if found >= 0:
                return found
        if not re.fullmatch(r"-?[0-9]+", name):
            example = self.reviews.column("key")[0].as_py()
            raise InputError(
                f"review {name!r} is not in this index: name a review by its key (such as {example!r}, "
                "as search results show them) or by its review id"
            )
        rows = np.flatnonzero(self._ids == int(name))
        if len(rows) == 0:
            raise InputError(
                f"review id {name} is not in this index; its reviews' keys and ids are in its reviews.parquet"
            )
        if len(rows) > 1:
            keys = sorted(self.reviews.column("key").take(pa.array(rows)).to_pylist())
            shown = ", ".join(keys[:10]) + (f" and {len(keys) - 10} more" if len(keys) > 10 else "")
            raise InputError(
                f"review id {name} names {len(rows)} reviews in this index: {shown}; pass one of those keys"
            )
        return int(rows[0])

    def top_k(
        self, vector: torch.Tensor | None, text: str, mode: Mode, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the top ``k`` under ``mode`` (the ranking behind :meth:`query`)."""
        if mode == "dense":
            return self.dense_top_k(vector, k)
        lexical = self.lexical.scores(text)
        if mode == "lexical":
            rows = top_k_rows(lexical, k)
            return rows, lexical[rows]
        if self._faiss is None:  # exact search scores every review once
            return hybrid_top(self.cosines(vector), lexical, self.alpha, k)
        dense_rows, _ = self.dense_top_k(vector, CANDIDATES)  # FAISS proposes; the candidates are scored
        rows = fusion_rows([dense_rows, candidates(lexical, CANDIDATES)], k, len(self))
        return fused_top(rows, self.cosines(vector, rows), lexical[rows], self.alpha, k)

    def _rank(
        self, vector: torch.Tensor | None, text: str, k: int, mode: Mode, exclude: int | None = None
    ) -> list[Hit]:
        rows, scores = self.top_k(vector, text, mode, k + (exclude is not None))
        keep = rows != exclude
        return self._hits(rows[keep][:k], scores[keep][:k], text)

    def dense_top_k(self, vector: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and cosines of the ``k`` vectors nearest unit ``vector`` (exact, or by FAISS)."""
        k = min(k, len(self))
        if self._faiss is not None:
            scores, rows = self._faiss.search(vector.reshape(1, -1).float().numpy(), k)
            return rows[0], scores[0]
        if self.sparse:
            scores = self.cosines(vector)
            rows = top_k_rows(scores, k)
            return rows, scores[rows]
        scores, rows = torch.topk(self.vectors @ vector, k)
        return rows.numpy(), scores.numpy()

    def cosines(self, vector: Vectors, rows: np.ndarray | None = None) -> np.ndarray:
        """Cosine of unit ``vector`` (a (C,) tensor, or a 1-row CSR matrix for sparse indexes) with the
        reviews at ``rows`` (default: every review)."""
        if self.sparse:
            if rows is None:  # through the inverted index: only the query's tokens' posting lists
                return np.asarray(self._postings[vector.indices].T @ vector.data).ravel()
            return (self.vectors[rows] @ vector.T).toarray().ravel()
        if rows is None:
            return (self.vectors @ vector).numpy()
        return (self.vectors[torch.from_numpy(rows)] @ vector).numpy()

    def _hits(self, rows: np.ndarray, scores: np.ndarray, text: str) -> list[Hit]:
        found = self.reviews.take(pa.array(rows.tolist(), pa.int64()))  # only the k rows, never the table
        rarity = self.lexical.document_frequency if self.lexical is not None else None
        return hits_of(found.to_pylist(), scores, text, rarity)

    def _mode(self, mode: Mode | None) -> Mode:
        return check_mode(mode, self.lexical is not None)

    def _check_k(self, k: int) -> None:
        check_k(k, len(self))

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index to ``folder``. An existing folder is replaced (atomically) only if it is an
        index or empty; anything else there, and folders that hold the current folder, the home folder
        or the embedder's files, are refused (see :func:`check_out_folder`)."""
        check_out_folder(folder, {"backbone": self.backbone, "adapter": self.adapter})
        meta = {
            "format": INDEX_FORMAT,
            "count": len(self),
            **self.embedder.settings,
            # relative to the index, so an index moved together with its run keeps finding them
            "backbone": _relative(self.backbone, folder),
            "adapter": _relative(self.adapter, folder),
            "lexical": self.lexical is not None,
            "alpha": float(self.alpha),
        }
        with atomic_path(folder, is_dir=True, overwrite=True) as tmp:
            save_file(vector_arrays(self.vectors), str(tmp / "vectors.safetensors"))
            pq.write_table(self.reviews.select(list(REVIEW_COLUMNS)), tmp / "reviews.parquet")
            if self.lexical is not None:
                self.lexical.save(tmp / "lexical")
            (tmp / "index.json").write_text(json.dumps(meta, indent=2))
        return Path(folder)

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        embedder: DocumentEmbedder | None = None,
        backbone: str | os.PathLike | None = None,
        adapter: str | os.PathLike | None = None,
        ann: Ann = "exact",
    ) -> SemanticIndex:
        """Load an index saved by :meth:`save`. Queries are embedded by ``embedder``, by default one
        built from ``backbone`` (and ``adapter``), by default those the index records (paths relative
        to the index folder); it must be the one that built the index (its fingerprint is checked).

        Every file is checked before it is used: a damaged or crafted one is a :class:`SearchIndexError`
        naming it."""
        folder = Path(folder)
        meta = read_folder_record(
            folder, ("vectors.safetensors", "reviews.parquet", "index.json"), "index.json",
            error=SearchIndexError, kind="an index folder", fix="build one with `imdb-transformer embed`",
            remedy=REMEDY,
        )  # fmt: skip
        check_meta(meta, folder / "index.json")
        recorded = {what: _recorded(meta[what], folder) for what in ("backbone", "adapter")}
        given = {"backbone": backbone, "adapter": adapter}
        backbone, adapter = located(str(folder), given, recorded, check=embedder is None)
        if embedder is None:
            embedder = embedder_for(str(folder), meta, backbone, adapter)
        check_embedder(str(folder), meta, embedder)
        count = meta["count"]
        vectors = read_artifact(
            folder / "vectors.safetensors",
            lambda p: vectors_from_arrays(checked_arrays(load_file(str(p)), p, count, embedder)),
            SearchIndexError,
            REMEDY,
        )
        reviews = read_artifact(folder / "reviews.parquet", pq.read_table, SearchIndexError, REMEDY)
        reviews = checked_reviews(reviews, folder / "reviews.parquet", count)
        lexical = None
        if meta["lexical"]:
            lexical = read_artifact(folder / "lexical", BM25Index.load, SearchIndexError, REMEDY)
            check_lexical(lexical.retriever, folder / "lexical", count)
        return cls(embedder, vectors, reviews, backbone, adapter, lexical, meta["alpha"], ann)


def _row(vectors: Vectors, n: int) -> Vectors:
    """Row ``n`` of ``vectors``: a (C,) tensor, or a 1-row CSR matrix (a CSR matrix of one row is its
    own row, and slicing it would cost as much as ranking)."""
    if sp.issparse(vectors) and vectors.shape[0] == 1:
        return vectors
    return vectors[n]


def _relative(path: str | None, folder: str | os.PathLike) -> str | None:
    return os.path.relpath(Path(path).resolve(), Path(folder).resolve()) if path else None


def _recorded(path: str | None, folder: Path) -> Path | None:
    return folder / path if path else None  # an absolute path stays itself


def located(
    where: str,
    given: dict[str, str | os.PathLike | None],
    recorded: dict[str, str | os.PathLike | None],
    check: bool = True,
) -> tuple[str | os.PathLike | None, str | os.PathLike | None]:
    """The backbone and adapter paths of the index ``where``: each one ``given`` (a caller's), else the
    one ``recorded``. With ``check`` (they are about to be loaded), one that does not exist is refused,
    saying whether it was given or recorded."""
    paths = []
    for what in ("backbone", "adapter"):
        path = given[what] if given[what] is not None else recorded[what]
        if check and path is not None and not Path(path).exists():
            if given[what] is not None:
                raise SearchIndexError(
                    f"the {what} given for {where}, {path}, does not exist: check the path"
                )
            raise SearchIndexError(
                f"the {what} of {where} is not at {path} any more; pass its new place with --{what} "
                f"(SemanticIndex.load(..., {what}=PATH))"
            )
        paths.append(path)
    return paths[0], paths[1]


def embedder_for(
    where: str, meta: dict, backbone: str | os.PathLike | None, adapter: str | os.PathLike | None
) -> DocumentEmbedder:
    """The embedder of ``backbone`` and ``adapter`` (paths :func:`located` found) with the pooling,
    length and reading an index's record ``meta`` holds (one without ``windows`` read head and tail);
    ``where`` names the index in errors."""
    if backbone is None:
        raise SearchIndexError(f"{where} does not record its backbone: pass the one that built it")
    pooling = meta["pooling"] if adapter is None else "mean"
    return load_embedder(backbone, adapter, pooling, meta["max_length"], meta.get("windows", False))


def check_embedder(where: str, meta: dict, embedder: DocumentEmbedder) -> None:
    """Refuse an ``embedder`` other than the one whose fingerprint the index's record ``meta`` holds."""
    if meta["embedder"] != embedder.fingerprint:
        raise SearchIndexError(
            f"{where} was built by another backbone, adapter, pooling, length or reading "
            f"({meta['embedder']}) than the one given ({embedder.fingerprint}); query it with the embedder "
            "that built it, or rebuild the index"
        )
