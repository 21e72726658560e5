"""Low-rank SVD: rank by value, energy or budget; fp16 factors; dense fallback; exact bits."""

import math

import pytest
import torch

from big2small.errors import Big2SmallError
from big2small.generators import HEADER_BITS, LowRankConfig, generator_for
from big2small.generators.lowrank import LowRankGenerator
from big2small.layout import MatrixLayout
from codec_checks import assert_stored_bits, randn, round_trip


def _with_singular_values(rows, cols, s, seed=0):
    u, _ = torch.linalg.qr(randn(rows, len(s), seed=seed))
    v, _ = torch.linalg.qr(randn(cols, len(s), seed=seed + 1))
    return u @ torch.diag(torch.tensor(s)) @ v.t()


SHAPES = [(7, 5), (1, 1), (3, 1000), (33, 3, 3, 3), (64, 48)]
CONFIGS = [LowRankConfig(rank=1), LowRankConfig(rank=2), LowRankConfig(rank=100), LowRankConfig(bits_per_weight=4.0)]


def test_true_rank_is_reproduced_up_to_fp16():
    w = randn(40, 3, seed=1) @ randn(3, 30, seed=2)
    enc, out = round_trip(w, LowRankConfig(rank=3))
    assert enc.meta == {"rank": 3, "dense": 0}
    assert set(enc.tensors) == {"L", "R"}
    assert (out - w).norm() / w.norm() < 2e-3


def test_truncation_error_is_the_eckart_young_optimum():
    w = randn(50, 40, seed=3)
    s = torch.linalg.svdvals(w)
    _, out = round_trip(w, LowRankConfig(rank=5))
    assert (out - w).norm().item() == pytest.approx(s[5:].norm().item(), rel=1e-3)


def test_factors_are_fp16_and_balanced():
    w = _with_singular_values(30, 20, [100.0, 1.0])
    enc, _ = round_trip(w, LowRankConfig(rank=2))
    left, right = enc.tensors["L"], enc.tensors["R"]
    assert left.dtype == right.dtype == torch.float16
    assert left.shape == (30, 2) and right.shape == (2, 20)
    # sqrt(S) on each side: column k of L and row k of R have the same norm, sqrt(s_k).
    torch.testing.assert_close(left.float().norm(dim=0), right.float().norm(dim=1), rtol=1e-3, atol=0)
    assert left.float().norm(dim=0)[0].item() == pytest.approx(10.0, rel=1e-3)


@pytest.mark.parametrize("energy,rank", [(0.5, 1), (0.9, 2), (0.99, 2), (0.995, 3), (1.0, 4)])
def test_rank_chosen_by_energy(energy, rank):
    # squared singular values 100, 25, 1, 0.25: shares 0.792, 0.990, 0.998, 1
    w = _with_singular_values(40, 36, [10.0, 5.0, 1.0, 0.5], seed=4)
    enc, _ = round_trip(w, LowRankConfig(energy=energy))
    assert enc.meta["rank"] == rank and enc.meta["dense"] == 0


def test_full_energy_of_a_full_rank_matrix_is_dense():
    enc, out = round_trip(randn(12, 10, seed=15), LowRankConfig(energy=1.0))
    assert enc.meta == {"rank": 10, "dense": 1}


def test_default_is_energy_point_nine():
    w = _with_singular_values(40, 36, [10.0, 5.0, 1.0, 0.5], seed=4)
    enc, _ = round_trip(w, LowRankConfig())
    assert enc.meta["rank"] == 2


def test_encoded_bits_for_energy_rank():
    w = _with_singular_values(40, 36, [10.0, 5.0, 1.0, 0.5], seed=4)
    enc, _ = round_trip(w, LowRankConfig(energy=0.9))
    assert enc.total_bits == 16 * 2 * (40 + 36) + HEADER_BITS
    assert enc.total_bits == LowRankGenerator.bits_for(LowRankConfig(rank=enc.meta["rank"]), MatrixLayout((40, 36)))


def test_bits_for_refuses_energy_rank():
    with pytest.raises(Big2SmallError):
        LowRankGenerator.bits_for(LowRankConfig(energy=0.9), MatrixLayout((40, 36)))
    with pytest.raises(Big2SmallError):
        LowRankGenerator.bits_for(LowRankConfig(), MatrixLayout((40, 36)))


@pytest.mark.parametrize("bpw", [0.5, 1.0, 3.3, 7.9])
def test_rank_chosen_by_budget(bpw):
    rows, cols = 96, 160
    enc, _ = round_trip(randn(rows, cols, seed=5), LowRankConfig(bits_per_weight=bpw))
    expected = math.floor((bpw * rows * cols - HEADER_BITS) / (16 * (rows + cols)))
    assert enc.meta["rank"] == expected
    assert enc.total_bits <= bpw * rows * cols < enc.total_bits + 16 * (rows + cols)


def test_budget_too_small_still_gives_rank_one():
    enc, _ = round_trip(randn(64, 64, seed=6), LowRankConfig(bits_per_weight=0.01))
    assert enc.meta["rank"] == 1


def test_dense_fallback_when_factoring_saves_nothing():
    w = randn(8, 8, seed=7)  # r (O + J) >= O J from r = 4
    enc, out = round_trip(w, LowRankConfig(rank=4))
    assert enc.meta == {"rank": 4, "dense": 1}
    assert set(enc.tensors) == {"dense"} and enc.tensors["dense"].dtype == torch.float16
    assert enc.bits == {"dense": 16 * 64, "header": HEADER_BITS}
    assert torch.equal(out, w.half().float())


def test_rank_just_below_break_even_is_factored():
    enc, _ = round_trip(randn(8, 8, seed=7), LowRankConfig(rank=3))
    assert enc.meta == {"rank": 3, "dense": 0}


def test_rank_above_full_is_capped_and_dense():
    enc, out = round_trip(randn(7, 5, seed=8), LowRankConfig(rank=50))
    assert enc.meta == {"rank": 5, "dense": 1}
    assert enc.total_bits == 16 * 35 + HEADER_BITS


def test_large_budget_stores_dense():
    enc, _ = round_trip(randn(20, 30, seed=9), LowRankConfig(bits_per_weight=17.0))
    assert enc.meta["dense"] == 1


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
def test_bits_for_equals_encoded_bits_and_bytes(shape, cfg):
    enc, _ = round_trip(randn(*shape), cfg)
    assert_stored_bits(enc)


def test_conv_round_trip_at_true_rank():
    w = (randn(33, 2, seed=11) @ randn(2, 27, seed=12)).reshape(33, 3, 3, 3)
    _, out = round_trip(w, LowRankConfig(rank=2))
    assert (out - w).norm() / w.norm() < 2e-3


def test_all_zero_tensor_is_exact():
    w = torch.zeros(12, 30)
    enc, out = round_trip(w, LowRankConfig(energy=0.9))
    assert enc.meta["rank"] == 1
    assert torch.equal(out, w)


def test_constant_tensor_is_rank_one():
    w = torch.full((12, 30), 0.25)
    enc, out = round_trip(w, LowRankConfig())
    assert enc.meta["rank"] == 1
    torch.testing.assert_close(out, w, rtol=2e-3, atol=0)


def test_one_by_one_tensor_is_dense():
    enc, out = round_trip(torch.tensor([[3.5]]), LowRankConfig(rank=1))
    assert enc.meta["dense"] == 1 and out.item() == 3.5


def test_fp16_overflow_is_refused():
    with pytest.raises(Big2SmallError):
        generator_for(LowRankConfig(rank=4)).encode(torch.full((4, 4), 1e6))


def test_for_budget_returns_largest_fitting_rank():
    layout = MatrixLayout((256, 512))
    cfg = LowRankGenerator.for_budget(2.0, layout, {})
    assert cfg.rank is not None and cfg.energy is None and cfg.bits_per_weight is None
    assert LowRankGenerator.bits_for(cfg, layout) <= 2.0 * layout.numel
    assert LowRankGenerator.bits_for(LowRankConfig(rank=cfg.rank + 1), layout) > 2.0 * layout.numel


def test_for_budget_counts_the_header():
    layout = MatrixLayout((64, 64))  # rank 1 costs exactly 16 * 128 + 128 bits
    exact = (16 * 128 + HEADER_BITS) / layout.numel
    assert LowRankGenerator.for_budget(exact, layout, {}).rank == 1
    with pytest.raises(Big2SmallError):
        LowRankGenerator.for_budget(exact - 1e-3, layout, {})


def test_for_budget_prefers_dense_when_it_fits():
    layout = MatrixLayout((7, 7))  # rank 3 would also fit, but dense fp16 is nearly lossless
    cfg = LowRankGenerator.for_budget((16 * 49 + HEADER_BITS) / 49, layout, {})
    assert cfg.rank == 7
    assert LowRankGenerator.bits_for(cfg, layout) == 16 * 49 + HEADER_BITS


def test_for_budget_refuses_impossible_budget():
    with pytest.raises(Big2SmallError):
        LowRankGenerator.for_budget(0.1, MatrixLayout((32, 32)), {})


def test_for_budget_keeps_a_fixed_rank():
    layout = MatrixLayout((128, 128))
    assert LowRankGenerator.for_budget(2.0, layout, {"rank": 4}).rank == 4
    with pytest.raises(Big2SmallError):
        LowRankGenerator.for_budget(2.0, layout, {"rank": 64})


def test_for_budget_refuses_fixed_energy():
    with pytest.raises(Big2SmallError):
        LowRankGenerator.for_budget(2.0, MatrixLayout((128, 128)), {"energy": 0.9})


def test_for_budget_config_encodes_within_budget():
    w = randn(3, 1000, seed=13)
    layout = MatrixLayout((3, 1000))
    cfg = LowRankGenerator.for_budget(12.0, layout, {})
    enc = generator_for(cfg).encode(w)
    assert enc.total_bits <= 12.0 * layout.numel


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rank": 0},
        {"rank": 2.5},
        {"energy": 0.0},
        {"energy": 1.5},
        {"bits_per_weight": 0.0},
        {"bits_per_weight": float("inf")},
        {"rank": 4, "energy": 0.9},
        {"rank": 4, "bits_per_weight": 2.0},
        {"energy": 0.9, "bits_per_weight": 2.0},
    ],
)
def test_invalid_config_is_refused(kwargs):
    with pytest.raises(Big2SmallError):
        generator_for(LowRankConfig(**kwargs))


def test_factors_are_the_same_bytes_on_any_thread_count():
    w = torch.randn(768, 768, generator=torch.Generator().manual_seed(1))  # fp32 SVD differed on this one
    threads = torch.get_num_threads()
    try:
        stored = []
        for n in (1, 2):
            torch.set_num_threads(n)
            stored.append(LowRankGenerator(LowRankConfig(rank=64)).encode(w).tensors)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(stored[0][k], stored[1][k]) for k in ("L", "R"))
