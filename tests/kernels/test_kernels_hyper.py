"""The hyper codec's compiled kernels against its own decode."""

import pytest

from big2small.generators import GeneratorConfig, generator_for
from big2small.kernels import kernel_for
from kernel_checks import check_kernels


@pytest.mark.parametrize("options", [
    {"bits": 8},                                    # the default: 8-bit index per pair, shaped codebook
    {"bits": 6, "group_size": 64},
    {"bits": 12, "codebook": "fitted", "group_size": 32},
    {"bits": 9, "dim": 3, "group_size": 0, "codebook": "winding"},  # indices across bytes, odd vector size
    {"bits": 4, "dim": 1, "group_size": 256},        # groups span rows
    {"bits": 8, "codebook": "winding"},
    {"bits": 16, "dim": 4, "group_size": 64},
])
def test_codebooks_and_widths_match_the_codec(options):
    check_kernels({"method": "hyper", "scale_grid": [1.0], **options}, (17, 45))


def test_ring_codes_have_no_kernel():
    enc = generator_for(GeneratorConfig.from_dict({"method": "hyper", "bits": 8, "codebook": "winding", "rings": 1})).encode(
        __import__("torch").randn(8, 64))
    assert kernel_for(enc) is None
