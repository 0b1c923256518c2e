"""Pooling over real tokens only: padding never changes a review's vector."""

from __future__ import annotations

import pytest
import torch

from imdb_transformer.core.pooling import join_windows, pool, pooled_size


@pytest.mark.parametrize("how", ["mean", "max", "last", "concat"])
def test_padding_values_never_leak_into_the_pool(how: str) -> None:
    hidden = torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    poisoned = hidden.clone()
    poisoned[0, 3:] = 1e6  # garbage in the padded positions
    torch.testing.assert_close(pool(hidden, mask, how), pool(poisoned, mask, how))
    assert pool(hidden, mask, how).shape == (2, pooled_size(4, how))


def test_each_pooling_picks_what_it_says() -> None:
    hidden = torch.tensor([[[1.0], [3.0], [2.0], [9.0]]])
    mask = torch.tensor([[True, True, True, False]])
    assert pool(hidden, mask, "mean").item() == pytest.approx(2.0)
    assert pool(hidden, mask, "max").item() == 3.0
    assert pool(hidden, mask, "last").item() == 2.0
    assert pool(hidden, mask, "concat").tolist() == [[2.0, 3.0, 2.0]]


def test_unknown_pooling_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(torch.zeros(1, 2, 3), torch.ones(1, 2, dtype=torch.bool), "median")


def test_windows_join_into_one_vector_per_text() -> None:
    rows = torch.tensor([[1.0, 0.0, 4.0], [3.0, 2.0, 0.0], [5.0, 5.0, -5.0], [0.0, 6.0, 1.0]])
    owner = torch.tensor([0, 0, 1, 0])  # text 0 has three windows, text 1 one
    torch.testing.assert_close(
        join_windows(rows, owner, "mean"), torch.tensor([[4 / 3, 8 / 3, 5 / 3], [5.0, 5.0, -5.0]])
    )
    torch.testing.assert_close(  # only a text's own windows count: -5 stays, not a 0 it never had
        join_windows(rows, owner, "amax"), torch.tensor([[3.0, 6.0, 4.0], [5.0, 5.0, -5.0]])
    )
    assert join_windows(rows, None) is rows  # rows that are whole texts already
