"""Selecting the top k of a score vector without sorting all of it, and what fusion needs: candidates
(the non-zero scores) and min-max normalisation. ``Mode`` names the three rankings an index offers."""

from __future__ import annotations

from typing import Literal

import numpy as np

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
