"""Tests for big2small.evaluate.classification."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from big2small.errors import Big2SmallError
from big2small.evaluate import accuracy, agreement, logits_of


def test_logits_of_batches_match_one_pass():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 5))
    x = torch.randn(37, 8)
    with torch.no_grad():
        expected = model(x)
    got = logits_of(model, x, batch_size=10)
    assert got.shape == (37, 5)
    torch.testing.assert_close(got, expected)


def test_logits_of_uses_eval_mode_and_restores_it():
    model = nn.Sequential(nn.BatchNorm1d(3))
    model.train()
    x = torch.randn(4, 3) * 5 + 2
    out = logits_of(model, x, batch_size=2)
    # Fresh running stats (mean 0, var 1): eval-mode BN is the identity up to eps.
    torch.testing.assert_close(out, x / math.sqrt(1 + 1e-5))
    assert model.training
    assert torch.equal(model[0].running_mean, torch.zeros(3))


def test_accuracy_counts_correct_argmax():
    model = nn.Identity()
    inputs = torch.eye(4)  # argmax of row i is i
    labels = torch.tensor([0, 1, 3, 3])
    result = accuracy(model, inputs, labels, data="eye")
    assert result.top1 == pytest.approx(0.75)
    assert result.n == 4
    assert result.protocol["data"] == "eye"
    json.dumps(result.protocol)
    assert "75.00%" in result.describe()


def test_accuracy_rejects_label_mismatch():
    with pytest.raises(Big2SmallError):
        accuracy(nn.Identity(), torch.eye(4), torch.tensor([0, 1]))


def test_agreement_identical_logits():
    logits = torch.randn(20, 7)
    result = agreement(logits, logits.clone())
    assert result.top1_agreement == 1.0
    assert result.kl_mean == pytest.approx(0.0, abs=1e-12)
    assert result.n == 20


def test_agreement_kl_matches_hand_computation():
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64))
    cand = torch.log(torch.tensor([[0.25, 0.75], [0.9, 0.1]], dtype=torch.float64))
    result = agreement(ref, cand)
    kl0 = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert result.kl_mean == pytest.approx(kl0 / 2, rel=1e-9)
    assert result.kl_mean > 0
    # Row 0: ref argmax is class 0 (tie broken to the first), candidate picks class 1.
    assert result.top1_agreement == 0.5


def test_agreement_kl_direction_is_reference_first():
    ref = torch.log(torch.tensor([[0.9, 0.1]], dtype=torch.float64))
    cand = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert agreement(ref, cand).kl_mean == pytest.approx(expected, rel=1e-9)


def test_agreement_shape_mismatch_raises():
    with pytest.raises(Big2SmallError):
        agreement(torch.randn(3, 4), torch.randn(3, 5))
