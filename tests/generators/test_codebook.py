"""Codebooks of the hyper generator and the exact nearest-codeword search (docs/hyper-compression.md#nearest-codeword-search)."""

import math
from itertools import pairwise

import pytest
import torch
from codec_checks import randn

from big2small.generators import codebook as cb


def brute_force(points, codebook):
    """Squared distances computed directly in float64: (min distance, argmin) per point."""
    p, c = points.double(), codebook.double()
    best_d, best_i = [], []
    for start in range(0, p.shape[0], 8192):
        q = p[start : start + 8192]
        d = (q[:, :1] - c[:, 0]) ** 2
        for k in range(1, c.shape[1]):
            d += (q[:, k : k + 1] - c[:, k]) ** 2
        m, i = d.min(1)
        best_d.append(m)
        best_i.append(i)
    return torch.cat(best_d), torch.cat(best_i)


def chosen_distances(points, codebook, idx):
    return ((points.double() - codebook.double()[idx]) ** 2).sum(1)


def mse(samples, codebook):
    return float(chosen_distances(samples, codebook, cb.nearest(samples, codebook, cache=False)).mean())


# --- constants and fixed codebooks -------------------------------------------------------------


def test_generalized_golden_ratio_dim_1_is_the_golden_ratio():
    assert cb.generalized_golden_ratio(1) == pytest.approx((1 + math.sqrt(5)) / 2, abs=1e-12)


def test_generalized_golden_ratio_dim_2_is_the_plastic_number():
    assert cb.generalized_golden_ratio(2) == pytest.approx(1.32471795724474602596, abs=1e-12)


@pytest.mark.parametrize("bits", [4, 8, 12])
def test_winding_points_fill_the_square_distinctly(bits):
    w = cb.winding(bits)
    assert w.shape == (1 << bits, 2)
    assert w.abs().max() <= 1
    assert torch.equal(w[0], torch.zeros(2))
    assert torch.unique(w, dim=0).shape[0] == 1 << bits


@pytest.mark.parametrize("dim", [1, 3, 4])
def test_winding_in_other_dimensions(dim):
    w = cb.winding(8, dim)
    assert w.shape == (256, dim)
    assert w.abs().max() <= 1
    assert torch.equal(w[0], torch.zeros(dim))
    assert torch.unique(w, dim=0).shape[0] == 256


@pytest.mark.parametrize("bits", [2, 4, 8, 12])
def test_lattice_points_are_distinct_and_centred(bits):
    lat = cb.lattice(bits)
    assert lat.shape == (1 << bits, 2)
    assert lat.abs().max() < 1
    assert torch.unique(lat, dim=0).shape[0] == 1 << bits
    assert lat.double().mean(0).abs().max() < 1e-6


@pytest.mark.parametrize("bits", [1, 5, 9])
def test_lattice_refuses_odd_bits(bits):
    with pytest.raises(ValueError):
        cb.lattice(bits)


# --- nearest ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False])
def test_nearest_small_codebook_equals_brute_force(cache):
    codebook = randn(16, 2, seed=1)
    points = randn(5000, 2, seed=2) * 1.5
    _, expected = brute_force(points, codebook)
    assert torch.equal(cb.nearest(points, codebook, cache=cache), expected)


def test_nearest_grid_table_on_many_points_equals_brute_force(monkeypatch):
    codebook = cb.gaussian_codebook(8)
    points = randn(200_000, 2, seed=3)
    fallback = []
    real = cb._brute_force
    monkeypatch.setattr(cb, "_brute_force", lambda p, c: fallback.append(p.shape[0]) or real(p, c))
    idx = cb.nearest(points, codebook)
    # The grid table answered: only a sliver of points (outside the box, crowded cells) fell back.
    assert sum(fallback) < 0.01 * points.shape[0]
    best, expected = brute_force(points, codebook)
    assert torch.allclose(chosen_distances(points, codebook, idx), best, rtol=0, atol=1e-6)
    assert (idx == expected).double().mean() >= 0.9999


def test_nearest_far_outside_the_codebook_equals_brute_force():
    codebook = cb.gaussian_codebook(8)
    points = randn(20_000, 2, seed=4) * 50
    best, expected = brute_force(points, codebook)
    idx = cb.nearest(points, codebook)
    # fp32 distances at |x| ~ 150 are good to ~1e-4 absolute: a near tie may resolve either way.
    assert torch.allclose(chosen_distances(points, codebook, idx), best, rtol=1e-7, atol=1e-3)
    assert (idx == expected).double().mean() >= 0.999


def test_nearest_three_dimensional_codebook_equals_brute_force():
    codebook = randn(64, 3, seed=5)
    points = randn(20_000, 3, seed=6)
    _, expected = brute_force(points, codebook)
    assert torch.equal(cb.nearest(points, codebook), expected)


@pytest.mark.parametrize("cache", [True, False])
def test_duplicate_codeword_resolves_to_lowest_index(cache):
    codebook = cb.gaussian_codebook(5)
    codebook = torch.cat([codebook[:20], codebook[7:8], codebook[20:]])  # index 20 repeats index 7
    points = torch.cat([codebook[7:8].repeat(3, 1), randn(200, 2, seed=7)])
    idx = cb.nearest(points, codebook, cache=cache)
    assert idx[:3].tolist() == [7, 7, 7]
    assert not (idx == 20).any()


def test_duplicate_codeword_in_3d_resolves_to_lowest_index():
    codebook = randn(10, 3, seed=8)
    codebook = torch.cat([codebook, codebook[2:3]])
    assert cb.nearest(codebook[2:3], codebook).item() == 2


@pytest.mark.parametrize("cache", [True, False])
def test_equidistant_point_goes_to_lowest_index(cache):
    axis = torch.tensor([-1.5, -0.5, 0.5, 1.5])
    codebook = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(16, 2)  # index 4*i + j
    points = torch.tensor([[0.0, 0.5], [0.0, 0.0], [-1.0, -1.0], [1.0, -1.5]])
    # Midpoints of (1,2)-(2,2); of the four around the centre; of four; of (2,0)-(3,0).
    assert cb.nearest(points, codebook, cache=cache).tolist() == [6, 5, 0, 8]


# --- lloyd --------------------------------------------------------------------------------------


def test_lloyd_does_not_increase_mse():
    samples = randn(8000, 2, seed=9)
    init = cb.winding(5) * 2.5
    fitted = cb.lloyd(samples, init, 5)
    assert mse(samples, fitted) < mse(samples, init)


def test_lloyd_each_step_does_not_increase_mse():
    samples = randn(4000, 2, seed=10) ** 3  # heavy tails
    book = cb.gaussian_winding(4)
    errors = [mse(samples, book)]
    for _ in range(4):
        book = cb.lloyd(samples, book, 1)
        errors.append(mse(samples, book))
    assert all(b <= a * (1 + 1e-6) for a, b in pairwise(errors))


def test_lloyd_keeps_a_codeword_with_an_empty_cell():
    samples = randn(2000, 2, seed=11)
    init = torch.cat([cb.gaussian_winding(4), torch.tensor([[100.0, -100.0]])])
    fitted = cb.lloyd(samples, init, 3)
    assert torch.equal(fitted[-1], torch.tensor([100.0, -100.0]))
    assert not torch.equal(fitted[:-1], init[:-1])  # the others did move
    assert torch.isfinite(fitted).all()


# --- fixed, cached codebooks --------------------------------------------------------------------


def test_shaped_codebook_is_deterministic():
    # Group length 32 is fitted at first use (not one of the packaged settings).
    a = cb.shaped_codebook(4, 2, 1.2, 32)
    b = cb.shaped_codebook(4, 2, 1.2, 32)
    fresh = cb._shaped_codebook_cached.__wrapped__(4, 2, 1.2, 32)  # recomputed, bypassing the cache
    assert torch.equal(a, b)
    assert torch.equal(a, fresh)


def test_shaped_codebook_cache_returns_copies():
    first = cb.shaped_codebook(4, 2, 1.0, 128)
    kept = first.clone()
    first.fill_(7.0)
    assert torch.equal(cb.shaped_codebook(4, 2, 1.0, 128), kept)


def test_gaussian_codebook_cache_returns_copies():
    first = cb.gaussian_codebook(4)
    kept = first.clone()
    first.zero_()
    assert torch.equal(cb.gaussian_codebook(4), kept)


def test_shaped_family_tails_grow_with_power():
    kurt = [cb.shaped_kurtosis(2, p, 128) for p in cb.TAIL_POWERS]
    assert all(b > a for a, b in pairwise(kurt))


def test_packaged_codebooks_cover_the_defaults_and_match_their_recipe():
    from big2small.generators import codebook as cb

    packaged = cb._packaged()
    for bits in cb.PACKAGED_BITS:
        for group_len in cb.PACKAGED_GROUP_LENS:
            for member in range(len(cb.TAIL_POWERS)):
                assert packaged[cb.packaged_key(bits, 2, member, group_len)].shape == (1 << bits, 2)
    # The file is what scripts/make_codebooks.py makes (checked on the cheapest entry).
    refit = cb.fit_shaped_codebook(4, 2, cb.TAIL_POWERS[1], 128, cb.PACKAGED_SAMPLES, cb.PACKAGED_ITERS)
    assert torch.allclose(packaged[cb.packaged_key(4, 2, 1, 128)], refit, atol=1e-5)
