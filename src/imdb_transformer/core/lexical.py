"""Word votes for a classifier: a bag of a text's pieces (and pairs of pieces) over the backbone's own
vocabulary, each occurrence weighted by its context.

A bag of words keeps the lexical evidence of a review ("superb", "waste"); the frozen backbone's
state at each token says how that occurrence counts in context ("not bad", "the only good thing").
:class:`LexicalHead` joins the two: a linear model over the review's pieces in which each occurrence
adds a weight computed from the backbone's state at that token (uniCOIL and SPLADE weigh tokens so
for retrieval, without expansion here). Without states every occurrence counts 1, and the head is a
plain bag-of-pieces logistic regression: the lexical part alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# hash buckets for pairs of adjacent pieces (a pair's vote is shared with the pairs that collide)
PAIR_BITS = 20
PAIR_BUCKETS = 1 << PAIR_BITS
_MIX = 2654435761  # Knuth's multiplicative hash: the top bits of (pair * _MIX) mod 2^32 spread pairs evenly


def pair_buckets(first: Tensor, second: Tensor, vocab_size: int, bits: int = PAIR_BITS) -> Tensor:
    """The bucket (0 to ``2**bits - 1``) of each pair of pieces: a multiplicative hash of the pair's
    number, so pairs that share a piece do not fall into a few buckets (a plain ``mod`` of the pair's
    number would, for a power-of-two vocabulary)."""
    return (((first * vocab_size + second) * _MIX) % (1 << 32)) >> (32 - bits)


def signed_log(x: Tensor) -> Tensor:
    """``sign(x) * log(1 + |x|)``: counts saturate, so a piece said ten times is not ten times the
    evidence, and a negative weight keeps its sign."""
    return torch.sign(x) * torch.log1p(x.abs())


class LexicalHead(nn.Module):
    """A logit from the pieces of a text and, with ``pairs``, its pairs of adjacent pieces, each
    occurrence weighted by its context.

    Each occurrence ``t`` of a key ``k`` (a piece, or a pair ending at ``t``) adds ``w_t`` to
    ``x[k]``; the logit is ``sum_k u[k] * signed_log(x[k]) + b``. With context (``n_embd`` given),
    ``w_t = softplus(a · h_t + a0) * tanh(c · h_t + c0)`` from the backbone's normalised state
    ``h_t``: how much the occurrence counts, and whether its context turns it around (a negative
    weight); both start near 1, the plain bag. Without context ``w_t = 1``. Only the keys a text holds
    are touched, so the cost grows with its length, not with the vocabulary.

    Args:
        vocab_size: The backbone's vocabulary: one learned vote per piece.
        n_embd: Width of the backbone's states, or None for the plain bag (no states read).
        pairs: Also vote on pairs of adjacent pieces, hashed into ``PAIR_BUCKETS`` buckets.
        dropout: Dropout on the bag's entries while training.
    """

    def __init__(
        self, vocab_size: int, n_embd: int | None = None, pairs: bool = True, dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.pairs = pairs
        self.votes = nn.Parameter(torch.zeros(vocab_size + (PAIR_BUCKETS if pairs else 0)))
        self.bias = nn.Parameter(torch.zeros(()))
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
        gate = self.gate(self.norm(states.float())).float()  # summed into the bag: not in bf16
        return F.softplus(gate[..., 0]) * torch.tanh(gate[..., 1]) * mask

    def keys(self, ids: Tensor, mask: Tensor) -> Tensor:
        """The keys of each token (B, T, K): its piece and, with ``pairs``, the bucket of the pair it
        ends (-1 where there is none: padding, the first token)."""
        piece = ids.masked_fill(~mask, -1)
        if not self.pairs:
            return piece.unsqueeze(-1)
        pair = pair_buckets(ids[:, :-1], ids[:, 1:], self.vocab_size) + self.vocab_size
        pair = torch.cat([torch.full_like(ids[:, :1], -1), pair], 1)
        pair = pair.masked_fill(~(mask & mask.roll(1, 1)), -1)
        return torch.stack([piece, pair], -1)

    def _terms(
        self, ids: Tensor, mask: Tensor, states: Tensor | None, owner: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Each occurrence's review, weight and entry, and each entry's key and value ``x``: the bag,
        with only the entries a review holds."""
        weights = self.weights(mask, states)  # (B, T)
        keys = self.keys(ids, mask)  # (B, T, K)
        rows = torch.arange(ids.size(0), device=ids.device) if owner is None else owner
        review = rows.view(-1, 1, 1).expand_as(keys)
        real = keys >= 0
        flat = review[real] * self.votes.numel() + keys[real]
        entries, at = torch.unique(flat, return_inverse=True)
        occurrence = weights.unsqueeze(-1).expand_as(keys)[real]
        x = occurrence.new_zeros(entries.numel()).index_add_(0, at, occurrence)
        return real, occurrence, at, entries, x

    def forward(
        self, ids: Tensor, mask: Tensor, states: Tensor | None = None, owner: Tensor | None = None
    ) -> Tensor:
        """Logits (B,) for padded token ids (B, T), their mask and, with context, the backbone's states
        (B, T, n_embd). With ``owner`` the rows are windows of reviews (row i belongs to review
        ``owner[i]``) and each review gets one logit from its whole bag."""
        reviews = ids.size(0) if owner is None else int(owner.max()) + 1
        _, _, _, entries, x = self._terms(ids, mask, states, owner)
        n = self.votes.numel()
        vote = self.votes[entries % n] * self.dropout(signed_log(x))
        return vote.new_zeros(reviews).index_add_(0, entries // n, vote) + self.bias

    @torch.no_grad()
    def contributions(
        self, ids: Tensor, mask: Tensor, states: Tensor | None = None, owner: Tensor | None = None
    ) -> Tensor:
        """Each token's share of the logit (B, T), bias aside: each entry's vote split among its
        occurrences in proportion to their weights (a pair's share goes to the token that ends it),
        so a row sums to ``logit - bias``; with ``owner`` (rows are windows, as in :meth:`forward`),
        the rows of one review sum to its ``logit - bias``."""
        real, occurrence, at, entries, x = self._terms(ids, mask, states, owner)
        vote = self.votes[entries % self.votes.numel()] * signed_log(x)
        per_weight = torch.where(x != 0, vote / x.where(x != 0, torch.ones_like(x)), 0.0)
        shares = torch.zeros(real.shape, device=ids.device)
        shares[real] = per_weight[at] * occurrence
        return shares.sum(-1)
