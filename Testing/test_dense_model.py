"""The dense counterpart of Table 1: same parameters as the sparse network, correct shapes, Dice loss."""

from __future__ import annotations

import pytest
import torch
from sparseskull.nets.dense_net import DenseCompletionNet, dice_loss
from sparseskull.nets.sparse_net import SparseCompletionNet


@pytest.mark.parametrize("channels", ["ch1", "ch2", (2, 2, 4, 4, 8, 8, 8)])
def test_same_parameter_count_as_the_sparse_network(channels):
    assert DenseCompletionNet(channels).parameter_count() == SparseCompletionNet(channels).parameter_count()


def test_levels_double_in_size_up_to_the_input_grid():
    torch.manual_seed(0)
    net = DenseCompletionNet((2, 2, 4, 4, 4, 4, 8))
    x = (torch.rand(2, 1, 64, 128, 64) < 0.1).float()
    logits = net(x)
    assert [tuple(l.shape[2:]) for l in logits] == [(2 * 2**i, 4 * 2**i, 2 * 2**i) for i in range(6)]
    loss = dice_loss(logits[-1], x)
    loss.backward()
    assert 0.0 < float(loss) < 1.0
    with pytest.raises(ValueError, match="multiples of 64"):
        net(torch.zeros(1, 1, 64, 64, 40))


def test_dice_loss_is_zero_for_a_confident_perfect_prediction_and_one_for_the_opposite():
    t = (torch.rand(1, 1, 8, 8, 8) < 0.5).float()
    assert float(dice_loss((t * 2 - 1) * 50, t)) < 1e-3
    assert float(dice_loss((1 - 2 * t) * 50, t, eps=0.0)) > 0.999
