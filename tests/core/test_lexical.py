"""LexicalHead: a bag of pieces, each occurrence weighted by its context."""

from __future__ import annotations

import torch

from imdb_transformer.core.lexical import LexicalHead, signed_log


def test_without_context_it_is_a_linear_model_over_log_counts() -> None:
    head = LexicalHead(vocab_size=6, dropout=0.0)
    torch.nn.init.normal_(head.votes.weight)
    ids = torch.tensor([[1, 2, 2, 5, 0], [3, 3, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    counts = torch.zeros(2, 6)
    counts[0, [1, 2, 5]] = torch.tensor([1.0, 2.0, 1.0])
    counts[1, 3] = 3.0
    expected = torch.log1p(counts) @ head.votes.weight[0] + head.votes.bias
    assert torch.allclose(head(ids, mask), expected)
    assert not head.uses_states


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


def test_windows_of_one_review_add_up_to_its_bag() -> None:
    head = LexicalHead(vocab_size=5, dropout=0.0)
    ids = torch.tensor([[1, 2], [2, 4], [3, 0]])
    mask = ids != 0
    owner = torch.tensor([0, 0, 1])
    bag = head.bag(ids, head.weights(mask), owner)
    assert bag.tolist() == [[0, 1, 2, 0, 1], [0, 0, 0, 1, 0]]


def test_contributions_sum_to_the_logit_without_its_bias() -> None:
    torch.manual_seed(1)
    head = LexicalHead(vocab_size=7, n_embd=3, dropout=0.0)
    torch.nn.init.normal_(head.votes.weight)
    torch.nn.init.normal_(head.gate.weight)
    ids = torch.tensor([[1, 2, 2, 6], [4, 4, 0, 0]])
    mask = ids != 0
    states = torch.randn(2, 4, 3)
    shares = head.contributions(ids, mask, states)
    assert torch.allclose(shares.sum(1), head(ids, mask, states) - head.votes.bias, atol=1e-5)
    assert bool((shares[~mask] == 0).all())


def test_signed_log_saturates_and_keeps_the_sign() -> None:
    x = torch.tensor([-3.0, 0.0, 3.0])
    assert torch.allclose(
        signed_log(x), torch.tensor([-torch.log1p(torch.tensor(3.0)), 0.0, torch.log1p(torch.tensor(3.0))])
    )
