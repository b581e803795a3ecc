"""Weighted SFT loss and the Dr. SFT constant normalizer against values worked out by hand."""

import math

import pytest
import torch

from varreason.objectives import IGNORE_INDEX, constant_normalizer, token_nll, weighted_sft_loss


def test_token_nll_by_hand():
    # vocab of 2; logits (ln 3, 0) give p = (3/4, 1/4) at every position
    logits = torch.tensor([[[math.log(3), 0.0]] * 3])  # [1, 3, 2]
    labels = torch.tensor([[IGNORE_INDEX, 0, 1]])  # position 0 is the prompt
    nll, mask = token_nll(logits, labels)
    assert mask.tolist() == [[1.0, 1.0]]
    assert nll[0, 0].item() == pytest.approx(-math.log(3 / 4))
    assert nll[0, 1].item() == pytest.approx(-math.log(1 / 4))


def test_weighted_loss_by_hand():
    # example 1: two supervised tokens with p = 3/4 and 1/4, weight 0.5
    # example 2: one supervised token with p = 3/4 (one padded position), weight 2
    logits = torch.tensor([[[math.log(3), 0.0]] * 3] * 2)
    labels = torch.tensor([[IGNORE_INDEX, 0, 1], [IGNORE_INDEX, 0, IGNORE_INDEX]])
    nll, mask = token_nll(logits, labels)
    weights = torch.tensor([0.5, 2.0])
    a, b = -math.log(3 / 4), -math.log(1 / 4)  # 0.28768, 1.38629
    numerator = 0.5 * (a + b) + 2.0 * a  # = 2.5 ln(4/3) + 0.5 ln 4 = 1.4123524
    # "tokens": divide by the 3 supervised tokens
    assert weighted_sft_loss(nll, mask, weights, 3).item() == pytest.approx(numerator / 3)
    # "constant": a data set with supervised lengths [2, 1, 4, 5] (mean 3) and 2 examples per step -> C = 6
    c = constant_normalizer([2, 1, 4, 5], examples_per_step=2)
    assert c == 6.0
    assert weighted_sft_loss(nll, mask, weights, c).item() == pytest.approx(1.4123524 / 6, rel=1e-6)


def test_weight_two_equals_duplicate_example():
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 7)
    labels = torch.randint(0, 7, (3, 5))
    labels[:, 0] = IGNORE_INDEX
    nll, mask = token_nll(logits, labels)
    doubled = weighted_sft_loss(nll[:2], mask[:2], torch.tensor([2.0, 1.0]), 10.0)
    duplicated = weighted_sft_loss(nll[[0, 0, 1]], mask[[0, 0, 1]], torch.ones(3), 10.0)
    assert doubled.item() == pytest.approx(duplicated.item())


def test_zero_weight_contributes_nothing():
    logits = torch.randn(2, 4, 5)
    labels = torch.randint(0, 5, (2, 4))
    nll, mask = token_nll(logits, labels)
    only_first = weighted_sft_loss(nll[:1], mask[:1], torch.tensor([1.0]), 1.0)
    both = weighted_sft_loss(nll, mask, torch.tensor([1.0, 0.0]), 1.0)
    assert both.item() == pytest.approx(only_first.item())


def test_constant_normalizer_rejects_empty():
    with pytest.raises(ValueError):
        constant_normalizer([], 4)
