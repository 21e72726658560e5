"""Per-channel integers at their own bit widths: packing, round trips, exact bit accounting."""

import pytest
import torch

from big2small.errors import Big2SmallError
from big2small.generators import ChannelIntConfig, generator_for
from big2small.generators.channel_int import (
    CHANNEL_HEADER_BITS, ChannelIntGenerator, channel_widths, encode_integers, fitted_exponents, pack_rows,
    quantize_integers, unpack_rows,
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


def test_quantize_integers_clamps_to_the_bit_depth_range():
    m = torch.tensor([[10.0, -10.0, 0.4]])
    assert quantize_integers(m, 2.0, torch.zeros(1)).tolist() == [[1, -2, 0]]


def test_zero_bit_depth_gives_zero_integers():
    m = torch.tensor([[10.0, -10.0, 0.4]])
    assert quantize_integers(m, 0.0, torch.zeros(1)).tolist() == [[0, 0, 0]]


def test_invalid_bits_are_refused():
    with pytest.raises(Big2SmallError, match="bits must be"):
        generator_for(ChannelIntConfig(bits=1))


def test_budget_picks_the_widest_bits_that_fit():
    layout = MatrixLayout((64, 576))
    cfg = ChannelIntGenerator.for_budget(4.2, layout, {})
    assert cfg.bits == 4
    with pytest.raises(Big2SmallError, match="no setting fits"):
        ChannelIntGenerator.for_budget(1.0, layout, {})
