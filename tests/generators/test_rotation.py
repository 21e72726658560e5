"""Incoherence processing: the rotation is orthogonal on every size (powers of two, odd factors,
large odd parts left alone), undone exactly by decoding, stored as a counted seed, and composes
with every codec that offers it."""

import pytest
import torch

from big2small.errors import Big2SmallError
from big2small.generators import GeneratorConfig, REGISTRY, decode, generator_for, rotation
from big2small.generators.hyper import HyperConfig
from big2small.generators.trellis import TrellisConfig
from big2small.generators.uniform import UniformConfig
from big2small.layout import MatrixLayout
from codec_checks import assert_stored_bits, randn


@pytest.mark.parametrize("n", [1, 2, 64, 576, 384, 9, 27, 40, 7 * 16])
def test_hadamard_and_odd_factor_make_an_orthogonal_transform(n):
    eye = torch.eye(n)
    q = rotation._apply(eye, seed=5, which=0, inverse=False)  # rows: Q e_i
    torch.testing.assert_close(q @ q.T, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(rotation._apply(q, seed=5, which=0, inverse=True), eye, atol=1e-5, rtol=0)


def test_hadamard_is_its_own_inverse_and_keeps_norms():
    x = randn(3, 96, seed=1)
    y = rotation.hadamard(x)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1))
    torch.testing.assert_close(rotation.hadamard(y), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["input", "both"])
@pytest.mark.parametrize("shape", [(24, 40), (576, 1536), (16, 27), (1, 9), (1031, 64)])
def test_rotate_then_unrotate_is_the_identity(mode, shape):
    layout = MatrixLayout(shape)
    cfg = UniformConfig(rotate=mode)
    w = randn(*shape, seed=2)
    r = rotation.rotate(w, cfg, layout, 11)
    torch.testing.assert_close(r.norm(), w.norm(), rtol=1e-5, atol=0)
    back = rotation.unrotate(r, cfg, layout, rotation.seed_tensor(11))
    torch.testing.assert_close(back, w, atol=1e-5, rtol=0)


def test_a_dimension_with_a_large_odd_part_is_left_as_it_is():
    layout = MatrixLayout((1031, 64))  # 1031 is prime, over MAX_DENSE_ODD
    assert rotation.rotated_dims(UniformConfig(rotate="both"), layout) == (False, True)
    assert rotation.rotated_dims(UniformConfig(rotate="input"), layout) == (False, True)
    assert rotation.rotated_dims(UniformConfig(), layout) == (False, False)


def test_rotation_spreads_an_outlier_over_its_row():
    w = randn(64, 512, seed=3) * 0.02
    w[5, 17] = 2.0
    r = rotation.rotate(w, UniformConfig(rotate="input"), MatrixLayout(w.shape), 0)
    kurtosis = lambda m: float(((m - m.mean()) ** 4).mean() / m.var() ** 2)
    assert kurtosis(w[5]) > 100 and kurtosis(r[5]) < 3  # no heavy tail left (a Gaussian has 3)
    assert abs(kurtosis(r[4]) - 3) < 0.6  # a Gaussian row stays Gaussian
    assert float(r.abs().max()) < 0.2 * float(w.abs().max())


ROTATING = {
    "uniform": UniformConfig(bits=3, group_size=64),
    "hyper": HyperConfig(bits=6, group_size=64),
    "trellis": TrellisConfig(bits=3, state_bits=8, rotate="none"),
}


def test_every_codec_with_a_rotate_option_is_listed():
    with_option = sorted(m for m, g in REGISTRY.items() if issubclass(g.config_type, rotation.RotatableConfig))
    assert with_option == sorted(ROTATING)


@pytest.mark.parametrize("mode", ["input", "both"])
@pytest.mark.parametrize("method", sorted(ROTATING))
def test_rotation_composes_with_the_codec_and_costs_its_seed(method, mode):
    """Rotated, a codec stores the same arrays plus a 32-bit seed, and decodes back to the original
    basis: on weights with an outlier column the error falls."""
    w = randn(48, 256, seed=4) * 0.02
    w[:, 3] *= 30  # an outlier column, as in real LLM layers
    plain_cfg = ROTATING[method]
    rotated_cfg = GeneratorConfig.from_dict({**plain_cfg.to_dict(), "rotate": mode})
    plain, rotated = generator_for(plain_cfg).encode(w), generator_for(rotated_cfg).encode(w, seed=9)
    assert rotated.total_bits == plain.total_bits + 32 and rotated.bits["rotation"] == 32
    assert int(rotated.tensors["rotation_seed"][0]) == 9
    assert_stored_bits(rotated)
    REGISTRY[method].check_stored(rotated)
    err = lambda enc: float((decode(enc) - w).norm() / w.norm())
    assert err(rotated) < err(plain)
    # The same seed gives the same bytes.
    again = generator_for(rotated_cfg).encode(w, seed=9)
    assert all(torch.equal(again.tensors[k], rotated.tensors[k]) for k in rotated.tensors)


def test_an_unknown_rotation_is_refused():
    with pytest.raises(Big2SmallError, match="rotate must be one of"):
        UniformConfig(rotate="random").validate()
    with pytest.raises(Big2SmallError, match="rotate must be one of"):
        TrellisConfig(rotate="yes").validate()


def test_old_configs_without_the_option_read_as_unrotated():
    cfg = GeneratorConfig.from_dict({"method": "uniform", "bits": 4, "group_size": 128, "symmetric": False})
    assert cfg.rotate == "none" and not rotation.rotates(cfg)
