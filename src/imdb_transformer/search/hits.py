"""Search results: :class:`Hit` (a review named by its unique key, its score and a snippet) and the
plain-text table the console prints."""

from __future__ import annotations

from dataclasses import dataclass


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
