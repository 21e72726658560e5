"""The uniform codec's compiled kernels against its own decode."""

import pytest

from big2small.generators import GeneratorConfig, generator_for
from big2small.kernels import uniform
from kernel_checks import check_kernels


@pytest.mark.parametrize("bits, symmetric", [(b, False) for b in (1, 2, 3, 4, 5, 8)] + [(b, True) for b in (2, 3, 4, 6, 8)])
def test_every_code_width_matches_the_codec(bits, symmetric):
    check_kernels({"method": "uniform", "bits": bits, "group_size": 32, "symmetric": symmetric}, (48, 96))


@pytest.mark.parametrize("shape, group_size", [
    ((37, 101), 32),   # last group of each row shorter, odd row length: 4-bit rows start mid-byte
    ((64, 576), 128),  # SmolLM2's widths
    ((9, 13), 7),      # groups that do not divide the row
    ((20, 30), 0),     # one group per row
    ((5, 10), 64),     # groups span whole rows (rows shorter than a group)
    ((1, 1), 32),
])
def test_odd_shapes_and_groupings_match_the_codec(shape, group_size):
    check_kernels({"method": "uniform", "bits": 4, "group_size": group_size}, shape)
    check_kernels({"method": "uniform", "bits": 3, "group_size": group_size, "symmetric": True}, shape, seed=1)


def test_batch_of_one_and_many_rows():
    for batch in (1, 7):
        check_kernels({"method": "uniform", "bits": 4, "group_size": 32, "symmetric": True}, (40, 64), batch=batch)


def test_fp16_scales_are_read_exactly_including_subnormals():
    import torch

    weight = torch.randn(8, 64) * 1e-6  # group scales below fp16's normal range (6.1e-5 / 7)
    enc = generator_for(GeneratorConfig.from_dict({"method": "uniform", "bits": 4, "group_size": 16})).encode(weight)
    assert bool((enc.tensors["scales"].float() < 6.1e-5).all())
    assert torch.equal(uniform.decode_matrix(uniform.resident(enc), enc), generator_for(enc.config).decode_matrix(enc))
