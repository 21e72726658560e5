"""On-the-fly decoding: compact tensors resident, weights decoded in forward, same outputs as dense."""

import copy

import pytest
import torch
from torch.nn.utils import parametrize

import big2small as b2s
from big2small.onthefly import resident_bytes


@pytest.fixture
def compressed(small_net):
    return b2s.compress(small_net, "hyper", bits=8, min_numel=1024, progress=False)


def _input():
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_compressed_weights_are_parametrised_and_others_dense(small_net, compressed):
    lazy = compressed.apply_to(copy.deepcopy(small_net), on_the_fly=True)
    assert parametrize.is_parametrized(lazy.fc, "weight")
    assert not parametrize.is_parametrized(lazy.head, "weight")  # 800 weights < min_numel: raw
    assert not parametrize.is_parametrized(lazy.fc, "bias")


def test_resident_memory_is_compact(small_net, compressed):
    dense_bytes = resident_bytes(small_net)
    lazy = compressed.apply_to(copy.deepcopy(small_net), on_the_fly=True)
    assert "original0" in dict(lazy.fc.parametrizations.weight.named_parameters()) or any(
        n.startswith("original") for n, _ in lazy.fc.parametrizations.weight.named_buffers())
    # fc (30,720 fp32 weights) now holds ~4.1 bits per weight plus a small codebook.
    fc_bytes = sum(t.numel() * t.element_size() for t in lazy.fc.parametrizations.weight.parameters())
    assert fc_bytes < 96 * 4 * 80 * 4 / 6
    assert resident_bytes(lazy) < dense_bytes


def test_cached_context_decodes_once(small_net, compressed):
    lazy = compressed.apply_to(copy.deepcopy(small_net), on_the_fly=True).eval()
    with torch.no_grad(), parametrize.cached():
        first = lazy.fc.weight
        assert lazy.fc.weight is first
    assert lazy.fc.weight is not lazy.fc.weight  # decoded afresh on each access outside the context


def test_wrong_model_refused(compressed):
    from big2small.errors import Big2SmallError

    with pytest.raises(Big2SmallError, match="does not match"):
        compressed.apply_to(torch.nn.Sequential(torch.nn.Linear(4, 4)), on_the_fly=True)


def test_state_dict_is_the_dense_models_and_loading_into_codes_is_refused(small_net, compressed):
    lazy = compressed.apply_to(copy.deepcopy(small_net), on_the_fly=True)
    state = lazy.state_dict()
    assert set(state) == set(small_net.state_dict())  # the original names, no parametrizations.*
    dense = compressed.apply_to(copy.deepcopy(small_net))
    assert all(torch.equal(state[k], v) for k, v in dense.state_dict().items())
    fresh = type(small_net)().eval()
    fresh.load_state_dict(state)  # what torch.save(lazy.state_dict()) gives reloads as it is
    x = _input()
    with torch.no_grad():
        assert torch.allclose(fresh(x), lazy(x), atol=1e-6)
    with pytest.raises(b2s.Big2SmallError, match="on the fly"):
        lazy.load_state_dict(state)


def test_save_pretrained_of_an_on_the_fly_model_reloads_the_same_model(tiny_gpt2_dir, tmp_path):
    """transformers reloads what save_pretrained wrote with every weight (a parametrised model used
    to be written under parametrize's names, and reloaded with random weights in their place)."""
    from transformers import AutoModelForCausalLM

    loaded = b2s.load_model(tiny_gpt2_dir)
    cm = b2s.compress(loaded, "uniform", bits=4, group_size=32, min_numel=1024, progress=False)
    b2s.save(cm, tmp_path / "gpt2.b2s")
    lazy = b2s.restore(tmp_path / "gpt2.b2s", on_the_fly=True)
    assert parametrize.is_parametrized(lazy.transformer.h[0].mlp.c_fc, "weight")
    lazy.save_pretrained(tmp_path / "saved")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    ids = torch.randint(0, 128, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back(ids).logits, lazy(ids).logits)
