"""Error curves: the candidate ladder of a method, and errors on a row sample that predict the
whole tensor's."""

import pytest
import torch

from big2small.allocation.curves import method_candidates, relative_errors, row_sample
from big2small.generators import REGISTRY, RawConfig, decode, generator_for
from big2small.generators.trellis import TrellisConfig
from big2small.generators.uniform import UniformConfig
from big2small.layout import MatrixLayout


def test_uniform_ladder_is_distinct_grows_in_bits_and_keeps_pinned_options():
    layout = MatrixLayout((256, 512))
    ladder = method_candidates("uniform", layout, {"group_size": 64})
    bits = [REGISTRY["uniform"].bits_for(c, layout) for c in ladder]
    assert len(ladder) == len(set(map(str, ladder))) >= 6
    assert bits == sorted(bits)
    assert all(c.group_size == 64 for c in ladder)


def test_trellis_ladder_is_every_width():
    ladder = method_candidates("trellis", MatrixLayout((256, 512)), {"state_bits": 10})
    assert sorted(c.bits for c in ladder) == list(range(1, 9))


def test_row_sample_takes_whole_evenly_spaced_rows():
    m = torch.arange(100 * 30, dtype=torch.float32).reshape(100, 30)
    s = row_sample(m, 300)
    assert s.shape == (10, 30)
    assert s[0, 0] == 0 and s[-1, 0] == m[-1, 0]
    assert row_sample(m, 10 ** 6) is m


@pytest.mark.parametrize("config", [UniformConfig(bits=3, group_size=64), TrellisConfig(bits=2, state_bits=8)])
def test_sample_error_predicts_the_whole_tensor(config):
    torch.manual_seed(0)
    m = torch.randn(512, 256) * torch.linspace(0.5, 2.0, 512).unsqueeze(1)  # rows of unequal scale
    whole = decode(generator_for(config).encode(m)).sub(m).pow(2).sum() / m.pow(2).sum()
    [sampled] = relative_errors(m, [config], max_weights=8192)
    assert sampled == pytest.approx(float(whole), rel=0.1)


def test_errors_fall_with_bits_and_raw_is_almost_exact():
    torch.manual_seed(0)
    m = torch.randn(64, 256)
    errors = relative_errors(m, [UniformConfig(bits=b, group_size=64) for b in (2, 3, 4, 6)] + [RawConfig(dtype="float16")],
                             max_weights=4096)
    assert errors[:4] == sorted(errors[:4], reverse=True)
    assert errors[4] < 1e-6
