"""Pooling: one vector per review from the backbone's per-token features, ignoring padding."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from imdb_transformer.errors import InputError

Pooling = Literal["mean", "weighted_mean", "max", "last", "concat"]


def pool(hidden: Tensor, mask: Tensor, how: Pooling = "mean") -> Tensor:
    """Pool ``hidden`` (B, T, C) over the real tokens marked by ``mask`` (B, T) -> (B, C).

    ``mean`` averages every real token; ``weighted_mean`` weighs token t by t (SGPT's pooling for
    causal models: a later token has read more of the review); ``max`` takes each channel's largest
    value; ``last`` is the final real token, the only one that has attended to the whole review in a
    causal model; ``concat`` joins mean, max and last (B, 3C), ULMFiT's concat pooling.
    """
    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    if how == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1)
    if how == "weighted_mean":
        w = m * mask.long().cumsum(1).unsqueeze(-1).to(hidden.dtype)  # 1, 2, 3, ... over real tokens
        return (hidden * w).sum(1) / w.sum(1).clamp(min=1)
    if how == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    if how == "last":
        last = mask.long().cumsum(1).argmax(1)  # index of the last real token (right padding)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), last]
    if how == "concat":
        return torch.cat([pool(hidden, mask, p) for p in ("mean", "max", "last")], dim=-1)
    raise InputError(f"unknown pooling {how!r}; expected mean, weighted_mean, max, last or concat")


def join_windows(rows: Tensor, owner: Tensor | None, how: Literal["mean", "amax", "sum"] = "mean") -> Tensor:
    """One vector per text from the vectors of its windows (see
    :func:`~imdb_transformer.text.batching.collate_windows`): row i of ``rows`` (R, ...) belongs to text
    ``owner[i]``; ``mean`` averages a text's windows, ``amax`` keeps each entry's largest value, ``sum``
    adds them. Without ``owner`` each row is a whole text already and ``rows`` is returned as it is."""
    if owner is None:
        return rows
    index = owner.view(-1, *[1] * (rows.dim() - 1)).expand_as(rows)
    texts = rows.new_zeros(int(owner.max()) + 1, *rows.shape[1:])
    return texts.scatter_reduce(0, index, rows, how, include_self=False)


def pooled_size(n_embd: int, how: Pooling) -> int:
    return 3 * n_embd if how == "concat" else n_embd
