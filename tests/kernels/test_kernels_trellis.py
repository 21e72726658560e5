"""The trellis codec's compiled kernels against its own decode."""

import pytest
import torch

from big2small import bitpack
from big2small.generators import GeneratorConfig
from big2small.generators.base import Encoded
from big2small.generators.trellis import trellis_grouping
from big2small.generators.trellis_codes import shipped_pairs
from big2small.layout import MatrixLayout
from kernel_checks import check_encoded, check_kernels


@pytest.mark.parametrize("bits, state_bits", [(1, 8), (2, 8), (3, 10), (4, 10), (4, 12), (5, 8), (7, 8)])
def test_every_code_width_matches_the_codec(bits, state_bits):
    check_kernels({"method": "trellis", "bits": bits, "state_bits": state_bits, "rotate": "none"}, (12, 300))


def _random_codes(bits: int, state_bits: int, shape: tuple[int, int], group_size: int, seed: int) -> Encoded:
    """A trellis record with uniformly random codes and scales (no search: any code sequence is valid)."""
    cfg = GeneratorConfig.from_dict({"method": "trellis", "bits": bits, "state_bits": state_bits,
                                     "group_size": group_size, "rotate": "none"})
    layout = MatrixLayout(shape)
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (layout.numel,), generator=gen)
    scales = (torch.rand(trellis_grouping(cfg, layout).n_groups, generator=gen) + 0.1).half()
    return Encoded("trellis", cfg, layout, torch.float32, {"codes": bitpack.pack(codes, bits), "scales": scales}, {})


@pytest.mark.parametrize("bits, state_bits", shipped_pairs())
def test_every_shipped_code_width_and_register_matches_the_codec(bits, state_bits):
    # Random codes reach every state; odd shapes: 17 rows (not a multiple of the 8 rows a pass
    # reads), 45 columns (not a multiple of the 8-weight chunk), groups of 20 along a row.
    for shape, group_size, batch in [((17, 45), 0, 1), ((3, 45), 20, 2), ((1, 13), 0, 3)]:
        check_encoded(_random_codes(bits, state_bits, shape, group_size, seed=bits * 100 + state_bits), batch=batch)


@pytest.mark.parametrize("shape, group_size", [
    ((37, 101), 0),   # rows under 256 weights are joined: a row starts from the register its group left
    ((9, 200), 64),   # groups along a row, the last one shorter
    ((3, 1001), 0),   # odd row length: 4-bit rows start mid-byte
    ((1, 5), 0),
])
def test_odd_shapes_and_groupings_match_the_codec(shape, group_size):
    check_kernels({"method": "trellis", "bits": 4, "state_bits": 8, "group_size": group_size, "rotate": "none"}, shape)
    check_kernels({"method": "trellis", "bits": 3, "state_bits": 8, "group_size": group_size, "rotate": "none"}, shape, seed=2)


def test_rows_joined_into_groups_continue_the_register_at_every_width():
    # [40, 9] rows are joined 28 to a group: rows start mid-register; odd k puts chunks mid-byte.
    for bits, state_bits in [(1, 8), (3, 12), (5, 10), (8, 12), (4, 16)]:
        check_encoded(_random_codes(bits, state_bits, (40, 9), 0, seed=bits), batch=1)


def test_rotated_codes_are_multiplied_in_the_coded_domain():
    # With rotation, the kernels work on the coded (rotated) matrix: decode_matrix, not decode.
    check_kernels({"method": "trellis", "bits": 4, "state_bits": 8}, (16, 96))
