"""Bit packing: LSB-first layout, exact byte counts, round trips, range checks."""

import pytest
import torch

from big2small import bitpack


def _random_values(bits: int, count: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + bits)
    return torch.randint(0, 1 << bits, (count,), generator=g, dtype=torch.int64)


@pytest.mark.parametrize("bits", range(1, bitpack.MAX_BITS + 1))
def test_round_trip_every_width(bits):
    values = _random_values(bits, 101)
    values[0], values[1] = 0, (1 << bits) - 1  # both ends of the range
    out = bitpack.unpack(bitpack.pack(values, bits), bits, values.numel())
    assert out.dtype == torch.int64
    assert torch.equal(out, values)


@pytest.mark.parametrize("bits", [1, 3, 7, 8, 9, 13, 24])
@pytest.mark.parametrize("count", [0, 1, 5, 8, 77])
def test_packed_byte_count_is_exact(bits, count):
    packed = bitpack.pack(_random_values(bits, count), bits)
    assert packed.dtype == torch.uint8
    assert packed.numel() == (count * bits + 7) // 8 == bitpack.packed_nbytes(count, bits)


def test_lsb_first_layout_two_bit_example():
    # 1 -> bits 0,1 = (1, 0); 2 -> bits 2,3 = (0, 1); 3 -> bits 4,5 = (1, 1): 1 + 8 + 16 + 32 = 57.
    assert bitpack.pack(torch.tensor([1, 2, 3]), 2).tolist() == [57]


def test_lsb_first_layout_spans_bytes():
    # Two 12-bit values form the little-endian integer 0x123ABC.
    assert bitpack.pack(torch.tensor([0xABC, 0x123]), 12).tolist() == [0xBC, 0x3A, 0x12]


def test_value_straddling_a_byte_boundary_unpacks():
    packed = torch.tensor([0b1110_0000, 0b0000_0001], dtype=torch.uint8)  # bits 5..8 set
    # width 3: value 1 = bits 3..5 (only bit 5 set) = 4; value 2 = bits 6..8, all set = 7.
    assert bitpack.unpack(packed, 3, 3).tolist() == [0, 4, 7]
    # width 4: value 1 = bits 4..7 (5, 6, 7 set) = 14; value 2 = bits 8..11 (bit 8 set) = 1.
    assert bitpack.unpack(packed, 4, 4).tolist() == [0, 14, 1, 0]


def test_rejects_value_too_large():
    with pytest.raises(ValueError):
        bitpack.pack(torch.tensor([0, 8]), 3)


def test_rejects_negative_value():
    with pytest.raises(ValueError):
        bitpack.pack(torch.tensor([1, -1]), 4)


@pytest.mark.parametrize("bits", [0, bitpack.MAX_BITS + 1])
def test_rejects_width_out_of_range(bits):
    with pytest.raises(ValueError):
        bitpack.pack(torch.tensor([0]), bits)
    with pytest.raises(ValueError):
        bitpack.unpack(torch.zeros(4, dtype=torch.uint8), bits, 1)


def test_unpack_rejects_wrong_stream_length():
    packed = bitpack.pack(torch.tensor([1, 2, 3]), 5)  # 15 bits -> 2 bytes
    with pytest.raises(ValueError):
        bitpack.unpack(packed, 5, 4)  # 20 bits would need 3 bytes


def _reference_pack(values: list[int], bits: int) -> list[int]:
    """The layout written out bit by bit: value k's bit i is stream bit k * bits + i."""
    out = [0] * ((len(values) * bits + 7) // 8)
    for k, v in enumerate(values):
        for i in range(bits):
            if v >> i & 1:
                t = k * bits + i
                out[t // 8] |= 1 << (t % 8)
    return out


@pytest.mark.parametrize("bits", range(1, bitpack.MAX_BITS + 1))
def test_pack_is_the_bit_by_bit_layout_for_every_width_and_integer_dtype(bits):
    for count in (0, 1, 7, 8, 9, 203):
        values = _random_values(bits, count, seed=count)
        expected = _reference_pack(values.tolist(), bits)
        dtypes = [torch.int64, torch.int32] + ([torch.uint8] if bits <= 8 else [])
        for dtype in dtypes:
            assert bitpack.pack(values.to(dtype), bits).tolist() == expected, (count, dtype)
