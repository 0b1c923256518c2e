"""SemanticIndex: dense vectors and a BM25 index of the same reviews, ranked alone or fused.

The index is a folder: ``vectors.safetensors`` (N, C) unit vectors (dense, or for a sparse adapter the
arrays of a CSR matrix), ``reviews.parquet`` (id, label,
text), ``lexical/`` (a BM25 index written by ``bm25s``: numpy arrays and JSON, no pickle) and
``index.json`` (what built it: backbone, adapter, fingerprint, the hybrid weight).

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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch
from safetensors.torch import load_file, save_file

from imdb_transformer.artifacts import atomic_path, read_artifact
from imdb_transformer.errors import InputError
from imdb_transformer.models.adapter import load_adapter
from imdb_transformer.models.backbone import load_backbone
from imdb_transformer.models.embedder import DocumentEmbedder

INDEX_FORMAT = "imdb_transformer.index/2"
Mode = Literal["hybrid", "dense", "lexical"]
Ann = Literal["exact", "hnsw", "ivf"]
CANDIDATES = 100  # each ranker's proposals for hybrid fusion
DEFAULT_ALPHA = 0.5  # for the default adapter (configs/embed.yaml), chosen on held-out training reviews


Vectors = torch.Tensor | sp.csr_matrix  # dense (N, C), or sparse CSR (N, vocab_size)


class SearchIndexError(InputError):
    """An index folder that is missing, incomplete, or built by a different embedder."""


@dataclass
class Hit:
    """One search result."""

    rank: int
    score: float
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
        words = [w for w in self.words([text])[0] if w in self.retriever.vocab_dict]
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
        self.sparse = sp.issparse(vectors)
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
    ) -> SemanticIndex:
        """Embed ``texts`` (with their review ids and labels, if known) into a new index, and index their
        words with BM25 (``lexical``); ``backbone`` and ``adapter`` record where the embedder came from,
        so the saved index can load it again."""
        if not texts:
            raise InputError("cannot build an index of no reviews")
        vectors = embedder.embed(texts, batch_size=batch_size, progress=progress)
        reviews = review_table(texts, ids, labels)
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

    def like(self, review_id: int, k: int = 5, mode: Mode | None = None) -> list[Hit]:
        """ "More like this": the ``k`` reviews closest to the index's own review ``review_id`` (itself
        left out), by its stored vector and, for ``lexical``/``hybrid``, its words."""
        self._check_k(k + 1)
        rows = np.flatnonzero(self._ids == review_id)
        if len(rows) == 0:
            raise InputError(f"review id {review_id} is not in this index; ids are in its reviews.parquet")
        row = int(rows[0])
        text = self.reviews.column("text")[row].as_py()
        hits = self._rank(self.vectors[row], text, k + 1, self._mode(mode), exclude=row)
        return [Hit(i + 1, h.score, h.id, h.label, h.snippet) for i, h in enumerate(hits[:k])]

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
            Hit(rank + 1, float(score), review["id"], review["label"], snippet(review["text"]))
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
        """Write the index to ``folder`` (replaced atomically if it exists)."""
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
            "alpha": self.alpha,
        }
        with atomic_path(folder, is_dir=True, overwrite=True) as tmp:
            save_file(_vector_arrays(self.vectors), str(tmp / "vectors.safetensors"))
            pq.write_table(self.reviews, tmp / "reviews.parquet")
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
        to the index folder); it must be the one that built the index (its fingerprint is checked)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise SearchIndexError(
                f"index folder {str(folder)!r} not found: build one with `imdb-transformer embed`"
            )
        names = ("vectors.safetensors", "reviews.parquet", "index.json")
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise SearchIndexError(f"{folder} is not a complete index: {', '.join(missing)} missing")
        remedy = "the index is damaged: build it again with `imdb-transformer embed`"
        meta = read_artifact(
            folder / "index.json", lambda p: json.loads(p.read_text()), SearchIndexError, remedy
        )
        if meta.get("format") not in (INDEX_FORMAT, "imdb_transformer.index/1"):  # /1: dense only
            raise SearchIndexError(
                f"{folder}/index.json has format {meta.get('format')!r}, expected {INDEX_FORMAT!r}"
            )
        backbone = backbone if backbone is not None else _recorded(meta.get("backbone"), folder)
        adapter = adapter if adapter is not None else _recorded(meta.get("adapter"), folder)
        if embedder is None:
            embedder = _embedder(folder, meta, backbone, adapter)
        if meta["embedder"] != embedder.fingerprint:
            raise SearchIndexError(
                f"{folder} was built by another backbone, adapter or pooling ({meta['embedder']}) than the "
                f"one given ({embedder.fingerprint}); query it with the embedder that built it, or rebuild "
                "the index"
            )
        vectors = read_artifact(
            folder / "vectors.safetensors", lambda p: _vectors(load_file(str(p))), SearchIndexError, remedy
        )
        reviews = read_artifact(folder / "reviews.parquet", pq.read_table, SearchIndexError, remedy)
        count = vectors.shape[0]
        if count != reviews.num_rows or count != meta.get("count"):
            raise SearchIndexError(
                f"{folder} holds {count} vectors and {reviews.num_rows} reviews, but index.json says "
                f"{meta.get('count')}; {remedy}"
            )
        lexical = None
        if meta.get("lexical"):
            lexical = read_artifact(folder / "lexical", Lexical.load, SearchIndexError, remedy)
        alpha = meta.get("alpha", DEFAULT_ALPHA)
        return cls(embedder, vectors, reviews, backbone, adapter, lexical, alpha, ann)


def review_table(texts: list[str], ids: list[int] | None = None, labels: list[int] | None = None) -> pa.Table:
    """The index's table of reviews: ``id`` (default: row numbers), ``label`` (default -1) and ``text``."""
    n = len(texts)
    return pa.table(
        {
            "id": pa.array(ids if ids is not None else range(n), pa.int64()),
            "label": pa.array(labels if labels is not None else [-1] * n, pa.int64()),
            "text": pa.array(texts, pa.string()),
        }
    )


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
    """A plain-text table of search results."""
    label = {0: "neg", 1: "pos"}
    rows = [("#", "score", "review id", "label", "review")]
    rows += [(str(h.rank), f"{h.score:.3f}", str(h.id), label.get(h.label, "-"), h.snippet) for h in hits]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
    return "\n".join(lines)
