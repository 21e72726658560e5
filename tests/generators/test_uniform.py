"""Uniform RTN with groups: round trips, error bounds, exact bit accounting, sizing to a budget."""

import math

import pytest
import torch

from big2small.errors import Big2SmallError
from big2small.generators import HEADER_BITS, UniformConfig, generator_for
from big2small.generators.uniform import UniformGenerator
from big2small.layout import MatrixLayout
from codec_checks import assert_stored_bits, randn, round_trip


SHAPES = [(7, 5), (1, 1), (3, 1000), (33, 3, 3, 3), (64, 200), (10, 5)]
CONFIGS = [
    UniformConfig(bits=4, group_size=128),
    UniformConfig(bits=3, group_size=16, symmetric=True),
    UniformConfig(bits=8, group_size=0),
    UniformConfig(bits=1, group_size=32),
    UniformConfig(bits=5, group_size=7, symmetric=True),
]


def test_eight_bit_error_is_tiny():
    w = randn(64, 256)
    _, out = round_trip(w, UniformConfig(bits=8, group_size=64))
    assert (out - w).abs().max() < 0.01 * w.abs().max()


@pytest.mark.parametrize("symmetric", [False, True])
def test_per_channel_error_within_about_half_a_step(symmetric):
    w = randn(16, 300, seed=1) * torch.logspace(-2, 1, 16).unsqueeze(1)
    _, out = round_trip(w, UniformConfig(bits=4, group_size=0, symmetric=symmetric))
    if symmetric:
        step = w.abs().amax(1) / 7
    else:
        step = (w.amax(1).clamp(min=0) - w.amin(1).clamp(max=0)) / 15
    err = (out - w).abs().amax(1)
    assert torch.all(err <= 0.6 * step)  # half a step, plus fp16 rounding of the scale


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"b{c.bits}g{c.group_size}{'s' if c.symmetric else 'a'}")
def test_bits_for_equals_encoded_bits_and_bytes(shape, cfg):
    enc, _ = round_trip(randn(*shape), cfg)
    assert_stored_bits(enc)


def test_bits_are_itemised_with_header():
    enc, _ = round_trip(randn(8, 64), UniformConfig(bits=4, group_size=32))
    assert enc.bits == {"codes": 8 * 64 * 4, "scales": 16 * 16, "zeros": 16 * 4, "header": HEADER_BITS}


@pytest.mark.parametrize("shape", SHAPES)
def test_odd_shapes_round_trip_within_tolerance(shape):
    w = randn(*shape, seed=3)
    _, out = round_trip(w, UniformConfig(bits=8, group_size=16))
    assert out.shape == w.shape
    assert (out - w).abs().max() <= 0.01 * w.abs().max() + 1e-6


def test_all_zero_tensor_is_exact():
    w = torch.zeros(9, 40)
    for cfg in (UniformConfig(bits=3), UniformConfig(bits=3, symmetric=True)):
        _, out = round_trip(w, cfg)
        assert torch.equal(out, w)


@pytest.mark.parametrize("symmetric", [False, True])
def test_constant_tensor_is_close(symmetric):
    w = torch.full((6, 50), -0.37)
    _, out = round_trip(w, UniformConfig(bits=4, symmetric=symmetric))
    torch.testing.assert_close(out, w, rtol=2e-3, atol=0)


def test_one_by_one_tensor():
    w = torch.tensor([[2.5]])
    _, out = round_trip(w, UniformConfig(bits=4))
    torch.testing.assert_close(out, w, rtol=2e-3, atol=0)


def test_asymmetric_zero_is_exact_in_all_positive_group():
    w = randn(4, 64, seed=5).abs() + 0.3  # all positive, range does not start at 0
    w[:, ::7] = 0.0
    enc, out = round_trip(w, UniformConfig(bits=3, group_size=32))
    assert torch.all(out[w == 0] == 0)
    assert enc.tensors["zeros"].dtype == torch.uint8  # zero-points are packed integers


def test_asymmetric_zero_is_exact_in_mixed_sign_group():
    w = randn(4, 64, seed=6)
    w[:, ::5] = 0.0
    _, out = round_trip(w, UniformConfig(bits=4, group_size=64))
    assert torch.all(out[w == 0] == 0)


def test_asymmetric_bits_match_methods_example():
    layout = MatrixLayout((256, 4096))
    bits = UniformGenerator.bits_for(UniformConfig(bits=4, group_size=128), layout)
    assert bits - HEADER_BITS == 256 * 4096 * 4 + 256 * 32 * (16 + 4)
    assert (bits - HEADER_BITS) / layout.numel == 4.15625


def test_symmetric_bits_match_methods_example():
    layout = MatrixLayout((256, 4096))
    bits = UniformGenerator.bits_for(UniformConfig(bits=4, group_size=128, symmetric=True), layout)
    assert (bits - HEADER_BITS) / layout.numel == 4.125


def test_group_spans_whole_rows_when_rows_are_short():
    layout = MatrixLayout((10, 5))  # G = 16 > J = 5: a group is floor(16 / 5) = 3 rows
    cfg = UniformConfig(bits=4, group_size=16)
    assert UniformGenerator.bits_for(cfg, layout) == 50 * 4 + math.ceil(10 / 3) * (16 + 4) + HEADER_BITS
    w = torch.zeros(10, 5)
    w[0, 0] = 8.0  # the first three rows share one large scale; the rest keep fine steps
    w[3:] = randn(7, 5, seed=7) * 0.01
    enc, out = round_trip(w, cfg)
    assert enc.tensors["scales"].numel() == 4
    assert enc.tensors["scales"][0].item() == pytest.approx(8.0 / 15, rel=1e-3)
    assert (out[3:] - w[3:]).abs().max() < 0.002


@pytest.mark.parametrize("group_size", [64, 3 * 10**8, 10**12])
def test_a_group_longer_than_the_matrix_is_the_whole_matrix_and_pads_no_further(group_size):
    """Whatever group_size a config holds, grouping allocates less than twice the matrix: a group
    never spans more rows than there are (the issue's 10**12 asked the decoder for 4 TB)."""
    from big2small.generators.grouping import grouping

    layout = MatrixLayout((4, 8))
    gp = grouping(layout, group_size)
    assert gp.n_groups == 1 and gp.n_groups * gp.group_len < 2 * layout.numel
    cfg = UniformConfig(bits=4, group_size=group_size)
    assert UniformGenerator.bits_for(cfg, layout) == UniformGenerator.bits_for(UniformConfig(bits=4, group_size=32), layout)
    w = randn(4, 8, seed=3)
    assert torch.equal(round_trip(w, cfg)[1], round_trip(w, UniformConfig(bits=4, group_size=32))[1])


def test_per_channel_has_one_scale_per_row():
    w = randn(12, 70, seed=8)
    w[0] *= 1000.0
    enc, out = round_trip(w, UniformConfig(bits=4, group_size=0))
    assert enc.tensors["scales"].numel() == 12
    assert (out[1:] - w[1:]).abs().max() < 0.5  # row 0's range does not leak into the others


def test_for_budget_picks_widest_code_then_finest_group():
    layout = MatrixLayout((256, 4096))
    cfg = UniformGenerator.for_budget(4.2, layout, {})
    assert (cfg.bits, cfg.group_size, cfg.symmetric) == (4, 128, False)
    assert UniformGenerator.bits_for(cfg, layout) <= 4.2 * layout.numel


def test_for_budget_keeps_fixed_options():
    layout = MatrixLayout((128, 512))
    cfg = UniformGenerator.for_budget(3.5, layout, {"symmetric": True, "group_size": 64})
    assert cfg.symmetric and cfg.group_size == 64 and cfg.bits == 3
    assert UniformGenerator.bits_for(cfg, layout) <= 3.5 * layout.numel


def test_for_budget_refuses_impossible_budget():
    with pytest.raises(Big2SmallError):
        UniformGenerator.for_budget(0.9, MatrixLayout((64, 64)), {})


@pytest.mark.parametrize(
    "kwargs", [{"bits": 0}, {"bits": 9}, {"bits": 1, "symmetric": True}, {"group_size": -1}]
)
def test_invalid_config_is_refused(kwargs):
    with pytest.raises(Big2SmallError):
        generator_for(UniformConfig(**kwargs))


@pytest.mark.parametrize("cfg", [UniformConfig(bits=4, group_size=64), UniformConfig(bits=3, group_size=48, symmetric=True),
                                 UniformConfig(bits=2, group_size=0)])
def test_codes_are_round_to_nearest_at_the_stored_scales(cfg):
    """Each code is round(w / s) + z clamped to the code range, s the group's stored fp16 scale and z
    its stored zero-point (half the range when symmetric): the encoder's in-place arithmetic against
    the formula written out."""
    from big2small import bitpack
    from big2small.generators.grouping import grouped, grouping, ungrouped

    w = randn(37, 160, seed=5)
    enc, _ = round_trip(w, cfg)
    layout = MatrixLayout(tuple(w.shape))
    gp = grouping(layout, cfg.group_size)
    s = enc.tensors["scales"].float().unsqueeze(1)
    if cfg.symmetric:
        half = 1 << (cfg.bits - 1)
        q = torch.clamp(torch.round(grouped(w, gp) / s), -half, half - 1) + half
    else:
        z = bitpack.unpack(enc.tensors["zeros"], cfg.bits, gp.n_groups).float().unsqueeze(1)
        q = torch.clamp(torch.round(grouped(w, gp) / s) + z, 0, (1 << cfg.bits) - 1)
    expected = ungrouped(q, gp, layout).reshape(-1).long()
    assert torch.equal(bitpack.unpack(enc.tensors["codes"], cfg.bits, w.numel()), expected)
