"""Torch k-means: separated clusters recovered, deterministic per seed, edge cases."""

import pytest
import torch

from big2small.folding.kmeans import kmeans


def _blobs(seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(20)
    return centres[labels] + 0.1 * torch.randn(60, 2, generator=g), labels


def test_well_separated_blobs_are_recovered():
    x, truth = _blobs()
    labels = kmeans(x, 3, seed=1)
    # Same partition up to renaming: each true cluster maps to exactly one label.
    assert all(labels[truth == c].unique().numel() == 1 for c in range(3))
    assert labels.unique().numel() == 3


def test_same_seed_gives_same_labels():
    x = torch.randn(200, 5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(kmeans(x, 17, seed=4), kmeans(x, 17, seed=4))


def test_k_equal_n_is_the_identity():
    x = torch.randn(7, 3)
    assert torch.equal(kmeans(x, 7), torch.arange(7))


def test_duplicate_points_share_a_cluster_and_no_cluster_is_empty():
    x = torch.randn(5, 4).repeat(3, 1)  # 15 points, 5 distinct
    labels = kmeans(x, 5)
    assert torch.equal(labels[:5], labels[5:10]) and torch.equal(labels[:5], labels[10:])
    assert torch.bincount(labels, minlength=5).min() > 0


def test_k_out_of_range_is_rejected():
    with pytest.raises(ValueError):
        kmeans(torch.randn(4, 2), 0)
    with pytest.raises(ValueError):
        kmeans(torch.randn(4, 2), 5)
