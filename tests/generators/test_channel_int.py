"""Per-channel integers at their own bit widths: packing, round trips, exact bit accounting, and the
quantiser formula self-compression trains with (forward values, straight-through gradients)."""

import math

import pytest
import torch

from big2small.errors import Big2SmallError
from big2small.generators import ChannelIntConfig, generator_for
from big2small.generators.channel_int import (
    CHANNEL_HEADER_BITS, ChannelIntGenerator, channel_widths, encode_integers, fitted_exponents, pack_rows,
    quantize, quantize_integers, unpack_rows,
)
from big2small.layout import MatrixLayout
from codec_checks import assert_bits_match_bytes, assert_stored_bits, randn, round_trip


def test_pack_rows_round_trips_mixed_widths():
    g = torch.Generator().manual_seed(0)
    widths = torch.tensor([3, 0, 1, 7, 16, 2])
    values = torch.randint(0, 1 << 16, (6, 11), generator=g) % (1 << widths).unsqueeze(1)
    packed = pack_rows(values, widths)
    assert packed.numel() == (int(widths.sum()) * 11 + 7) // 8
    assert torch.equal(unpack_rows(packed, widths, 11), values)


def test_pack_rows_of_all_zero_widths_is_empty():
    packed = pack_rows(torch.zeros(4, 9, dtype=torch.int64), torch.zeros(4, dtype=torch.int64))
    assert packed.numel() == 0
    assert torch.equal(unpack_rows(packed, torch.zeros(4, dtype=torch.int64), 9), torch.zeros(4, 9, dtype=torch.int64))


def test_unpack_rejects_a_truncated_payload():
    widths = torch.tensor([4, 4])
    packed = pack_rows(torch.ones(2, 8, dtype=torch.int64), widths)
    with pytest.raises(Big2SmallError, match="corrupt payload"):
        unpack_rows(packed[:-1], widths, 8)


def test_widths_follow_each_rows_observed_range():
    ints = torch.tensor([[-2, 1, 0], [5, 5, 5], [0, 1, 1], [-8, 7, 0]])
    lo, nbits = channel_widths(ints)
    assert lo.tolist() == [-2, 5, 0, -8]
    assert nbits.tolist() == [2, 0, 1, 4]


def test_trained_integers_decode_exactly_as_the_scale_times_the_integer():
    ints = torch.tensor([[3, -1, 0, 2], [0, 0, 0, 0], [-4, 3, 1, 1]])
    scales = torch.exp2(torch.tensor([-3.25, 0.0, -7.5]))
    enc = encode_integers(ints, scales, MatrixLayout((3, 4)))
    out = ChannelIntGenerator(ChannelIntConfig()).decode(enc)
    assert torch.equal(out, scales.unsqueeze(1) * ints.float())


def test_bits_count_payload_and_56_bits_per_channel():
    ints = torch.tensor([[3, -1, 0, 2], [0, 0, 0, 0], [-4, 3, 1, 1]])
    enc = encode_integers(ints, torch.ones(3), MatrixLayout((3, 4)))
    assert enc.bits["payload"] == 4 * (3 + 0 + 3)
    assert enc.total_bits - enc.bits["header"] - enc.bits["payload"] == 3 * CHANNEL_HEADER_BITS
    assert_bits_match_bytes(enc)


@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (10, 40), (1, 1), (7, 5)])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_untrained_encode_stays_within_half_a_step_and_within_bits_for(shape, bits):
    w = randn(*shape)
    cfg = ChannelIntConfig(bits=bits)
    enc, out = round_trip(w, cfg)
    m = w.reshape(shape[0], -1)
    step = torch.exp2(fitted_exponents(m, bits)).unsqueeze(1)
    assert ((out.reshape(shape[0], -1) - m).abs() <= step / 2 + 1e-6).all()
    assert_stored_bits(enc, exact=False)  # bits_for counts every channel at `bits`


def test_quantize_integers_are_the_training_forward_over_its_scale():
    m = torch.randn(6, 10, generator=torch.Generator().manual_seed(0)) * 4
    bits = torch.tensor([0.0, 0.8, 2.0, 3.0, 4.5, 8.0])
    e = torch.tensor([0.0, -1.0, 0.5, -2.0, 0.0, -5.0])
    q = quantize(m, bits.reshape(-1, 1), e.reshape(-1, 1))
    assert torch.equal(quantize_integers(m, bits, e).float(), q / torch.exp2(e).reshape(-1, 1))
    assert quantize_integers(m, 2.0, torch.zeros(6)).abs().max() <= 2


def _q(w, b, e):
    return quantize(torch.as_tensor(w), torch.as_tensor(b), torch.as_tensor(e))


def test_forward_matches_the_formula():
    w = torch.tensor([0.3, -1.7, 5.0, -9.0, 2.5])
    out = _q(w, 3.0, 0.0)  # range [-4, 3], round half to even
    assert out.tolist() == [0.0, -2.0, 3.0, -4.0, 2.0]


def test_exponent_scales_the_grid():
    out = _q(torch.tensor([0.3, -0.2]), 4.0, -2.0)  # step 0.25
    assert out.tolist() == [0.25, -0.25]


def test_weight_gradient_is_straight_through_inside_and_zero_when_clipped():
    w = torch.tensor([0.4, 1.2, 7.0, -9.0], requires_grad=True)
    _q(w, 3.0, 0.0).sum().backward()
    assert w.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_bit_gradient_flows_only_through_clipped_weights():
    b = torch.tensor(3.0, requires_grad=True)
    quantize(torch.tensor([7.0]), b, torch.tensor(0.0)).sum().backward()
    assert b.grad.item() == pytest.approx(2 ** 2 * math.log(2))  # d hi / d b = 2^(b-1) ln 2
    b.grad = None
    quantize(torch.tensor([0.4]), b, torch.tensor(0.0)).sum().backward()
    assert b.grad.item() == 0.0


def test_exponent_receives_a_gradient():
    e = torch.tensor(-1.0, requires_grad=True)
    quantize(torch.tensor([0.7, 3.0]), torch.tensor(2.0), e).sum().backward()
    assert e.grad.item() != 0.0


def test_zero_bits_outputs_zero_and_freezes_the_channel():
    w = torch.tensor([0.4, -3.0], requires_grad=True)
    b = torch.tensor(-0.5, requires_grad=True)
    out = quantize(w, b, torch.tensor(0.0))
    out.sum().backward()
    assert out.tolist() == [0.0, 0.0]
    assert b.grad.item() == 0.0 and w.grad.tolist() == [0.0, 0.0]


def test_fractional_bits_below_one_give_an_asymmetric_range():
    out = _q(torch.tensor([-5.0, 5.0, -0.6]), 0.8, 0.0)  # range [-0.87, -0.13]: only -1 and 0
    assert out.tolist() == [-1.0, 0.0, -1.0]


def test_invalid_bits_are_refused():
    with pytest.raises(Big2SmallError, match="bits must be"):
        generator_for(ChannelIntConfig(bits=1))


def test_budget_picks_the_widest_bits_that_fit():
    layout = MatrixLayout((64, 576))
    cfg = ChannelIntGenerator.for_budget(4.2, layout, {})
    assert cfg.bits == 4
    with pytest.raises(Big2SmallError, match="no setting fits"):
        ChannelIntGenerator.for_budget(1.0, layout, {})
