"""Magnitude pruning: top-|w| selection, fp16 values, the cheapest of three position codings."""

import json

import pytest
import torch

from big2small.errors import Big2SmallError
from big2small.generators import HEADER_BITS, GeneratorConfig, PruneConfig, generator_for
from big2small.bitpack import pack_stream, unpack_stream
from big2small.generators.sparse import PruneGenerator
from big2small.layout import MatrixLayout
from codec_checks import randn, round_trip, assert_bits_match_bytes


def _reference(w2d, keep):
    """The fp16 values of the `keep` largest |w| (no ties in random data), zeros elsewhere."""
    flat = w2d.reshape(-1)
    idx = flat.abs().argsort(descending=True)[:keep]
    out = torch.zeros_like(flat)
    out[idx] = flat[idx].half().float()
    return out.reshape(w2d.shape)


def _ceil_log2(m):
    return max(0, m - 1).bit_length()


SHAPES = [(7, 5), (1, 1), (3, 1000), (33, 3, 3, 3), (64, 64), (50, 1)]
SPARSITIES = [0.0, 0.3, 0.5, 0.9, 0.99, 0.999]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_round_trip_keeps_shape_and_dtype(dtype):
    w = randn(33, 3, 3, 3, dtype=dtype)
    _, out = round_trip(w, PruneConfig(0.5))
    assert out.shape == w.shape and out.dtype == dtype


def test_sparsity_zero_is_exact_up_to_fp16():
    w = randn(9, 70, seed=1)
    _, out = round_trip(w, PruneConfig(0.0))
    assert torch.equal(out, w.half().float())


@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.77, 0.95])
def test_keeps_exactly_the_largest_magnitudes(sparsity):
    w = randn(40, 25, seed=2)
    enc, out = round_trip(w, PruneConfig(sparsity))
    keep = round((1 - sparsity) * w.numel())
    kept = out != 0
    assert enc.meta["nnz"] == int(kept.sum()) == keep
    assert w[kept].abs().min() >= w[~kept].abs().max()
    assert torch.equal(out[kept], w[kept].half().float())


def test_ties_keep_the_earlier_positions():
    w = torch.ones(4, 6)
    _, out = round_trip(w, PruneConfig(0.5))
    assert torch.equal(out.reshape(-1), torch.tensor([1.0] * 12 + [0.0] * 12))


def test_values_are_fp16_in_row_major_order():
    w = randn(10, 10, seed=3)
    enc, _ = round_trip(w, PruneConfig(0.8))
    mask = _reference(w, 20) != 0
    assert enc.tensors["values"].dtype == torch.float16
    assert torch.equal(enc.tensors["values"], w[mask].half())  # boolean indexing is row-major


@pytest.mark.parametrize(
    "shape,sparsity,coding",
    [
        ((64, 64), 0.5, "bitmap"),  # dense mask: N bits beat any index list
        ((64, 64), 0.98, "csr"),  # 82 kept: 947 bits by CSR vs 984 flat, 4096 bitmap
        ((1000, 3), 0.999, "flat"),  # 3 kept, 1000 rows: row pointers would cost 1001 * 2 bits
    ],
)
def test_each_position_coding_is_chosen_and_decodes(shape, sparsity, coding):
    w = randn(*shape, seed=4)
    enc, out = round_trip(w, PruneConfig(sparsity))
    assert enc.meta["coding"] == coding
    assert torch.equal(out, _reference(w, enc.meta["nnz"]))


@pytest.mark.parametrize("shape", [(64, 64), (1000, 3), (5, 300), (50, 1)])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_chosen_coding_is_the_cheapest(shape, sparsity):
    rows, cols = shape
    n = rows * cols
    enc, out = round_trip(randn(*shape, seed=5), PruneConfig(sparsity))
    nnz = enc.meta["nnz"]
    costs = {
        "bitmap": n,
        "csr": nnz * _ceil_log2(cols) + (rows + 1) * _ceil_log2(nnz + 1),
        "flat": nnz * _ceil_log2(n),
    }
    assert enc.bits["positions"] == costs[enc.meta["coding"]] == min(costs.values())


def test_single_weight_flat_index_has_width_zero():
    w = torch.tensor([[-1.5]])
    enc, out = round_trip(w, PruneConfig(0.0))
    assert enc.bits["positions"] == 0
    assert torch.equal(out, w)


def test_nothing_kept_decodes_to_zeros():
    w = randn(3, 1, seed=7)  # round(0.4 * 3) = 1; round(0.1 * 3) = 0
    enc, out = round_trip(w, PruneConfig(0.9))
    assert enc.meta["nnz"] == 0
    assert enc.total_bits == 2 + HEADER_BITS
    # CSR with J = 1 and nnz = 0: both streams have width 0, so nothing but the flag is stored.
    assert enc.meta["coding"] == "csr"
    assert set(enc.tensors) == {"values", "flag"} and enc.tensors["values"].numel() == 0
    assert torch.equal(out, torch.zeros_like(w))


def test_wide_index_streams_split_and_round_trip():
    values = torch.tensor([0, 1, (1 << 30) - 1, 123456789, 1 << 29])
    tensors = {}
    pack_stream(tensors, "idx", values, 30)
    assert sum(t.numel() for t in tensors.values()) == (5 * 24 + 7) // 8 + (5 * 6 + 7) // 8
    assert torch.equal(unpack_stream(tensors, "idx", 30, 5), values)


def test_flat_index_width_beyond_pack_limit_is_counted():
    layout = MatrixLayout((40_000, 768))  # N > 2**24: flat indices take 25 bits
    bits = PruneGenerator.bits_for(PruneConfig(0.9999), layout)
    nnz = round(1e-4 * layout.numel)
    assert bits == 16 * nnz + min(nnz * 25, nnz * 10 + 40_001 * _ceil_log2(nnz + 1)) + 2 + HEADER_BITS


def test_bits_are_itemised():
    enc, _ = round_trip(randn(64, 64), PruneConfig(0.5))
    assert enc.bits == {"values": 16 * 2048, "positions": 4096, "flag": 2, "header": HEADER_BITS}


@pytest.mark.parametrize("sparsity,bpw", [(0.5, 9.0), (0.75, 5.0)])
def test_bitmap_costs_match_methods_examples(sparsity, bpw):
    layout = MatrixLayout((256, 4096))
    bits = PruneGenerator.bits_for(PruneConfig(sparsity), layout)
    assert (bits - 2 - HEADER_BITS) / layout.numel == bpw


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_bits_match_payload_bytes(shape, sparsity):
    enc, _ = round_trip(randn(*shape), PruneConfig(sparsity))
    assert_bits_match_bytes(enc)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_bits_for_equals_encoded_bits(shape, sparsity):
    enc, _ = round_trip(randn(*shape), PruneConfig(sparsity))
    assert PruneGenerator.bits_for(PruneConfig(sparsity), MatrixLayout(shape)) == enc.total_bits


@pytest.mark.parametrize("shape", SHAPES)
def test_odd_shapes_decode_correctly(shape):
    w = randn(*shape, seed=8)
    enc, out = round_trip(w, PruneConfig(0.6))
    assert out.shape == w.shape
    assert torch.equal(out, _reference(w.reshape(shape[0], -1), enc.meta["nnz"]).reshape(shape))


def test_transposed_layout_matches_the_transposed_matrix():
    w = randn(48, 20, seed=9)  # HF Conv1D [in, out]
    enc, out = round_trip(w, PruneConfig(0.97), MatrixLayout((48, 20), transposed=True))
    _, ref = round_trip(w.t().contiguous(), PruneConfig(0.97))
    assert enc.meta["coding"] == "csr"
    assert torch.equal(out, ref.t())


def test_all_zero_tensor_is_exact():
    w = torch.zeros(6, 11)
    _, out = round_trip(w, PruneConfig(0.5))
    assert torch.equal(out, w)


def test_fp16_overflow_is_refused():
    with pytest.raises(Big2SmallError):
        generator_for(PruneConfig(0.5)).encode(torch.full((4, 4), 1e6))


@pytest.mark.parametrize("bpw", [0.5, 2.0, 5.0, 9.0, 16.5, 20.0])
def test_for_budget_keeps_the_most_weights_that_fit(bpw):
    layout = MatrixLayout((64, 96))
    budget = bpw * layout.numel
    cfg = PruneGenerator.for_budget(bpw, layout, {})
    keep = round((1 - cfg.sparsity) * layout.numel)
    assert PruneGenerator.bits_for(cfg, layout) <= budget
    if keep < layout.numel:
        assert PruneGenerator.bits_for(PruneConfig(1 - (keep + 1) / layout.numel), layout) > budget


def test_for_budget_config_encodes_within_budget():
    w = randn(33, 3, 3, 3, seed=10)
    layout = MatrixLayout(tuple(w.shape))
    cfg = PruneGenerator.for_budget(3.0, layout, {})
    assert generator_for(cfg).encode(w).total_bits <= 3.0 * layout.numel


def test_for_budget_refuses_when_not_one_weight_fits():
    layout = MatrixLayout((8, 8))  # one kept weight costs 16 + 6 + 2 + 128 = 152 bits
    assert PruneGenerator.bits_for(PruneGenerator.for_budget(152 / 64, layout, {}), layout) == 152
    with pytest.raises(Big2SmallError):
        PruneGenerator.for_budget(151 / 64, layout, {})


def test_for_budget_keeps_a_fixed_sparsity():
    layout = MatrixLayout((64, 64))
    assert PruneGenerator.for_budget(9.1, layout, {"sparsity": 0.5}).sparsity == 0.5
    with pytest.raises(Big2SmallError):
        PruneGenerator.for_budget(8.0, layout, {"sparsity": 0.5})


@pytest.mark.parametrize("non_finite", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_is_refused(non_finite):
    w = randn(8, 8)
    w[2, 2] = non_finite
    with pytest.raises(Big2SmallError):
        generator_for(PruneConfig(0.5)).encode(w)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.999])
def test_config_json_round_trip(sparsity):
    data = json.loads(json.dumps(PruneConfig(sparsity).to_dict()))
    assert data == {"method": "prune", "version": PruneConfig.version, "sparsity": sparsity}
    assert GeneratorConfig.from_dict(data) == PruneConfig(sparsity)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5, True])
def test_invalid_sparsity_is_refused(sparsity):
    with pytest.raises(Big2SmallError):
        generator_for(PruneConfig(sparsity))


def test_encoding_is_deterministic():
    w = randn(30, 40, seed=11)
    a = generator_for(PruneConfig(0.9)).encode(w)
    b = generator_for(PruneConfig(0.9)).encode(w)
    assert a.tensors.keys() == b.tensors.keys()
    assert all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors)
