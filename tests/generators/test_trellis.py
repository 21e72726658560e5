"""The trellis codec: exactly k bits per weight plus one fp16 scale per group, near the Gaussian
rate-distortion bound (far nearer than rounding), exact on zeros, deterministic, any shape."""

import math

import pytest
import torch

from big2small.errors import Big2SmallError
from big2small.generators import decode, generator_for, trellis_codes
from big2small.generators.trellis import MIN_SEQUENCE, TrellisConfig, TrellisGenerator
from big2small.generators.uniform import UniformConfig
from big2small.layout import MatrixLayout
from codec_checks import assert_stored_bits, randn


def sqnr_db(w, w_hat):
    return 10 * math.log10(float(w.pow(2).sum() / (w - w_hat).pow(2).sum()))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8])
def test_codes_take_exactly_k_bits_per_weight_plus_a_scale_per_row(k):
    w = randn(12, 300, seed=k)
    cfg = TrellisConfig(bits=k, state_bits=10)
    enc = generator_for(cfg).encode(w)
    assert enc.bits == {"codes": 12 * 300 * k, "scales": 12 * 16, "header": 128, "rotation": 32}
    assert_stored_bits(enc)
    TrellisGenerator.check_stored(enc)


@pytest.mark.parametrize("k", [2, 3, 4])
def test_gaussian_weights_come_within_two_db_of_the_bound_and_far_ahead_of_rounding(k):
    """On i.i.d. Gaussian rows, the bound is D(R) = sigma^2 2^(-2R): SQNR 6.02 R dB. The trellis at
    k bits per weight (plus 16 bits per 512-weight row) is within 2 dB of it with the default
    register, and at least 2.5 dB ahead of round-to-nearest at the same code width."""
    w = randn(32, 512, seed=10 + k)
    t_cfg = TrellisConfig(bits=k, rotate="none")
    enc = generator_for(t_cfg).encode(w)
    rate = enc.total_bits / w.numel()
    gap = 6.02 * rate - sqnr_db(w, decode(enc))
    assert gap < 2.0
    rtn = decode(generator_for(UniformConfig(bits=k, group_size=128)).encode(w))
    assert sqnr_db(w, decode(enc)) > sqnr_db(w, rtn) + 2.5


def test_a_longer_register_codes_better():
    w = randn(16, 512, seed=3)
    err = {L: sqnr_db(w, decode(generator_for(TrellisConfig(bits=2, state_bits=L)).encode(w))) for L in (8, 10, 12)}
    assert err[8] < err[10] < err[12]


def test_zero_groups_decode_to_exact_zeros_and_scales_are_least_squares():
    w = randn(6, 300, seed=4)
    w[2] = 0
    enc = generator_for(TrellisConfig(bits=2, state_bits=8, rotate="none")).encode(w)
    out = decode(enc)
    assert torch.equal(out[2], torch.zeros(300))
    # Rescaling any row's decoded values cannot reduce its error: the stored scale is optimal (to fp16).
    for row in (0, 3):
        v = out[row].double()
        best = float((w[row].double() @ v) / (v @ v))
        assert abs(best - 1) < 2e-3


@pytest.mark.parametrize("shape", [(1, 1), (3, 9), (16, 3, 3, 3), (5, 1000), (7, 257)])
def test_odd_shapes_round_trip(shape):
    w = randn(*shape, seed=5)
    layout = MatrixLayout(tuple(shape))
    enc = generator_for(TrellisConfig(bits=3, state_bits=8)).encode(w, layout)
    out = decode(enc)
    assert out.shape == w.shape
    assert_stored_bits(enc)
    if w.numel() > 16:
        assert sqnr_db(w, out) > 9


def test_short_rows_share_a_scale_over_whole_rows():
    layout = MatrixLayout((64, 9))  # a depthwise 3x3 kernel's matrix view
    bits = TrellisGenerator.bits_for(TrellisConfig(bits=2, state_bits=8), layout)
    groups = math.ceil(64 / (MIN_SEQUENCE // 9))
    assert bits == 64 * 9 * 2 + 16 * groups + 128 + 32


def test_encoding_is_deterministic():
    w = randn(20, 256, seed=6)
    cfg = TrellisConfig(bits=2, state_bits=8)
    a, b = generator_for(cfg).encode(w, seed=1), generator_for(cfg).encode(w, seed=1)
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


def test_for_budget_takes_the_widest_code_that_fits():
    layout = MatrixLayout((64, 576))
    assert TrellisGenerator.for_budget(3.1, layout, {}).bits == 3
    assert TrellisGenerator.for_budget(4.0, layout, {}).bits == 3  # 4 bits plus scales exceed 4.0
    assert TrellisGenerator.for_budget(6, layout, {"state_bits": 10}).state_bits == 10
    with pytest.raises(Big2SmallError, match="no setting fits"):
        TrellisGenerator.for_budget(0.9, layout, {})


@pytest.mark.parametrize("bad, match", [
    ({"bits": 0}, "bits must be in 1..8"), ({"bits": 9}, "bits must be in 1..8"),
    ({"state_bits": 11}, "no code table for bits=2 with state_bits=11"),
    ({"bits": 8, "state_bits": 8}, "no code table for bits=8 with state_bits=8"),
    ({"bits": 5, "state_bits": 14}, "no code table .* shipped: L=8: 1-7 bits; .* L=14: 2-4 bits"),
    ({"group_size": -1}, "group_size must be >= 0"),
])
def test_bad_settings_are_refused(bad, match):
    with pytest.raises(Big2SmallError, match=match):
        TrellisConfig(**bad).validate()


def test_every_shipped_table_is_finite_gaussian_shaped_and_complete():
    for k, state_bits in trellis_codes.shipped_pairs():
        values = trellis_codes.state_values(k, state_bits)
        assert values.shape == (1 << state_bits,) and bool(torch.isfinite(values).all())
        assert abs(float(values.mean())) < 0.1 and 0.6 < float(values.std()) < 1.2


def test_a_lloyd_step_never_increases_the_error_it_starts_from():
    x = trellis_codes.unit_rms_sequences(16, 128, seed=2)
    values = trellis_codes.gaussian_quantile_code(6, seed=0)
    errors = []
    for _ in range(3):
        values, mse = trellis_codes.lloyd_step(values, x, 2)
        errors.append(mse)
    assert errors[0] >= errors[1] >= errors[2]
