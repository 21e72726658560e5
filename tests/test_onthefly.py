"""On-the-fly decoding: compact tensors resident, weights decoded in forward, same outputs as dense."""

import copy

import pytest
import torch
from torch.nn.utils import parametrize

import big2small as b2s
from big2small.onthefly import attach, resident_bytes


@pytest.fixture
def compressed(small_net):
    return b2s.compress(small_net, "hyper", bits=8, min_numel=1024, progress=False)


def _input():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_compressed_weights_are_parametrised_and_others_dense(small_net, compressed):
    lazy = attach(copy.deepcopy(small_net), compressed)
    assert parametrize.is_parametrized(lazy.fc, "weight")
    assert not parametrize.is_parametrized(lazy.head, "weight")  # 800 weights < min_numel: raw
    assert not parametrize.is_parametrized(lazy.fc, "bias")


def test_resident_memory_is_compact(small_net, compressed):
    dense_bytes = resident_bytes(small_net)
    lazy = attach(copy.deepcopy(small_net), compressed)
    assert "original0" in dict(lazy.fc.parametrizations.weight.named_parameters()) or any(
        n.startswith("original") for n, _ in lazy.fc.parametrizations.weight.named_buffers())
    # fc (30,720 fp32 weights) now holds ~4.1 bits per weight plus a small codebook.
    fc_bytes = sum(t.numel() * t.element_size() for t in lazy.fc.parametrizations.weight.parameters())
    assert fc_bytes < 96 * 4 * 80 * 4 / 6
    assert resident_bytes(lazy) < dense_bytes


def test_cached_context_decodes_once(small_net, compressed):
    lazy = attach(copy.deepcopy(small_net), compressed).eval()
    with torch.no_grad(), parametrize.cached():
        first = lazy.fc.weight
        assert lazy.fc.weight is first
    assert lazy.fc.weight is not lazy.fc.weight  # decoded afresh on each access outside the context


def test_wrong_model_refused(compressed):
    from big2small.errors import Big2SmallError

    with pytest.raises(Big2SmallError, match="does not match"):
        attach(torch.nn.Sequential(torch.nn.Linear(4, 4)), compressed)
