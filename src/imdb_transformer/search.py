"""SemanticIndex: exact cosine search over review embeddings, saved as plain files.

The index is a folder: ``vectors.safetensors`` (N, C) unit vectors, ``reviews.parquet`` (id, label,
text) and ``index.json`` (what built it). Search is one matrix product over all N vectors: exact,
and a few milliseconds at IMDB's size, with no server and nothing to tune.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import load_file, save_file

from imdb_transformer.artifacts import atomic_path, read_artifact
from imdb_transformer.errors import InputError
from imdb_transformer.models.backbone import load_backbone
from imdb_transformer.models.embedder import DocumentEmbedder

INDEX_FORMAT = "imdb_transformer.index/1"


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


class SemanticIndex:
    """Reviews and their embeddings; ``query(text, k)`` returns the k most similar by cosine."""

    def __init__(
        self,
        embedder: DocumentEmbedder,
        vectors: torch.Tensor,
        reviews: pa.Table,
        backbone: str | None = None,
    ) -> None:
        if len(vectors) != reviews.num_rows:
            raise InputError(f"{len(vectors)} vectors for {reviews.num_rows} reviews")
        self.embedder, self.vectors, self.reviews = embedder, vectors, reviews
        self.backbone = backbone  # where the embedder's weights came from, saved so queries can find them

    def __len__(self) -> int:
        return len(self.vectors)

    @classmethod
    def build(
        cls,
        embedder: DocumentEmbedder,
        texts: list[str],
        ids: list[int] | None = None,
        labels: list[int] | None = None,
        batch_size: int = 64,
        backbone: str | None = None,
        progress: bool = True,
    ) -> SemanticIndex:
        """Embed ``texts`` (with their review ids and labels, if known) into a new index; ``backbone``
        records where the embedder's weights came from, so the saved index can load them again."""
        if not texts:
            raise InputError("cannot build an index of no reviews")
        vectors = embedder.embed(texts, batch_size=batch_size, progress=progress)
        reviews = pa.table(
            {
                "id": pa.array(ids if ids is not None else range(len(texts)), pa.int64()),
                "label": pa.array(labels if labels is not None else [-1] * len(texts), pa.int64()),
                "text": pa.array(texts, pa.string()),
            }
        )
        return cls(embedder, vectors, reviews, backbone)

    def query(self, text: str, k: int = 5) -> list[Hit]:
        """The ``k`` reviews most similar to ``text``, best first."""
        if not text or not text.strip():
            raise InputError("empty query: give some words to search for")
        if not 1 <= k <= len(self):
            raise InputError(
                f"k={k} is out of range: the index holds {len(self)} reviews, so 1 <= k <= {len(self)}"
            )
        return self.nearest(self.embedder.embed([text], progress=False)[0], k)

    def nearest(self, vector: torch.Tensor, k: int) -> list[Hit]:
        """The ``k`` reviews whose embeddings have the highest cosine with unit ``vector``, best first."""
        scores, rows = torch.topk(self.vectors @ vector, k)
        found = self.reviews.take(pa.array(rows.tolist()))  # only the k rows, never the whole table
        return [
            Hit(rank + 1, score, review["id"], review["label"], snippet(review["text"]))
            for rank, (score, review) in enumerate(zip(scores.tolist(), found.to_pylist(), strict=True))
        ]

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index to ``folder`` (replaced atomically if it exists)."""
        meta = {
            "format": INDEX_FORMAT,
            "count": len(self),
            "embedder": self.embedder.fingerprint,
            # relative to the index, so an index moved together with its run keeps finding it
            "backbone": os.path.relpath(Path(self.backbone).resolve(), Path(folder).resolve())
            if self.backbone
            else None,
            "pooling": self.embedder.pooling,
            "max_length": self.embedder.max_length,
        }
        with atomic_path(folder, is_dir=True, overwrite=True) as tmp:
            save_file({"vectors": self.vectors.contiguous()}, str(tmp / "vectors.safetensors"))
            pq.write_table(self.reviews, tmp / "reviews.parquet")
            (tmp / "index.json").write_text(json.dumps(meta, indent=2))
        return Path(folder)

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        embedder: DocumentEmbedder | None = None,
        backbone: str | os.PathLike | None = None,
    ) -> SemanticIndex:
        """Load an index saved by :meth:`save`. Queries are embedded by ``embedder``, by default one
        built from ``backbone``, by default the backbone the index records (a path relative to the
        index folder); it must be the one that built the index (its fingerprint is checked)."""
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
        if meta.get("format") != INDEX_FORMAT:
            raise SearchIndexError(
                f"{folder}/index.json has format {meta.get('format')!r}, expected {INDEX_FORMAT!r}"
            )
        if backbone is None and meta.get("backbone"):
            backbone = folder / meta["backbone"]
        if embedder is None:
            if backbone is None:
                raise SearchIndexError(f"{folder} does not record its backbone: pass the one that built it")
            if not Path(backbone).exists():
                raise SearchIndexError(
                    f"the backbone of {folder} is not at {backbone} (recorded relative to the index) any "
                    "more; pass its new place with --backbone (SemanticIndex.load(..., backbone=PATH))"
                )
            embedder = DocumentEmbedder(
                load_backbone(backbone), pooling=meta["pooling"], max_length=meta["max_length"]
            )
        if meta["embedder"] != embedder.fingerprint:
            raise SearchIndexError(
                f"{folder} was built by another backbone or pooling ({meta['embedder']}) than the one given "
                f"({embedder.fingerprint}); query it with the backbone that built it, or rebuild the index"
            )
        vectors = read_artifact(
            folder / "vectors.safetensors", lambda p: load_file(str(p))["vectors"], SearchIndexError, remedy
        )
        reviews = read_artifact(folder / "reviews.parquet", pq.read_table, SearchIndexError, remedy)
        if len(vectors) != reviews.num_rows or len(vectors) != meta.get("count"):
            raise SearchIndexError(
                f"{folder} holds {len(vectors)} vectors and {reviews.num_rows} reviews, but index.json says "
                f"{meta.get('count')}; {remedy}"
            )
        return cls(embedder, vectors, reviews, str(backbone) if backbone is not None else None)


def format_hits(hits: list[Hit]) -> str:
    """A plain-text table of search results."""
    label = {0: "neg", 1: "pos"}
    rows = [("#", "score", "review id", "label", "review")]
    rows += [(str(h.rank), f"{h.score:.3f}", str(h.id), label.get(h.label, "-"), h.snippet) for h in hits]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
    return "\n".join(lines)
