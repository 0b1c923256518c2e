"""Search results: :class:`Hit` (a review named by its unique key, its score, a snippet and the words
of the query it holds) and the plain-text table the console prints."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

MATCHED = 6  # words of the query a hit lists at most


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
    matched: list[str] = field(default_factory=list)


def matched_words(
    asked: list[str], held: list[str], frequency: Callable[[str], int] | None = None, most: int = MATCHED
) -> list[str]:
    """The words of a query (``asked``) that a review holds (``held``), as BM25 reads them (lower case,
    no stop words): the rarest first when ``frequency`` gives each word's document count (a rare
    shared word says more than a common one), else in the query's order; at most ``most``."""
    have = set(held)
    shared = list(dict.fromkeys(w for w in asked if w in have))
    if frequency is not None:
        shared.sort(key=frequency)
    return shared[:most]


def hits_of(
    reviews: list[dict], scores: list[float], text: str, frequency: Callable[[str], int] | None = None
) -> list[Hit]:
    """Hits, best first, of ``reviews`` (dicts with key, id, label and text) with their ``scores`` for the
    query ``text``; ``frequency`` orders each hit's matched words (see :func:`matched_words`)."""
    from imdb_transformer.search.bm25 import BM25Index

    asked = BM25Index.words([text])[0]
    return [
        Hit(rank + 1, float(score), review["key"], review["id"], review["label"], snippet(review["text"]),
            matched_words(asked, BM25Index.words([review["text"]])[0], frequency))
        for rank, (score, review) in enumerate(zip(list(scores), reviews, strict=True))
    ]  # fmt: skip


def snippet(text: str, width: int = 100) -> str:
    return text if len(text) <= width else text[: width - 1].rsplit(" ", 1)[0] + "…"


def format_hits(hits: list[Hit]) -> str:
    """A plain-text table of search results; each review is named by its key (``test/pos/2221``), which
    ``search --like`` takes."""
    label = {0: "neg", 1: "pos"}
    rows = [("#", "score", "review key", "label", "matched", "review")]
    rows += [
        (
            str(h.rank),
            f"{h.score:.3f}",
            h.key,
            label.get(h.label, "-"),
            ", ".join(h.matched) or "-",
            h.snippet,
        )
        for h in hits
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths, strict=True)) + "  " + r[5] for r in rows]
    lines.insert(1, "-" * min(120, max(len(line) for line in lines)))
    return "\n".join(lines)
