"""The trellis codec's compiled kernels against its own decode."""

import pytest

from kernel_checks import check_kernels


@pytest.mark.parametrize("bits, state_bits", [(1, 8), (2, 8), (3, 10), (4, 10), (4, 12), (5, 8), (7, 8)])
def test_every_code_width_matches_the_codec(bits, state_bits):
    check_kernels({"method": "trellis", "bits": bits, "state_bits": state_bits, "rotate": "none"}, (12, 300))


@pytest.mark.parametrize("shape, group_size", [
    ((37, 101), 0),   # rows under 256 weights are joined: a row starts from the register its group left
    ((9, 200), 64),   # groups along a row, the last one shorter
    ((3, 1001), 0),   # odd row length: 4-bit rows start mid-byte
    ((1, 5), 0),
])
def test_odd_shapes_and_groupings_match_the_codec(shape, group_size):
    check_kernels({"method": "trellis", "bits": 4, "state_bits": 8, "group_size": group_size, "rotate": "none"}, shape)
    check_kernels({"method": "trellis", "bits": 3, "state_bits": 8, "group_size": group_size, "rotate": "none"}, shape, seed=2)


def test_rotated_codes_are_multiplied_in_the_coded_domain():
    # With rotation, the kernels work on the coded (rotated) matrix: decode_matrix, not decode.
    check_kernels({"method": "trellis", "bits": 4, "state_bits": 8}, (16, 96))
