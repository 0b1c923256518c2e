"""LexicalHead: a bag of pieces and pairs of pieces, each occurrence weighted by its context."""

from __future__ import annotations

import pytest
import torch

from imdb_transformer.core.lexical import PAIR_BUCKETS, LexicalHead, pair_buckets, signed_log


def dense_logits(head: LexicalHead, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The same logits through a dense bag: counts of each piece and pair, log-scaled, times the votes."""
    bag = torch.zeros(ids.size(0), head.votes.numel())
    keys = head.keys(ids, mask)
    for r in range(ids.size(0)):
        for k in keys[r].flatten().tolist():
            if k >= 0:
                bag[r, k] += 1
    return torch.log1p(bag) @ head.votes + head.bias


@pytest.mark.parametrize("pairs", [False, True])
def test_without_context_it_is_a_linear_model_over_log_counts(pairs: bool) -> None:
    torch.manual_seed(0)
    head = LexicalHead(vocab_size=6, pairs=pairs, dropout=0.0)
    torch.nn.init.normal_(head.votes)
    ids = torch.tensor([[1, 2, 2, 5, 0], [3, 3, 3, 0, 0]])
    mask = ids != 0
    assert torch.allclose(head(ids, mask), dense_logits(head, ids, mask), atol=1e-5)
    assert not head.uses_states and head.votes.numel() == 6 + (PAIR_BUCKETS if pairs else 0)


def test_pairs_are_adjacent_real_tokens_only() -> None:
    head = LexicalHead(vocab_size=6)
    ids = torch.tensor([[1, 2, 2, 0]])
    keys = head.keys(ids, ids != 0)[0].tolist()
    pair = [pair_buckets(torch.tensor(a), torch.tensor(b), 6).item() + 6 for a, b in ((1, 2), (2, 2))]
    assert keys == [[1, -1], [2, pair[0]], [2, pair[1]], [-1, -1]]


def test_pairs_spread_over_the_buckets_for_a_power_of_two_vocabulary() -> None:
    vocab = 8192  # the configs' vocabulary: a plain (a * V + b) mod 2^20 would keep only a mod 128 of a
    first = torch.arange(4, 4100)
    buckets = pair_buckets(first, torch.full_like(first, 500), vocab)  # 4,096 pairs ending in one piece
    assert int(buckets.min()) >= 0 and int(buckets.max()) < PAIR_BUCKETS
    assert len(set(buckets.tolist())) > 4000  # nearly all distinct (birthday collisions: about 8)


def test_context_starts_as_the_plain_bag_and_can_turn_a_word_around() -> None:
    torch.manual_seed(0)
    head = LexicalHead(vocab_size=6, n_embd=4, dropout=0.0)
    mask = torch.ones(1, 3, dtype=torch.bool)
    states = torch.randn(1, 3, 4)
    assert torch.allclose(
        head.weights(mask, states), torch.full((1, 3), torch.tanh(torch.tensor(3.0)).item())
    )
    with torch.no_grad():  # the polarity gate reads the first channel: a state can flip its token
        head.gate.weight[1, 0] = -100.0
    flipped = head.weights(mask, torch.tensor([[[1.0, 0, 0, 0], [-1.0, 0, 0, 0], [0.0, 1, 0, 0]]]))
    assert flipped[0, 0] < -0.9 and flipped[0, 1] > 0.9


def test_windows_of_one_review_vote_as_its_whole_bag() -> None:
    torch.manual_seed(2)
    head = LexicalHead(vocab_size=5, pairs=False, dropout=0.0)
    torch.nn.init.normal_(head.votes)
    windows = torch.tensor([[1, 2], [2, 4], [3, 0]])
    whole = torch.tensor([[1, 2, 2, 4], [3, 0, 0, 0]])
    joined = head(windows, windows != 0, owner=torch.tensor([0, 0, 1]))
    assert torch.allclose(joined, head(whole, whole != 0), atol=1e-6)


@pytest.mark.parametrize("pairs", [False, True])
def test_contributions_sum_to_the_logit_without_its_bias(pairs: bool) -> None:
    torch.manual_seed(1)
    head = LexicalHead(vocab_size=7, n_embd=3, pairs=pairs, dropout=0.0)
    torch.nn.init.normal_(head.votes)
    torch.nn.init.normal_(head.gate.weight)
    ids = torch.tensor([[1, 2, 2, 6], [4, 4, 0, 0]])
    mask = ids != 0
    states = torch.randn(2, 4, 3)
    shares = head.contributions(ids, mask, states)
    assert torch.allclose(shares.sum(1), head(ids, mask, states) - head.bias, atol=1e-5)
    assert bool((shares[~mask] == 0).all())


def test_signed_log_saturates_and_keeps_the_sign() -> None:
    three = torch.log1p(torch.tensor(3.0))
    assert torch.allclose(
        signed_log(torch.tensor([-3.0, 0.0, 3.0])), torch.stack([-three, torch.tensor(0.0), three])
    )
