"""Word votes for a classifier: a bag of a text's pieces over the backbone's own vocabulary, each
occurrence weighted by its context.

A bag of words keeps the lexical evidence of a review ("superb", "waste"); the frozen backbone's
state at each token says how that occurrence counts in context ("not bad", "the only good thing").
:class:`LexicalHead` joins the two: a linear model over a vocabulary-sized vector in which each
occurrence of a piece adds a weight computed from the backbone's state at that token (uniCOIL and
SPLADE weigh tokens so for retrieval, without expansion here). Without states every occurrence counts
1, and the head is a plain bag-of-pieces logistic regression: the lexical part alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def signed_log(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)``: counts saturate, so a piece said ten times is not ten times the
    evidence, and a negative weight keeps its sign."""
    return torch.sign(x) * torch.log1p(x.abs())


class LexicalHead(nn.Module):
    """A logit from the pieces of a text, each occurrence weighted by its context.

    Each occurrence ``t`` of piece ``v`` adds ``w_t`` to ``x[v]``; the logit is ``u · signed_log(x) +
    b``. With context (``n_embd`` given), ``w_t = softplus(a · h_t + a0) * tanh(c · h_t + c0)`` from
    the backbone's normalised state ``h_t``: how much the occurrence counts, and whether its context
    turns it around (a negative weight); both start near 1, the plain bag. Without context ``w_t = 1``.

    Args:
        vocab_size: The backbone's vocabulary: one learned vote per piece.
        n_embd: Width of the backbone's states, or None for the plain bag (no states read).
        dropout: Dropout on the bag while training.
    """

    def __init__(self, vocab_size: int, n_embd: int | None = None, dropout: float = 0.1) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.votes = nn.Linear(vocab_size, 1)
        nn.init.zeros_(self.votes.weight)
        self.dropout = nn.Dropout(dropout)
        self.gate: nn.Linear | None = None
        if n_embd is not None:
            self.norm = nn.LayerNorm(n_embd, elementwise_affine=False)
            self.gate = nn.Linear(n_embd, 2)
            nn.init.zeros_(self.gate.weight)
            with torch.no_grad():  # softplus(a0) = 1 and tanh(c0) = 0.995: each occurrence counts 1
                self.gate.bias.copy_(torch.tensor([math.log(math.e - 1), 3.0]))

    @property
    def uses_states(self) -> bool:
        """Whether the head reads the backbone's states (else it needs only the token ids)."""
        return self.gate is not None

    def weights(self, mask: Tensor, states: Tensor | None = None) -> Tensor:
        """Each token's weight (B, T): from its state with context, else 1; 0 at padding."""
        if self.gate is None:
            return mask.float()
        if states is None:
            raise ValueError("this head weighs tokens by their context: pass the backbone's states")
        gate = self.gate(self.norm(states.float()))
        return F.softplus(gate[..., 0]) * torch.tanh(gate[..., 1]) * mask

    def bag(self, ids: Tensor, weights: Tensor, owner: Tensor | None = None) -> Tensor:
        """The weighted bag (B, vocab_size) of each row, or of each review when rows are windows of
        reviews (row i belongs to review ``owner[i]``)."""
        bag = weights.new_zeros(ids.size(0), self.vocab_size).scatter_add_(1, ids, weights)
        if owner is not None:
            reviews = int(owner.max()) + 1
            bag = bag.new_zeros(reviews, self.vocab_size).index_add_(0, owner, bag)
        return bag

    def forward(
        self, ids: Tensor, mask: Tensor, states: Tensor | None = None, owner: Tensor | None = None
    ) -> Tensor:
        """Logits (B,) for padded token ids (B, T), their mask and, with context, the backbone's
        states (B, T, n_embd)."""
        bag = self.bag(ids, self.weights(mask, states), owner)
        return self.votes(self.dropout(signed_log(bag))).squeeze(-1)

    @torch.no_grad()
    def contributions(self, ids: Tensor, mask: Tensor, states: Tensor | None = None) -> Tensor:
        """Each token's share of the logit (B, T), bias aside: the vote of its piece, split among the
        piece's occurrences in proportion to their weights, so a row sums to ``logit - bias``."""
        weights = self.weights(mask, states)
        bag = self.bag(ids, weights)
        per_piece = self.votes.weight[0] * signed_log(bag)  # (B, V)
        share = torch.where(bag != 0, per_piece / bag.where(bag != 0, torch.ones_like(bag)), 0.0)
        return share.gather(1, ids) * weights
