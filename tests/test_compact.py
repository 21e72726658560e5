"""CompactLinear: Linear layers multiplying with their stored codes give what the decoded model gives."""

import copy

import pytest
import torch
from torch import nn

import big2small as b2s
from big2small.compact import CompactLinear
from big2small.generators import GeneratorConfig, generator_for
from big2small.kernels import kernel_for
from big2small.onthefly import resident_bytes
from tiny_models import tiny_llama


def _layer(options: dict, shape=(48, 96), bias=True, seed=0) -> tuple[CompactLinear, torch.Tensor, torch.Tensor | None]:
    gen = torch.Generator().manual_seed(seed)
    enc = generator_for(GeneratorConfig.from_dict(options)).encode(torch.randn(shape, generator=gen), seed=seed)
    b = torch.randn(shape[0], generator=gen) if bias else None
    return CompactLinear(enc, kernel_for(enc), b), b2s.generators.decode(enc), b


CODECS = [
    {"method": "uniform", "bits": 4, "group_size": 32, "symmetric": True},
    {"method": "uniform", "bits": 3, "group_size": 64, "rotate": "both"},
    {"method": "trellis", "bits": 4, "state_bits": 8},                       # rotated inputs (the default)
    {"method": "trellis", "bits": 2, "state_bits": 8, "rotate": "both"},
    {"method": "hyper", "bits": 8, "scale_grid": [1.0], "rotate": "input"},
]


@pytest.mark.parametrize("options", CODECS, ids=lambda o: "-".join(str(v) for v in o.values()))
@pytest.mark.parametrize("rows", [1, 2, 4, 9])  # fused product (up to the kernel's FUSED_MAX_ROWS), then decode-then-matmul
def test_output_matches_decode_then_matmul(options, rows):
    layer, weight, bias = _layer(options, shape=(40, 96))
    x = torch.randn(2, rows, 96, generator=torch.Generator().manual_seed(3))[:1]  # [1, rows, in]: leading dims kept
    with torch.no_grad():
        got = layer(x)
    expected = nn.functional.linear(x.double(), weight.double(), bias.double())
    assert got.shape == (1, rows, 40)
    assert torch.allclose(got.double(), expected, rtol=1e-4, atol=1e-4), (got - expected).abs().max()


def test_weight_property_and_state_dict_are_the_codecs_decode():
    layer, weight, bias = _layer(CODECS[2], bias=False)
    assert torch.equal(layer.weight, weight)
    state = layer.state_dict()
    assert set(state) == {"weight"} and torch.equal(state["weight"], weight)
    with pytest.raises(b2s.Big2SmallError, match="on the fly"):
        layer.load_state_dict(state)


def test_a_bfloat16_input_gets_a_bfloat16_output():
    layer, weight, bias = _layer(CODECS[0])
    x = torch.randn(1, 96).bfloat16()
    with torch.no_grad():
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert torch.allclose(y.float(), nn.functional.linear(x.float(), weight, bias), rtol=2e-2, atol=5e-2)


@pytest.mark.parametrize("method, options", [("uniform", {"bits": 4, "group_size": 16, "symmetric": True}),
                                             ("trellis", {"bits": 3, "state_bits": 8})])
def test_fused_restore_of_a_llama_generates_what_the_dense_restore_generates(method, options, tmp_path):
    model = tiny_llama()
    cm = b2s.compress(model, method, min_numel=256, progress=False, **options)
    dense = cm.apply_to(copy.deepcopy(model)).eval()
    fused = cm.apply_to(copy.deepcopy(model), on_the_fly=True, fused=True).eval()
    compact = [n for n, m in fused.named_modules() if isinstance(m, CompactLinear)]
    assert len(compact) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
    assert resident_bytes(fused) < resident_bytes(dense)
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(fused(ids).logits, dense(ids).logits, atol=1e-4)  # 12 rows: decode-then-matmul
        out_dense = dense.generate(ids, max_new_tokens=6, do_sample=False)  # one row at a time: fused
        out_fused = fused.generate(ids, max_new_tokens=6, do_sample=False)
    assert torch.equal(out_dense, out_fused)
    assert set(fused.state_dict()) == set(dense.state_dict())


def test_fused_needs_on_the_fly(small_net, tmp_path):
    cm = b2s.compress(small_net, "uniform", bits=4, min_numel=1024, progress=False)
    b2s.save(cm, tmp_path / "net.b2s")
    with pytest.raises(b2s.Big2SmallError, match="on_the_fly"):
        b2s.restore(tmp_path / "net.b2s", skeleton=copy.deepcopy(small_net), fused=True)
    restored = b2s.restore(tmp_path / "net.b2s", skeleton=copy.deepcopy(small_net), on_the_fly=True, fused=True)
    assert isinstance(restored.fc, CompactLinear)  # Linear layers multiply with their codes ...
    assert not isinstance(restored.conv, CompactLinear)  # ... other layers decode on the fly as before
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(restored(x), cm.apply_to(copy.deepcopy(small_net))(x), atol=1e-4)
