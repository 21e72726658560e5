"""hyper_ref, the faithful reproduction of the Hyper-Compression reference code (docs/hyper-compression.md#reference-scheme)."""

import math

import pytest
import torch
from codec_checks import assert_bits_match_bytes, assert_stored_bits, randn, round_trip

from big2small import bitpack
from big2small.errors import Big2SmallError
from big2small.generators import HEADER_BITS, generator_for
from big2small.generators.hyper_ref import (
    HyperRefConfig,
    HyperRefGenerator,
    _Fit,
    _prepare,
    centred_codebook,
)
from big2small.layout import MatrixLayout


def gaussian(*shape, seed=0, std=0.02, mean=0.0):
    return mean + std * randn(*shape, seed=seed)


def indices(enc):
    side = enc.tensors["side"].tolist()
    count = (enc.layout.numel + 1) // 2
    return bitpack.unpack(enc.tensors["codes"], side[3], count), side


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rect_l": 0.0},
        {"rect_l": float("nan")},
        {"num_inner_list": []},
        {"num_inner_list": [0]},
        {"num_inner_list": [2.5]},
        {"class_max": 0},
        {"class_max": 256},
        {"loss_threshold": -1.0},
        {"loss_limit": float("nan")},
        {"hyperfunction": "rebound"},
        {"num_inner_list": [1 << 22], "class_max": 7},  # indices wider than 24 bits
    ],
)
def test_invalid_config_is_refused(kwargs):
    with pytest.raises(Big2SmallError):
        generator_for(HyperRefConfig(**kwargs))


def test_grid_codebook_is_the_reference_lattice():
    n, L, m = 225, 0.1, 15
    cb = centred_codebook(n, L, "grid")
    j = torch.arange(n, dtype=torch.float64)
    expected = torch.stack([torch.fmod(j * L / m**2, L), torch.fmod(j * L / m, L)], 1) - L / 2
    assert cb.shape == (n + 1, 2)
    assert torch.equal(cb[0], torch.zeros(2, dtype=torch.float64))  # code 0 is the centre
    # Equal modulo L: the reference's float64 j * (L/m^2, L/m) lands some multiples of L just below
    # L, so those codewords sit on the top edge of the square rather than the bottom (kept as is).
    diff = cb[1:] - expected
    torch.testing.assert_close(diff - L * torch.round(diff / L), torch.zeros_like(diff), rtol=0, atol=1e-12)
    assert cb[1:].min() >= -L / 2 and cb[1:].max() <= L / 2


def test_winding_codebook_convention():
    n, L = 100, 0.1
    cb = centred_codebook(n, L, "winding")
    j = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    a = torch.tensor([1 / math.pi, 1 / (math.pi + 1)], dtype=torch.float64) / 10
    torch.testing.assert_close(cb[1:], L * torch.frac(j * a) - L / 2, rtol=0, atol=1e-12)
    assert cb[1:].min() >= -L / 2 and cb[1:].max() < L / 2


def test_nearest_codes_match_a_kdtree():
    neighbors = pytest.importorskip("sklearn.neighbors")
    w = gaussian(64, 96, seed=11)
    cfg = HyperRefConfig(num_inner_list=[225])
    enc = generator_for(cfg).encode(w)
    idx, _ = indices(enc)
    points, centre, _, inner = _prepare(w.reshape(-1), cfg.rect_l)
    codebook = centred_codebook(225, cfg.rect_l, "grid") + centre.double()
    tree = neighbors.KDTree(codebook.numpy(), leaf_size=100)
    _, ref = tree.query(points[inner].double().numpy(), k=1)
    assert torch.equal(idx[inner], torch.from_numpy(ref[:, 0]))


def test_gaussian_round_trip_error_is_that_of_the_lattice_step():
    w = gaussian(64, 96, seed=0)
    enc, out = round_trip(w, HyperRefConfig(rect_l=0.1, num_inner_list=[225]))
    assert out.shape == w.shape and out.dtype == w.dtype
    mae = (out - w).abs().mean().item()
    # A lattice of step L/m acts like scalar rounding: E|err| = step/4 = 0.00167 (measured 0.00168).
    step = 0.1 / 15
    assert 0.9 * step / 4 < mae < 1.15 * step / 4
    assert enc.meta["mae"] == pytest.approx(mae, rel=1e-5)


def test_default_n_meets_the_loss_threshold():
    w = gaussian(64, 96, seed=0)
    _, out = round_trip(w, HyperRefConfig())  # n = 1600: step 0.0025, MAE measured 0.00064
    assert (out - w).abs().mean() < HyperRefConfig().loss_threshold


def test_index_width_is_the_bit_length_of_the_largest_index():
    enc, _ = round_trip(gaussian(64, 96, seed=1), HyperRefConfig(num_inner_list=[225]))
    idx, side = indices(enc)
    assert side[3] == int(idx.max()).bit_length()
    assert enc.bits["codes"] == idx.numel() * side[3]
    assert enc.tensors["codes"].numel() == bitpack.packed_nbytes(idx.numel(), side[3])


@pytest.mark.parametrize("shape", [(64, 96), (7, 13), (3, 4), (2, 2, 3), (33, 3, 3, 3), (1, 11)])
@pytest.mark.parametrize("limit", [False, True])
def test_bits_match_payload_bytes_and_bits_for_bounds_them(shape, limit):
    layout = MatrixLayout(shape)
    cfg = HyperRefConfig(num_inner_list=[225, 1600], set_loss_limit=limit)
    enc, _ = round_trip(gaussian(*shape, seed=2), cfg, layout)
    assert enc.bits["header"] == HEADER_BITS
    assert_stored_bits(enc, exact=False)


def test_bits_are_itemised():
    cfg = HyperRefConfig(num_inner_list=[225, 1600])
    enc, _ = round_trip(gaussian(64, 96, seed=3), cfg)
    width = enc.tensors["side"][3].item()
    assert enc.bits == {
        "codes": 64 * 96 // 2 * width,
        "centre": 64,
        "farthest": 64,
        "side": 32,
        "num_inner_list": 128,
        "header": HEADER_BITS,
    }
    assert enc.tensors["num_inner_list"].tolist() == [225, 1600]


def test_bits_for_upper_bound():
    layout = MatrixLayout((64, 96))
    cfg = HyperRefConfig(num_inner_list=[225], class_max=3)  # 226 * 4 codes: 10 bits per pair
    assert HyperRefGenerator.bits_for(cfg, layout) == 3072 * 10 + 64 + 64 + 32 + 64 + HEADER_BITS
    raw = 32 * layout.numel + HEADER_BITS
    # With set_loss_limit the tensor may end up raw fp32, which is larger than 23 bits per pair.
    big = HyperRefConfig(num_inner_list=[1 << 20], set_loss_limit=True)
    assert HyperRefGenerator.bits_for(big, layout) == raw > 3072 * 23 + 224 + HEADER_BITS
    assert HyperRefGenerator.bits_for(cfg, MatrixLayout((3, 3))) == 32 * 9 + HEADER_BITS


def test_odd_length_pads_with_the_mean():
    w = gaussian(7, 13, seed=5, mean=0.3)  # 91 elements: 46 pairs, the last one (w[-1], mean)
    enc, out = round_trip(w, HyperRefConfig(num_inner_list=[225]))
    assert out.shape == (7, 13)
    assert enc.tensors["side"][2].item() == 1
    flat = w.reshape(-1).double()
    mean = flat.mean()
    centre = torch.stack([flat[0::2].sum() / 46, (flat[1::2].sum() + mean) / 46]).float()
    torch.testing.assert_close(enc.tensors["centre"], centre, rtol=0, atol=1e-7)
    assert (out - w).abs().max() < 0.05


def test_even_length_has_no_padding():
    enc, _ = round_trip(gaussian(8, 13, seed=5), HyperRefConfig())
    assert enc.tensors["side"][2].item() == 0


@pytest.mark.parametrize("shape", [(3, 3), (9,), (1, 1), ()])
def test_tiny_tensor_is_stored_raw_exactly(shape):
    w = gaussian(*shape, seed=6, std=1.0) if shape else torch.tensor(0.37)
    enc, out = round_trip(w, HyperRefConfig())
    assert set(enc.tensors) == {"raw"} and enc.tensors["raw"].dtype == torch.float32
    assert enc.bits == {"raw": 32 * w.numel(), "header": HEADER_BITS}
    assert out.shape == w.shape
    assert torch.equal(out, w)


def test_outlier_is_decoded_within_its_ring_error():
    w = gaussian(64, 96, seed=7)
    flat = w.view(-1)
    flat[1000], flat[1001] = -0.6, -0.8  # one pair at distance 1.0, 20 L/2 from the centre
    cfg = HyperRefConfig()  # n = 1600: lattice step h = L/40
    enc, out = round_trip(w, cfg)
    got = out.view(-1)[1000:1002]
    want = torch.tensor([-0.6, -0.8])
    err = (got - want).norm().item()
    # It lies on the last ring, r_C = R = 1.0: the companded point's error (at most about h/sqrt 2
    # inside the lattice) is multiplied by 2 R / L = 20.
    r = (torch.tensor([-0.6, -0.8]) - enc.tensors["centre"]).norm().item()
    assert err <= 2 * r / cfg.rect_l * (cfg.rect_l / 40) * 0.75
    assert err / want.norm().item() < 0.05
    assert torch.equal(enc.tensors["farthest"], want)
    idx, side = indices(enc)
    assert idx[500] // 1601 == side[0]  # the farthest pair is in the outermost ring


def test_tensor_inside_the_square_needs_no_rings():
    g = torch.Generator().manual_seed(8)
    w = (torch.rand(64, 96, generator=g) - 0.5) * 0.08  # all within +-0.04 of ~0: inside L = 0.1
    enc, _ = round_trip(w, HyperRefConfig(num_inner_list=[225], class_max=3))
    idx, side = indices(enc)
    assert side[0] == 0  # the reference stores C = 0 when no point is outside the square
    assert int(idx.max()) <= 225
    assert side[3] == math.ceil(math.log2(225 + 1))  # 8 bits per pair whatever class_max is
    assert enc.bits["codes"] == 8 * 64 * 96 // 2


def _fit(w, cfg, n):
    points, centre, farthest, inner = _prepare(w.reshape(-1), cfg.rect_l)
    return _Fit(points, centre, farthest, inner, cfg.rect_l, n, cfg.hyperfunction)


def test_class_search_stops_at_the_first_c_meeting_the_threshold():
    w = gaussian(64, 96, seed=9, std=0.03)  # a tenth of the pairs lie outside the square
    loose = HyperRefConfig(num_inner_list=[225], class_max=3, loss_threshold=1.0)
    enc, _ = round_trip(w, loose)
    assert enc.tensors["side"][0].item() == 1
    # A threshold between the MAEs of C = 1 and a better C stops exactly at the first that meets it.
    fit = _fit(w, loose, 225)
    maes = [fit.classes(c)[0] for c in (1, 2, 3)]
    first_ok = next(c for c in (2, 3) if maes[c - 1] < maes[0])
    mid = HyperRefConfig(num_inner_list=[225], class_max=3, loss_threshold=maes[first_ok - 1])
    enc, _ = round_trip(w, mid)
    assert enc.tensors["side"][0].item() == first_ok


def test_class_search_keeps_the_best_c_when_none_meets_the_threshold():
    w = gaussian(64, 96, seed=9, std=0.03)
    cfg = HyperRefConfig(num_inner_list=[225], class_max=3, loss_threshold=0.0)
    maes = [_fit(w, cfg, 225).classes(c)[0] for c in (1, 2, 3)]
    enc, out = round_trip(w, cfg)
    chosen = enc.tensors["side"][0].item()
    assert maes[chosen - 1] == min(maes)
    assert enc.meta["mae"] == pytest.approx((out - w).abs().mean().item(), rel=1e-5)


def test_n_search_moves_on_while_the_error_is_above_loss_max():
    w = gaussian(64, 96, seed=10)  # MAE about 0.0017 with n = 225, 0.0006 with n = 1600
    strict = HyperRefConfig(num_inner_list=[225, 1600], loss_max=0.001)
    lax = HyperRefConfig(num_inner_list=[225, 1600], loss_max=0.01)
    assert round_trip(w, strict)[0].tensors["side"][1].item() == 1
    assert round_trip(w, lax)[0].tensors["side"][1].item() == 0
    # The last n is kept even if it misses loss_max.
    enc, _ = round_trip(w, HyperRefConfig(num_inner_list=[100, 225], loss_max=0.0))
    assert enc.tensors["side"][1].item() == 1 and enc.meta["num_inner"] == 225


def test_loss_limit_stores_a_badly_fitting_tensor_raw():
    w = gaussian(32, 64, seed=11, std=1.0)  # far wider than L = 0.1: MAE well above 0.006
    limited = HyperRefConfig(set_loss_limit=True)
    enc, out = round_trip(w, limited)
    assert set(enc.tensors) == {"raw"}
    assert enc.total_bits == 32 * w.numel() + HEADER_BITS
    assert enc.meta["raw"] == 1 and enc.meta["mae"] > limited.loss_limit
    assert torch.equal(out, w)
    assert_bits_match_bytes(enc)
    enc, _ = round_trip(w, HyperRefConfig(set_loss_limit=False))
    assert "codes" in enc.tensors


def test_loss_limit_keeps_a_well_fitting_tensor():
    enc, _ = round_trip(gaussian(32, 64, seed=11), HyperRefConfig(set_loss_limit=True))
    assert "codes" in enc.tensors and enc.meta["raw"] == 0


def test_winding_round_trips_with_bounded_error():
    w = gaussian(64, 96, seed=0)
    enc, out = round_trip(w, HyperRefConfig(hyperfunction="winding"))
    assert out.shape == w.shape
    # Measured 0.00077 (the grid: 0.00064) with n = 1600; max error 0.0034.
    assert (out - w).abs().mean() < 0.001
    assert (out - w).abs().max() < 0.01
    grid, _ = round_trip(w, HyperRefConfig())
    assert not torch.equal(grid.tensors["codes"], enc.tensors["codes"])


def test_constant_tensor_is_exact():
    w = torch.full((6, 50), -0.37)
    enc, out = round_trip(w, HyperRefConfig())
    assert torch.equal(out, w)
    assert enc.tensors["side"][3].item() == 1  # every index is 0; the width is at least 1


def test_transposed_layout_decodes_to_the_original_shape():
    w = gaussian(48, 20, seed=12)  # HF Conv1D stores [in, out]
    enc_t, out_t = round_trip(w, HyperRefConfig(num_inner_list=[225]), MatrixLayout((48, 20), transposed=True))
    enc_p, out_p = round_trip(w, HyperRefConfig(num_inner_list=[225]))
    assert out_t.shape == (48, 20)
    # The reference flattens the stored tensor, so the matrix view does not change the encoding.
    assert torch.equal(enc_t.tensors["codes"], enc_p.tensors["codes"])
    assert torch.equal(out_t, out_p)
    assert (out_t - w).abs().max() < 0.01


def test_no_budget_sizing():
    with pytest.raises(Big2SmallError):
        HyperRefGenerator.for_budget(6.0, MatrixLayout((64, 64)), {})
