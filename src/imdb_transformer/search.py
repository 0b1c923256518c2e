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

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

from imdb_transformer.artifacts import atomic_path, read_artifact
from imdb_transformer.data.imdb import LABEL_FOLDERS
from imdb_transformer.errors import InputError
from imdb_transformer.models.adapter import load_adapter
from imdb_transformer.models.backbone import load_backbone
from imdb_transformer.models.embedder import DocumentEmbedder
from imdb_transformer.models.pooling import Pooling

INDEX_FORMAT = "imdb_transformer.index/3"
INDEX_FORMATS = "imdb_transformer.index/"  # the prefix every version of this project's index format has
Mode = Literal["hybrid", "dense", "lexical"]
Ann = Literal["exact", "hnsw", "ivf"]
CANDIDATES = 100  # each ranker's proposals for hybrid fusion
DEFAULT_ALPHA = 0.5  # for the default adapter (configs/embed.yaml), chosen on held-out training reviews


Vectors = torch.Tensor | sp.csr_matrix  # dense (N, C), or sparse CSR (N, vocab_size)


class SearchIndexError(InputError):
    """An index folder that is missing, incomplete, damaged, or built by a different embedder."""


@dataclass
class Hit:
    """One search result: ``key`` names the review uniquely (``test/pos/2221``); ``id`` is the dataset's
    review id, which repeats across labels and splits."""

    rank: int
    score: float
    key: str
    id: int
    label: int
    snippet: str


def snippet(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 1].rsplit(" ", 1)[0] + "…"


class Lexical:
    """BM25 over the reviews' words (``bm25s``: sparse matrices in numpy, fast and small).

    Words are lower-cased runs of two or more letters or digits; English stop words are dropped.
    """

    def __init__(self, retriever) -> None:  # a bm25s.BM25
        self.retriever = retriever

    @staticmethod
    def words(texts: list[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)

    @classmethod
    def build(cls, texts: list[str]) -> Lexical:
        import bm25s

        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
        return cls(retriever)

    def scores(self, text: str) -> np.ndarray:
        """BM25 score of every review for ``text`` (N,); zero where no word matches."""
        vocab, stored = self.retriever.vocab_dict, len(self.retriever.scores["indptr"]) - 1
        # bm25s numbers the empty word past the stored words (it has no scores): only stored words count
        words = [w for w in self.words([text])[0] if vocab.get(w, stored) < stored]
        if not words:
            return np.zeros(self.retriever.scores["num_docs"], dtype=np.float32)
        return self.retriever.get_scores(words)

    def save(self, folder: Path) -> None:
        self.retriever.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path) -> Lexical:
        import bm25s

        return cls(bm25s.BM25.load(str(folder), mmap=False, show_progress=False))


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
        lexical: Lexical | None = None,
        alpha: float = DEFAULT_ALPHA,
        ann: Ann = "exact",
    ) -> None:
        if vectors.shape[0] != reviews.num_rows:
            raise InputError(f"{vectors.shape[0]} vectors for {reviews.num_rows} reviews")
        check_alpha(alpha)
        missing = [c for c in ("key", "id", "label", "text") if c not in reviews.column_names]
        if missing:
            raise InputError(f"the reviews table lacks columns {missing}; make it with review_table()")
        _check_unique_keys(reviews.column("key"))
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
    ) -> SemanticIndex:
        """Embed ``texts`` (with their review ids, labels and unique keys, if known) into a new index,
        and index their words with BM25 (``lexical``); ``backbone`` and ``adapter`` record where the
        embedder came from, so the saved index can load it again. Without ``keys`` the reviews are
        named by their ids (which must then be unique), or without ids by their row numbers."""
        if not texts:
            raise InputError("cannot build an index of no reviews")
        check_alpha(alpha)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size={batch_size!r}: give a positive number of reviews per pass")
        reviews = review_table(texts, ids, labels, keys)  # before embedding: a bad key fails at once
        vectors = embedder.embed(texts, batch_size=batch_size, progress=progress)
        words = Lexical.build(texts) if lexical else None
        return cls(embedder, vectors, reviews, backbone, adapter, words, alpha)

    def query(self, text: str, k: int = 5, mode: Mode | None = None) -> list[Hit]:
        """The ``k`` reviews that best match ``text``, best first. ``mode``: ``hybrid`` (the default
        when the index has a lexical part), ``dense`` or ``lexical``."""
        return self.query_many([(text, k, mode)])[0]

    def query_many(self, queries: list[tuple[str, int, Mode | None]]) -> list[list[Hit]]:
        """:meth:`query` for several ``(text, k, mode)`` at once: their texts are embedded together, in
        one pass of the model (what the server's batching relies on)."""
        for text, k, _ in queries:
            if not text or not text.strip():
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
            found = pc.index(self.reviews.column("key"), review).as_py()
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

    def nearest(self, vector: torch.Tensor, k: int) -> list[Hit]:
        """The ``k`` reviews whose embeddings have the highest cosine with unit ``vector``, best first."""
        rows, scores = self.dense_top(vector, k)
        return self._hits(rows, scores)

    def scores(
        self, vector: torch.Tensor | None, text: str, mode: Mode, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and scores of the top ``k`` under ``mode`` (the ranking behind :meth:`query`)."""
        if mode == "dense":
            return self.dense_top(vector, k)
        lexical = self.lexical.scores(text)
        if mode == "lexical":
            rows = top_rows(lexical, k)
            return rows, lexical[rows]
        every = None  # exact search scores every review once; the candidates' cosines are read from it
        if self._faiss is None:
            every = self.cosines(vector)
            dense_rows = candidates(every, CANDIDATES)
        else:
            dense_rows, _ = self.dense_top(vector, CANDIDATES)
        rows = np.union1d(dense_rows, candidates(lexical, CANDIDATES))
        if len(rows) < k:  # fewer reviews than asked for share anything with the query; the rest score 0
            rows = np.union1d(rows, np.setdiff1d(np.arange(len(self)), rows)[: k - len(rows)])
        dense = every[rows] if every is not None else self.cosines(vector, rows)
        fused = self.alpha * minmax(dense) + (1 - self.alpha) * minmax(lexical[rows])
        order = np.argsort(-fused, kind="stable")[:k]
        return rows[order], fused[order]

    def _rank(
        self, vector: torch.Tensor | None, text: str, k: int, mode: Mode, exclude: int | None = None
    ) -> list[Hit]:
        rows, scores = self.scores(vector, text, mode, k + (exclude is not None))
        keep = rows != exclude
        return self._hits(rows[keep][:k], scores[keep][:k])

    def dense_top(self, vector: torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows and cosines of the ``k`` vectors nearest unit ``vector`` (exact, or by FAISS)."""
        k = min(k, len(self))
        if self._faiss is not None:
            scores, rows = self._faiss.search(vector.reshape(1, -1).float().numpy(), k)
            return rows[0], scores[0]
        if self.sparse:
            scores = self.cosines(vector)
            rows = top_rows(scores, k)
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

    def _hits(self, rows: np.ndarray, scores: np.ndarray) -> list[Hit]:
        found = self.reviews.take(pa.array(rows.tolist(), pa.int64()))  # only the k rows, never the table
        return [
            Hit(rank + 1, float(score), review["key"], review["id"], review["label"], snippet(review["text"]))
            for rank, (score, review) in enumerate(zip(scores.tolist(), found.to_pylist(), strict=True))
        ]

    def _mode(self, mode: Mode | None) -> Mode:
        if mode is None:
            return "hybrid" if self.lexical is not None else "dense"
        if mode not in ("hybrid", "dense", "lexical"):
            raise InputError(f"unknown mode {mode!r}; expected hybrid, dense or lexical")
        if mode != "dense" and self.lexical is None:
            raise InputError(f"this index has no lexical part, so mode {mode!r} cannot run; use dense")
        return mode

    def _check_k(self, k: int) -> None:
        if not 1 <= k <= len(self):
            raise InputError(
                f"k={k} is out of range: the index holds {len(self)} reviews, so 1 <= k <= {len(self)}"
            )

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index to ``folder``. An existing folder is replaced (atomically) only if it is an
        index or empty; anything else there, and folders that hold the current folder, the home folder
        or the embedder's files, are refused (see :func:`check_out_folder`)."""
        check_out_folder(folder, {"backbone": self.backbone, "adapter": self.adapter})
        meta = {
            "format": INDEX_FORMAT,
            "count": len(self),
            "embedder": self.embedder.fingerprint,
            # relative to the index, so an index moved together with its run keeps finding them
            "backbone": _relative(self.backbone, folder),
            "adapter": _relative(self.adapter, folder),
            "pooling": self.embedder.pooling,
            "max_length": self.embedder.max_length,
            "lexical": self.lexical is not None,
            "alpha": float(self.alpha),
        }
        with atomic_path(folder, is_dir=True, overwrite=True) as tmp:
            save_file(_vector_arrays(self.vectors), str(tmp / "vectors.safetensors"))
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
        if not folder.is_dir():
            raise SearchIndexError(
                f"index folder {str(folder)!r} not found: build one with `imdb-transformer embed`"
            )
        names = ("vectors.safetensors", "reviews.parquet", "index.json")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise SearchIndexError(f"{folder} is not a complete index: {', '.join(missing)} missing")
        meta = read_artifact(
            folder / "index.json", lambda p: json.loads(p.read_text()), SearchIndexError, REMEDY
        )
        _check_meta(meta, folder / "index.json")
        backbone = backbone if backbone is not None else _recorded(meta["backbone"], folder)
        adapter = adapter if adapter is not None else _recorded(meta["adapter"], folder)
        if embedder is None:
            embedder = _embedder(folder, meta, backbone, adapter)
        if meta["embedder"] != embedder.fingerprint:
            raise SearchIndexError(
                f"{folder} was built by another backbone, adapter or pooling ({meta['embedder']}) than the "
                f"one given ({embedder.fingerprint}); query it with the embedder that built it, or rebuild "
                "the index"
            )
        count = meta["count"]
        vectors = read_artifact(
            folder / "vectors.safetensors",
            lambda p: _vectors(_checked_arrays(load_file(str(p)), p, count, embedder)),
            SearchIndexError,
            REMEDY,
        )
        reviews = read_artifact(folder / "reviews.parquet", pq.read_table, SearchIndexError, REMEDY)
        reviews = _checked_reviews(reviews, folder / "reviews.parquet", count)
        lexical = None
        if meta["lexical"]:
            lexical = read_artifact(folder / "lexical", Lexical.load, SearchIndexError, REMEDY)
            _check_lexical(lexical.retriever, folder / "lexical", count)
        return cls(embedder, vectors, reviews, backbone, adapter, lexical, meta["alpha"], ann)


REVIEW_COLUMNS = {"key": pa.types.is_string, "id": pa.types.is_integer, "label": pa.types.is_integer}
REVIEW_COLUMNS["text"] = pa.types.is_string
REMEDY = "the index is damaged: build it again with `imdb-transformer embed`"
INDEX_ENTRIES = ("index.json", "vectors.safetensors", "reviews.parquet", "lexical")


def review_table(
    texts: list[str],
    ids: list[int] | None = None,
    labels: list[int] | None = None,
    keys: list[str] | None = None,
) -> pa.Table:
    """The index's table of reviews: ``key`` (unique), ``id`` (default: row numbers), ``label`` (default
    -1) and ``text``. Without ``keys``, a review is named as the archive's label folders name it
    (``pos/2221``: an IMDB id repeats across labels) where ids and labels are given, by its id where
    only ids are, else by its row number."""
    n = len(texts)
    for name, values in (("ids", ids), ("labels", labels), ("keys", keys)):
        if values is not None and len(values) != n:
            raise InputError(f"{len(values)} {name} for {n} texts: give one per text")
    if keys is None and ids is not None and labels is not None:
        keys = [f"{LABEL_FOLDERS.get(lab, lab)}/{i}" for lab, i in zip(labels, ids, strict=True)]
    elif keys is None:
        keys = [str(i) for i in (ids if ids is not None else range(n))]
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "id": pa.array(ids if ids is not None else range(n), pa.int64()),
            "label": pa.array(labels if labels is not None else [-1] * n, pa.int64()),
            "text": pa.array(texts, pa.string()),
        }
    )
    if table.column("key").null_count:
        raise InputError("every review needs a key; some are None")
    _check_unique_keys(table.column("key"))
    return table


def check_alpha(alpha: object) -> None:
    """Refuse a hybrid weight that is not a number in [0, 1] (NaN included)."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise InputError(
            f"alpha={alpha!r}: the weight of the dense score in hybrid search is a number in [0, 1] "
            f"(1: dense only, 0: BM25 only; default {DEFAULT_ALPHA})"
        )


def _check_unique_keys(keys: pa.ChunkedArray) -> None:
    if pc.count_distinct(keys).as_py() == len(keys):
        return
    counts = pc.value_counts(keys)
    repeated = [c["values"] for c in counts.to_pylist() if c["counts"] > 1]
    shown = ", ".join(map(repr, repeated[:5])) + (
        f" and {len(repeated) - 5} more" if len(repeated) > 5 else ""
    )
    raise InputError(
        f"review keys must name one review each, but {shown} name several; give every review its own key "
        "(review ids repeat across labels and splits: keys such as 'test/pos/2221' do not)"
    )


def check_out_folder(
    folder: str | os.PathLike, keep: dict[str, str | os.PathLike | None] | None = None
) -> Path:
    """Refuse ``folder`` as the place to write an index unless writing there loses nothing: a folder
    that does not exist yet, an empty one, or an index of this project (nothing in it but an index's
    files). A file, a symbolic link, the root, home or current folder, and any folder that holds one of
    them or one of the ``keep`` paths (the data and models an index is built from) are refused.
    Returns the folder's resolved path."""
    given = Path(folder).expanduser()
    fix = "choose a new folder for the index (--out), or remove that one yourself if you mean to replace it"
    if given.is_symlink():
        raise InputError(f"{str(given)!r} is a symbolic link; give the index's own folder: {fix}")
    path = given.resolve()
    if path.exists() and not path.is_dir():
        raise InputError(f"{str(given)!r} is a file, and an index is a folder: {fix}")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{str(given)!r} cannot be made: {parent} is a file, not a folder; {fix}")
            break
    guarded = {"the root folder": Path("/"), "the current folder": Path.cwd()}
    with contextlib.suppress(RuntimeError):  # no home folder known: nothing to guard there
        guarded["your home folder"] = Path.home()
    guarded.update({f"the {name}": Path(p).expanduser() for name, p in (keep or {}).items() if p is not None})
    for what, guarded_path in guarded.items():
        guarded_path = guarded_path.resolve()
        if path == guarded_path or path in guarded_path.parents:
            where = "is" if path == guarded_path else "holds"
            raise InputError(
                f"{str(given)!r} {where} {what} ({guarded_path}); writing an index there would replace "
                f"it: {fix}"
            )
    if path.is_dir():
        problem = _not_an_index(path)
        if problem:
            raise InputError(f"{str(given)!r} {problem}, and only an index is replaced by a new one: {fix}")
    return path


def _not_an_index(folder: Path) -> str | None:
    """Why ``folder`` is neither empty nor one of this project's indexes (None: it is one of those)."""
    entries = sorted(p.name for p in folder.iterdir())
    if not entries:
        return None
    try:
        meta = json.loads((folder / "index.json").read_text())
        is_index = isinstance(meta, dict) and str(meta.get("format", "")).startswith(INDEX_FORMATS)
    except (OSError, ValueError):
        is_index = False
    if not is_index:
        return f"is a folder that is not a search index (it holds {_listing(entries)})"
    foreign = [name for name in entries if name not in INDEX_ENTRIES]
    lexical = folder / "lexical"
    if lexical.is_dir():
        foreign += [
            f"lexical/{p.name}"
            for p in sorted(lexical.iterdir())
            if not (p.is_file() and p.name.endswith((".index.json", ".index.npy")))
        ]
    elif lexical.exists():
        foreign.append("lexical")
    if foreign:
        return f"is an index that also holds files of another kind ({_listing(foreign)})"
    return None


def _listing(names: list[str], most: int = 5) -> str:
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _check_meta(meta: object, path: Path) -> None:
    """Refuse an ``index.json`` that is not an object with every field of the right type."""
    if not isinstance(meta, dict):
        raise SearchIndexError(f"{path} holds {type(meta).__name__}, not an object; {REMEDY}")
    found = meta.get("format")
    if found != INDEX_FORMAT:
        if isinstance(found, str) and found.startswith(INDEX_FORMATS):
            raise SearchIndexError(
                f"{path} is of format {found!r}, made by an earlier version; this one reads {INDEX_FORMAT!r} "
                "(reviews named by unique keys): rebuild the index with `imdb-transformer embed`"
            )
        raise SearchIndexError(
            f"{path} has format {found!r}, not {INDEX_FORMAT!r}: not an index of imdb-transformer; "
            "build one with `imdb-transformer embed`"
        )

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    def is_number(v: object) -> bool:
        return (is_int(v) or isinstance(v, float)) and math.isfinite(v)

    poolings = (*get_args(Pooling), "adapter")
    fields = {
        "count": (lambda v: is_int(v) and v >= 1, "a positive integer"),
        "embedder": (lambda v: isinstance(v, str), "a string"),
        "backbone": (lambda v: v is None or isinstance(v, str), "a path or null"),
        "adapter": (lambda v: v is None or isinstance(v, str), "a path or null"),
        "pooling": (lambda v: isinstance(v, str) and v in poolings, f"one of {', '.join(poolings)}"),
        "max_length": (lambda v: is_int(v) and v >= 1, "a positive integer"),
        "lexical": (lambda v: isinstance(v, bool), "true or false"),
        "alpha": (lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    }
    for name, (valid, expected) in fields.items():
        if name not in meta:
            raise SearchIndexError(f"{path} lacks the field {name!r}; {REMEDY}")
        if not valid(meta[name]):
            raise SearchIndexError(f"{path}: {name} is {meta[name]!r}, not {expected}; {REMEDY}")


def _checked_arrays(
    arrays: dict[str, torch.Tensor], path: Path, count: int, embedder: DocumentEmbedder
) -> dict[str, torch.Tensor]:
    """``arrays`` of ``vectors.safetensors``, once every one is known to be what :meth:`save` writes:
    dense vectors (count, dim), or a CSR matrix (count, dim) whose index arrays stay in bounds (scipy
    trusts them: one index past the end reads or writes memory it does not own)."""
    dense, sparse = {"vectors"}, {"data", "indices", "indptr", "shape"}
    if set(arrays) not in (dense, sparse):
        raise ValueError(
            f"holds tensors {sorted(arrays)}; expected 'vectors', or 'data', 'indices', 'indptr' and 'shape'"
        )

    def expect(name: str, dtype: torch.dtype, rank: int) -> np.ndarray:
        t = arrays[name]
        if t.dtype != dtype or t.dim() != rank:
            raise ValueError(f"{name!r} is a {t.dim()}-D {t.dtype} tensor; expected {rank}-D {dtype}")
        return t.numpy()

    kind = "sparse" if embedder.sparse else "dense"
    if set(arrays) == dense:
        vectors = expect("vectors", torch.float32, 2)
        if embedder.sparse:
            raise ValueError(f"holds dense vectors, but its embedder makes {kind} ones")
        if vectors.shape[0] != count:
            raise ValueError(f"'vectors' holds {vectors.shape[0]} rows, but index.json says count {count}")
        if vectors.shape[1] != embedder.dim:
            raise ValueError(
                f"'vectors' is {vectors.shape[1]} wide; the embedder's vectors are {embedder.dim}"
            )
        if not np.isfinite(vectors).all():
            raise ValueError("'vectors' holds NaN or infinite values")
        return arrays
    if not embedder.sparse:
        raise ValueError(f"holds sparse vectors, but its embedder makes {kind} ones")
    shape = expect("shape", torch.int64, 1)
    if len(shape) == 2 and shape[0] != count:
        raise ValueError(f"'shape' says {shape[0]} rows, but index.json says count {count}")
    if shape.tolist() != [count, embedder.dim]:
        raise ValueError(f"'shape' is {shape.tolist()}; expected [{count}, {embedder.dim}]")
    data, indices = expect("data", torch.float32, 1), expect("indices", torch.int64, 1)
    _check_compressed(expect("indptr", torch.int64, 1), indices, data, count, embedder.dim, "rows")
    return arrays


def _check_compressed(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, n_major: int, n_minor: int, major: str
) -> None:
    """The invariants of a CSR (or CSC) matrix of ``n_major`` rows (columns) by ``n_minor``: ``indptr``
    has n_major + 1 entries from 0 up to the number of stored values, never decreasing; ``indices``
    are in [0, n_minor); ``data`` is finite. Raises ValueError naming the first that fails."""
    if len(indptr) != n_major + 1:
        raise ValueError(f"'indptr' has {len(indptr)} entries; {n_major} {major} need {n_major + 1}")
    if len(indices) != len(data):
        raise ValueError(f"'indices' has {len(indices)} entries and 'data' {len(data)}; they must match")
    if indptr[0] != 0 or indptr[-1] != len(indices):
        raise ValueError(f"'indptr' runs from {indptr[0]} to {indptr[-1]}; expected 0 to {len(indices)}")
    if (np.diff(indptr) < 0).any():
        raise ValueError("'indptr' decreases somewhere; it must never decrease")
    if len(indices) and (indices.min() < 0 or indices.max() >= n_minor):
        raise ValueError(
            f"'indices' runs from {indices.min()} to {indices.max()}; expected 0 to {n_minor - 1}"
        )
    if not np.isfinite(data).all():
        raise ValueError("'data' holds NaN or infinite values")


def _checked_reviews(table: pa.Table, path: Path, count: int) -> pa.Table:
    """The four columns of ``reviews.parquet``, once they have the right types, no nulls, ``count``
    rows and unique keys."""
    for name, is_type in REVIEW_COLUMNS.items():
        if name not in table.column_names:
            raise SearchIndexError(
                f"{path} lacks the column {name!r} (it has {', '.join(table.column_names) or 'none'}); "
                f"{REMEDY}"
            )
        column = table.column(name)
        if not is_type(column.type) and not (
            name in ("key", "text") and pa.types.is_large_string(column.type)
        ):
            raise SearchIndexError(f"{path}: column {name!r} is of type {column.type}; {REMEDY}")
        if column.null_count:
            raise SearchIndexError(f"{path}: column {name!r} has {column.null_count} nulls; {REMEDY}")
    if table.num_rows != count:
        raise SearchIndexError(
            f"{path} holds {table.num_rows} reviews, but index.json says {count}; {REMEDY}"
        )
    try:
        _check_unique_keys(table.column("key"))
    except InputError as err:
        raise SearchIndexError(f"{path}: {err}; {REMEDY}") from None
    return table.select(list(REVIEW_COLUMNS))


def _check_lexical(retriever, path: Path, count: int) -> None:  # retriever: a bm25s.BM25
    """The BM25 index as ``bm25s`` loaded it, once its arrays are a CSC matrix of (documents, words)
    over ``count`` documents and its vocabulary points inside it (bm25s indexes with them unchecked)."""
    scores = retriever.scores
    try:
        num_docs = scores.get("num_docs")
        if isinstance(num_docs, bool) or not isinstance(num_docs, int) or num_docs != count:
            raise ValueError(f"params.index.json: num_docs is {num_docs!r}; the index holds {count} reviews")
        arrays = {}
        for name, kind in (("data", "f"), ("indices", "iu"), ("indptr", "iu")):
            a = scores.get(name)
            if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in kind:
                what = f"a {a.ndim}-D {a.dtype} array" if isinstance(a, np.ndarray) else type(a).__name__
                raise ValueError(f"{name}.csc.index.npy holds {what}; expected a 1-D {kind} array")
            arrays[name] = a
        words = len(arrays["indptr"]) - 1
        if words < 0:
            raise ValueError("indptr.csc.index.npy is empty")
        try:
            _check_compressed(arrays["indptr"], arrays["indices"], arrays["data"], words, count, "words")
        except ValueError as err:
            raise ValueError(f"its arrays (*.csc.index.npy): {err}") from None
        vocab = retriever.vocab_dict
        # ids run over the stored words, and bm25s gives the empty word the one past them
        if not isinstance(vocab, dict) or not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= words for i in vocab.values()
        ):
            raise ValueError(f"vocab.index.json must map words to ids in [0, {words}]")
        for name in ("dtype", "int_dtype"):
            np.dtype(getattr(retriever, name))  # a dtype that numpy does not know is refused here
        if np.dtype(retriever.dtype).kind != "f" or np.dtype(retriever.int_dtype).kind not in "iu":
            raise ValueError(
                f"params.index.json: dtypes {retriever.dtype}, {retriever.int_dtype} are unusable"
            )
        if retriever.nonoccurrence_array is not None:
            raise ValueError(f"params.index.json: method {retriever.method!r} is not what embed builds")
    except (ValueError, TypeError) as err:
        raise SearchIndexError(f"{path}: {err}; {REMEDY}") from None


def _row(vectors: Vectors, n: int) -> Vectors:
    """Row ``n`` of ``vectors``: a (C,) tensor, or a 1-row CSR matrix (a CSR matrix of one row is its
    own row, and slicing it would cost as much as ranking)."""
    if sp.issparse(vectors) and vectors.shape[0] == 1:
        return vectors
    return vectors[n]


def top_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` highest ``scores``, best first, without sorting all of them."""
    k = min(k, len(scores))
    rows = candidates(scores, k)  # sparse and BM25 scores are mostly 0: select among the rest
    if len(rows) < k or scores[rows].min() <= 0:  # then zeros or negatives may belong in the top k
        rows = np.argpartition(-scores, k - 1)[:k]
    return rows[np.argsort(-scores[rows], kind="stable")]


def candidates(scores: np.ndarray, count: int) -> np.ndarray:
    """Rows of the ``count`` highest non-zero ``scores``, in no particular order (what fusion starts
    from). A review with score 0 shares no word (BM25) or no token (a sparse vector) with the query,
    and is no candidate; leaving the zeros out also keeps the selection off their long ties."""
    rows = np.flatnonzero(scores != 0)  # through a boolean mask: np.flatnonzero of floats is slower
    if count >= len(rows):
        return rows
    return rows[np.argpartition(scores[rows], len(rows) - count)[-count:]]


def minmax(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to [0, 1] (all zeros when it is constant)."""
    low, span = x.min(), x.max() - x.min()
    return (x - low) / span if span > 0 else np.zeros_like(x)


def build_faiss(vectors: torch.Tensor, ann: Ann, neighbours: int = 32, probes: int = 16):
    """A FAISS index over unit ``vectors`` by inner product (= cosine): an HNSW graph (``neighbours``
    links a node, searched with ``efSearch`` 128) or IVF (sqrt(4N) clusters, ``probes`` searched).
    Needs the ``faiss`` extra (faiss-cpu)."""
    try:
        import faiss
    except ImportError as err:
        raise InputError(
            "approximate search needs FAISS: pip install -e '.[faiss]' (faiss-cpu), or use exact search"
        ) from err
    data = vectors.float().contiguous().numpy()
    dim = data.shape[1]
    if ann == "hnsw":
        index = faiss.IndexHNSWFlat(dim, neighbours, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.add(data)
        index.hnsw.efSearch = 128
        return index
    if ann != "ivf":
        raise InputError(f"unknown ann {ann!r}; expected exact, hnsw or ivf")
    lists = max(1, int(2 * len(data) ** 0.5))
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
    sample = data[np.random.default_rng(0).permutation(len(data))[: 64 * lists]]
    index.train(sample)
    index.add(data)
    index.nprobe = probes
    return index


def _vector_arrays(vectors: Vectors) -> dict[str, torch.Tensor]:
    """The tensors ``vectors.safetensors`` holds: ``vectors``, or a CSR matrix's three arrays and shape."""
    if not sp.issparse(vectors):
        return {"vectors": vectors.contiguous()}
    return {
        "data": torch.from_numpy(vectors.data.astype(np.float32)),
        "indices": torch.from_numpy(vectors.indices.astype(np.int64)),
        "indptr": torch.from_numpy(vectors.indptr.astype(np.int64)),
        "shape": torch.tensor(vectors.shape, dtype=torch.int64),
    }


def _vectors(arrays: dict[str, torch.Tensor]) -> Vectors:
    if "vectors" in arrays:
        return arrays["vectors"]
    matrix = (arrays["data"].numpy(), arrays["indices"].numpy(), arrays["indptr"].numpy())
    return sp.csr_matrix(matrix, shape=tuple(arrays["shape"].tolist()))


def _relative(path: str | None, folder: str | os.PathLike) -> str | None:
    return os.path.relpath(Path(path).resolve(), Path(folder).resolve()) if path else None


def _recorded(path: str | None, folder: Path) -> Path | None:
    return folder / path if path else None  # an absolute path stays itself


def _embedder(folder: Path, meta: dict, backbone: Path | None, adapter: Path | None) -> DocumentEmbedder:
    if backbone is None:
        raise SearchIndexError(f"{folder} does not record its backbone: pass the one that built it")
    for what, path in (("backbone", backbone), ("adapter", adapter)):
        if path is not None and not Path(path).exists():
            raise SearchIndexError(
                f"the {what} of {folder} is not at {path} (recorded relative to the index) any more; pass "
                f"its new place with --{what} (SemanticIndex.load(..., {what}=PATH))"
            )
    loaded = load_backbone(backbone)
    head = load_adapter(adapter, loaded) if adapter is not None else None
    pooling = meta["pooling"] if head is None else "mean"
    return DocumentEmbedder(loaded, pooling=pooling, max_length=meta["max_length"], head=head)


def format_hits(hits: list[Hit]) -> str:
    """A plain-text table of search results; each review is named by its key (``test/pos/2221``), which
    ``search --like`` takes."""
    label = {0: "neg", 1: "pos"}
    rows = [("#", "score", "review key", "label", "review")]
    rows += [(str(h.rank), f"{h.score:.3f}", h.key, label.get(h.label, "-"), h.snippet) for h in hits]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
    return "\n".join(lines)
