"""Big2Small INR generator: fitting, preprocessing, exact sizes, determinism, residual mode."""

import math

import pytest
import torch
from torch import nn

import big2small as b2s
from big2small.errors import Big2SmallError
from big2small.generators import HEADER_BITS, INRConfig, INRGenerator, decode, generator_for
from big2small.generators.inr import budget_width, inr_bits, reorder, split_outliers
from big2small.generators.siren import FitSettings, SirenShape, parameter_count, tile_losses
from big2small.layout import MatrixLayout
from codec_checks import assert_bits_match_bytes, assert_stored_bits, randn

FAST = dict(steps=60, lr=3e-3)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def smooth(rows=128, cols=128):
    u = torch.linspace(-1, 1, rows)[:, None]
    v = torch.linspace(-1, 1, cols)[None, :]
    return 0.05 * torch.sin(3 * u) * torch.cos(2 * v) + 0.02 * u * v


def rel_error(a, b):
    return float((a - b).norm() / b.norm())


def test_parameter_count_matches_the_formula():
    assert parameter_count(21, 3) == 2 * 21 ** 2 + 6 * 21 + 1
    assert SirenShape(21).init(5, seed=0).shape == (5, parameter_count(21, 3))


@pytest.mark.parametrize("device", DEVICES)
def test_a_smooth_matrix_is_fitted_closely(device):
    w = smooth().to(device)
    enc = generator_for(INRConfig(width=16, steps=300, lr=3e-3, outlier_frac=0, reorder="none")).encode(w)
    assert rel_error(decode(enc).to(device), w) < 0.1
    assert enc.meta["steps"] == 300


def test_stored_bits_are_exact_and_match_the_payload():
    w = randn(200, 130)
    cfg = INRConfig(width=8, residual_bits=2, **FAST)
    layout = MatrixLayout((200, 130))
    enc = generator_for(cfg).encode(w, layout)
    assert_stored_bits(enc)
    assert enc.total_bits == inr_bits(cfg, layout, 8)
    tiles = math.ceil(200 / 64) * math.ceil(130 / 64)
    assert enc.bits["phi"] == tiles * parameter_count(8, 3) * 16
    assert enc.bits["outlier_index"] == 26 * 15 and enc.bits["outlier_values"] == 26 * 16
    assert enc.bits["row_perm"] == 200 * 8 and enc.bits["col_perm"] == 130 * 8
    assert enc.bits["header"] == HEADER_BITS


def test_another_seed_gives_another_fit():
    # (the same seed gives the same one: test_conformance)
    w = randn(64, 80, seed=3)
    gen = generator_for(INRConfig(width=6, **FAST))
    assert not torch.equal(gen.encode(w, seed=1).tensors["phi"], gen.encode(w, seed=2).tensors["phi"])


def test_tensors_fit_the_same_alone_or_together():
    w1, w2 = randn(64, 64, seed=1), randn(100, 70, seed=2)
    cfg = INRConfig(width=6, **FAST)
    alone = [generator_for(cfg).encode(w) for w in (w1, w2)]
    together = INRGenerator.encode_many([(cfg, w1, MatrixLayout((64, 64))), (cfg, w2, MatrixLayout((100, 70)))])
    for a, t in zip(alone, together):
        assert torch.allclose(decode(a), decode(t), atol=1e-4)


def test_tiny_tensors_are_stored_dense_in_fp16():
    w = randn(8, 8)
    enc = generator_for(INRConfig(width=8)).encode(w)  # 177 fp16 SIREN parameters > 64 fp16 weights
    assert enc.meta["dense"] == 1 and set(enc.tensors) == {"dense"}
    assert torch.equal(decode(enc), w.half().float())


def test_compress_keeps_small_tensors_raw():
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 32))  # 4096 and 2048 weights
    cm = b2s.compress(model, "inr", width=6, steps=10, progress=False)
    assert cm.tensors["0.weight"].method == "inr"
    assert cm.tensors["1.weight"].method == "raw" and cm.tensors["0.bias"].method == "raw"


def test_outliers_are_restored_exactly():
    w = randn(96, 96, seed=4) * 0.02
    spots = [(0, 0), (5, 70), (95, 95), (40, 3)]
    for k, (i, j) in enumerate(spots):
        w[i, j] = (-1) ** k * (0.75 + k * 0.25)  # exact in fp16
    enc = generator_for(INRConfig(width=6, outlier_frac=0.001, **FAST)).encode(w)
    out = decode(enc)
    assert enc.bits["outlier_values"] == 9 * 16
    for i, j in spots:
        assert out[i, j] == w[i, j]


def test_split_outliers_clips_to_the_largest_remaining_distance():
    m = torch.tensor([[0.0, 1.0, -1.0, 10.0], [0.5, -0.5, 0.2, -8.0]])
    clipped, idx, values = split_outliers(m, 2)
    assert idx.tolist() == [3, 7] and values.tolist() == [10.0, -8.0]
    mu = float(m.mean())
    limit = float((m.reshape(-1)[:3] - mu).abs().max().clamp(min=(m.reshape(-1)[4:7] - mu).abs().max()))
    assert clipped[0, 3].item() == pytest.approx(mu + limit) and clipped[1, 3].item() == pytest.approx(mu - limit)


def test_reordering_finds_hidden_structure():
    # A product of two shuffled vectors is noise to a coordinate network, and smooth once sorted.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(128, 1, generator=g) @ torch.randn(1, 128, generator=g)
    cfg = dict(width=8, steps=200, lr=3e-3, outlier_frac=0)
    plain = decode(generator_for(INRConfig(reorder="none", **cfg)).encode(w))
    ordered = decode(generator_for(INRConfig(reorder="svd1", **cfg)).encode(w))
    assert rel_error(ordered, w) < 0.5 * rel_error(plain, w)


@pytest.mark.parametrize("mode", ["svd1", "greedy"])
def test_reorder_returns_permutations(mode):
    w = randn(50, 30)
    pr, pc = reorder(w, INRConfig(reorder=mode))
    assert sorted(pr.tolist()) == list(range(50)) and sorted(pc.tolist()) == list(range(30))


def test_residual_mode_lowers_the_error_and_is_paid_for():
    w = randn(128, 128, seed=5)
    plain = generator_for(INRConfig(width=8, **FAST)).encode(w)
    with_res = generator_for(INRConfig(width=8, residual_bits=3, **FAST)).encode(w)
    assert rel_error(decode(with_res), w) < 0.5 * rel_error(decode(plain), w)
    assert with_res.total_bits - plain.total_bits == with_res.bits["residual"] > 3 * w.numel()


def test_frequency_term_is_the_mse_when_unweighted():
    # Parseval: with alpha = 0 the focal weights are 1 and the orthonormal spectrum keeps the energy.
    pred, target = randn(3, 16, 16, seed=1), randn(3, 16, 16, seed=2)
    mask = torch.ones(3, 16, 16)
    loss, mse = tile_losses(pred, target, mask, FitSettings(lambda_f=1.0, alpha=0.0))
    assert torch.allclose(loss, 2 * mse, rtol=1e-5)
    focal, _ = tile_losses(pred, target, mask, FitSettings(lambda_f=1.0, alpha=1.0))
    assert (focal < loss).all() and (focal > mse).all()


def test_padding_and_masked_entries_do_not_count():
    pred, target = torch.zeros(1, 4, 4), torch.ones(1, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[0, :2] = 1
    target[0, 2:] = 100.0
    _, mse = tile_losses(pred, target, mask, FitSettings(lambda_f=0.0))
    assert mse.item() == pytest.approx(1.0)


def test_width_from_the_budget_is_the_largest_that_fits():
    layout = MatrixLayout((256, 384))
    cfg = INRGenerator.for_budget(4.0, layout, {})
    h = budget_width(cfg, layout, 4.0)
    assert inr_bits(cfg, layout, h) <= 4.0 * layout.numel < inr_bits(cfg, layout, h + 1)
    assert INRGenerator.bits_for(cfg, layout) == inr_bits(cfg, layout, h)
    assert 18 <= h <= 21  # docs/inr.md#width-from-the-budget: 20 for matrices this small, 21 for 4096 x 4096


def test_an_impossible_budget_names_the_way_out():
    with pytest.raises(Big2SmallError, match="even width 4 does not fit.*larger tile"):
        INRGenerator.for_budget(0.05, MatrixLayout((128, 128)), {})


def test_a_budget_too_small_for_a_siren_leaves_the_residual_alone():
    layout = MatrixLayout((32, 144))
    cfg = INRGenerator.for_budget(3.5, layout, {"residual_bits": 3})
    w = randn(32, 144)
    enc = generator_for(cfg).encode(w, layout)
    assert enc.meta["width"] == 0 and "phi" not in enc.tensors
    assert enc.total_bits <= 3.5 * layout.numel
    assert rel_error(decode(enc), w) < 0.3  # 3-bit RTN of a Gaussian: about 0.2


def test_time_budget_and_error_target_stop_the_fit_early():
    w = smooth()
    timed = generator_for(INRConfig(width=8, steps=100000, max_seconds=1.0)).encode(w)
    assert timed.meta["steps"] < 100000
    easy = generator_for(INRConfig(width=16, steps=5000, lr=3e-3, target_rel_error=0.3, reorder="none")).encode(w)
    assert easy.meta["steps"] < 5000


def test_invalid_config_is_refused():
    for bad in (dict(width=2), dict(width=8, bits_per_weight=4), dict(reorder="random"),
                dict(freq_mode="x"), dict(phi_bits=4), dict(residual_bits=9), dict(outlier_frac=0.6)):
        with pytest.raises(Big2SmallError):
            generator_for(INRConfig(**bad))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_encoding_decodes_the_same_on_cpu():
    w = randn(128, 192, seed=7)
    enc = generator_for(INRConfig(width=8, **FAST)).encode(w.cuda())
    on_gpu = generator_for(enc.config).decode_matrix(enc)
    enc.tensors = {k: v.cpu() for k, v in enc.tensors.items()}
    on_cpu = generator_for(enc.config).decode_matrix(enc)
    assert torch.allclose(on_gpu.cpu(), on_cpu, atol=1e-5 * float(w.abs().max()))


def test_layers_sharing_one_bank_store_it_once(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(80, 80) for _ in range(4)])
    cm = b2s.compress(model, "inr", bpw=6.0, steps=30, shared_layers=3, progress=False)
    encs = [cm.tensors[f"{i}.weight"] for i in range(4)]
    # Layers 0-2 share one bank (z = -1, 0, 1); layer 3 is a group of one, with its own.
    assert [e.meta["layers"] for e in encs] == [3, 3, 3, 1] and [e.meta["layer"] for e in encs] == [0, 1, 2, 0]
    assert encs[1].tensors["phi"] is encs[0].tensors["phi"] and "phi" not in encs[1].bits
    assert "phi" in encs[0].bits and "phi" in encs[3].bits
    assert cm.size().bpw_all <= 6.0
    info = b2s.save(cm, tmp_path / "m.b2s")
    stored = sum(e.payload_bytes for e in cm.tensors.values())
    assert stored < info.tensor_file_bytes < stored + 4096  # the shared bank is on disk once
    back = b2s.load(tmp_path / "m.b2s")
    assert back.tensors["2.weight"].tensors["phi"] is back.tensors["0.weight"].tensors["phi"]
    for name, t in cm.state_dict().items():
        assert torch.equal(back.state_dict()[name], t)


def test_a_shared_bank_fits_several_layers():
    # Layers that are one smooth function sampled at z = -1 and 1: one bank fits both.
    u = torch.linspace(-1, 1, 128)[:, None]
    v = torch.linspace(-1, 1, 128)[None, :]
    layers = [0.05 * torch.sin(3 * u + z) * torch.cos(2 * v) for z in (-0.5, 0.5)]
    cfg = INRConfig(width=24, steps=300, lr=3e-3, outlier_frac=0, reorder="none", shared_layers=2)
    encs = INRGenerator.encode_many([(cfg, w, MatrixLayout((128, 128))) for w in layers])
    for enc, w in zip(encs, layers):
        assert rel_error(decode(enc), w) < 0.15


def test_8_bit_siren_parameters_are_counted_and_decoded_as_stored():
    w = randn(96, 160, seed=8)
    cfg = INRConfig(width=10, phi_bits=8, phi_qat_steps=20, **FAST)
    layout = MatrixLayout((96, 160))
    enc = generator_for(cfg).encode(w, layout)
    tiles = 2 * 3
    blocks = 2 * (3 + 1)  # a weight matrix and a bias per layer
    assert enc.tensors["phi_codes"].dtype == torch.int8 and enc.tensors["phi_scales"].shape == (tiles, blocks)
    assert enc.bits["phi"] == tiles * (parameter_count(10, 3) * 8 + blocks * 16)
    assert enc.total_bits == INRGenerator.bits_for(cfg, layout)
    assert_bits_match_bytes(enc)
    assert rel_error(decode(enc), w) == pytest.approx(enc.meta["rel_error"], rel=1e-4)


def test_8_bit_parameters_buy_a_wider_siren_at_the_same_size():
    layout = MatrixLayout((512, 512))
    h16 = budget_width(INRConfig(), layout, 4.0)
    h8 = budget_width(INRConfig(phi_bits=8), layout, 4.0)
    assert h8 >= 1.3 * h16


def test_same_input_and_seed_give_the_same_record_whatever_the_global_random_state():
    """No wall-clock time or global random state reaches what is stored (meta goes into the manifest)."""
    w = torch.randn(128, 128, generator=torch.Generator().manual_seed(0))
    cfg = INRConfig(width=8, steps=20)
    a = INRGenerator(cfg).encode(w, seed=3)
    torch.randn(100)  # moves the global random state
    b = INRGenerator(cfg).encode(w, seed=3)
    assert a.meta == b.meta and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)


@pytest.mark.parametrize("omega0", [-1.0, 0.0, float("nan"), float("inf")])
def test_a_siren_frequency_must_be_a_positive_number(omega0):
    with pytest.raises(Big2SmallError, match="omega0 must be a positive number"):
        INRConfig(omega0_hidden=omega0).validate()
