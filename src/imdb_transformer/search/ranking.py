"""Selecting the top k of a score vector without sorting all of it, and what fusion needs: candidates
(the non-zero scores) and min-max normalisation. ``Mode`` names the three rankings an index offers."""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

from imdb_transformer.errors import InputError

Mode = Literal["hybrid", "dense", "lexical"]


CANDIDATES = 100  # each ranker's proposals for hybrid fusion


def top_k_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """Rows of the ``k`` highest ``scores``, best first, without sorting all of them."""
    k = min(k, len(scores))
    rows = candidates(scores, k)  # sparse and BM25 scores are mostly 0: select among the rest
    if len(rows) < k or scores[rows].min() <= 0:  # then zeros or negatives may belong in the top k
        rows = np.argpartition(-scores, k - 1)[:k]
    return rows[np.argsort(-scores[rows], kind="stable")]


def candidates(scores: np.ndarray, count: int) -> np.ndarray:
    """Rows of the ``count`` highest non-zero ``scores``, in no particular order (what fusion starts
    from); among scores tied at the cut, which rows are taken is arbitrary. A review with score 0 shares
    no word (BM25) or no token (a sparse vector) with the query, and is no candidate; leaving the zeros
    out also keeps the selection off their long ties."""
    nonzero = np.count_nonzero(scores)
    if count >= nonzero:
        return np.flatnonzero(scores != 0)  # through a boolean mask: np.flatnonzero of floats is slower
    if 2 * nonzero > len(scores):  # mostly non-zero (a sparse query's cosines over a big index):
        rows = np.argpartition(scores, len(scores) - count)[-count:]  # select among all, copying nothing
        if scores[rows].min() > 0:  # all positive: the top among all are the top among the non-zeros
            return rows
    rows = np.flatnonzero(scores != 0)
    return rows[np.argpartition(scores[rows], len(rows) - count)[-count:]]


def minmax(x: np.ndarray) -> np.ndarray:
    """``x`` scaled to [0, 1] (all zeros when it is constant)."""
    low, span = x.min(), x.max() - x.min()
    return (x - low) / span if span > 0 else np.zeros_like(x)


def check_mode(mode: Mode | None, lexical: bool) -> Mode:
    """``mode`` checked against what an index holds (``lexical``: BM25); by default hybrid where it
    can run, else dense."""
    if mode is None:
        return "hybrid" if lexical else "dense"
    if mode not in ("hybrid", "dense", "lexical"):
        raise InputError(f"unknown mode {mode!r}; expected hybrid, dense or lexical")
    if mode != "dense" and not lexical:
        raise InputError(f"this index has no lexical part, so mode {mode!r} cannot run; use dense")
    return mode


def check_k(k: int, count: int) -> None:
    """Refuse a ``k`` outside 1..``count`` (the reviews an index holds)."""
    if not 1 <= k <= count:
        raise InputError(f"k={k} is out of range: the index holds {count} reviews, so 1 <= k <= {count}")


def fusion_rows(proposed: list[np.ndarray], k: int, count: int) -> np.ndarray:
    """The rows a hybrid ranking scores: the union of each ranker's candidates (sorted), filled up to
    ``k`` with the first other rows of ``count`` when fewer share anything with the query (they score 0)."""
    rows = functools.reduce(np.union1d, proposed)
    if len(rows) < k:
        rows = np.union1d(rows, np.setdiff1d(np.arange(count), rows)[: k - len(rows)])
    return rows


def fused_top(
    rows: np.ndarray, dense: np.ndarray, lexical: np.ndarray, alpha: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k`` of ``rows`` by ``alpha`` times their min-max scaled ``dense`` scores plus the rest
    times their scaled ``lexical`` scores (ties kept in row order): rows and fused scores."""
    fused = alpha * minmax(dense) + (1 - alpha) * minmax(lexical)
    order = np.argsort(-fused, kind="stable")[:k]
    return rows[order], fused[order]


def hybrid_top(dense: np.ndarray, lexical: np.ndarray, alpha: float, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Hybrid ranking from every review's ``dense`` and ``lexical`` scores (what exact search has): each
    ranker's :data:`CANDIDATES` best non-zero rows, every candidate scored both ways, fused by
    :func:`fused_top`. Rows and fused scores of the top ``k``."""
    rows = fusion_rows([candidates(dense, CANDIDATES), candidates(lexical, CANDIDATES)], k, len(dense))
    return fused_top(rows, dense[rows], lexical[rows], alpha, k)


def filled(rows: np.ndarray, scores: np.ndarray, k: int, count: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` and ``scores`` filled up to ``k`` with the first other rows of ``count``, scoring 0 (a
    ranker that scores only rows sharing a word or token with the query found fewer)."""
    if len(rows) >= k:
        return rows, scores
    rest = np.setdiff1d(np.arange(count), rows)[: k - len(rows)]
    return np.concatenate([rows, rest]), np.concatenate([scores, np.zeros(len(rest), dtype=scores.dtype)])
