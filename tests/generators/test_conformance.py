"""The generator contract, checked once for every registered method.

Each method runs one small, fast, representative config (CASES, the one table of this file) through
the same checks: round trip on Linear, conv and HF Conv1D (transposed) layouts, exact stored bits,
bytes on disk, determinism, refused inputs, config JSON, and on-the-fly decoding. A new generator
must be added to CASES (test_every_registered_method_has_a_case) and then passes all of them.
Method-specific properties (codebooks, sizing searches, options) stay in test_<method>.py.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from dataclasses import dataclass
from functools import cache

import pytest
import torch
from codec_checks import assert_stored_bits
from torch import nn
from torch.nn.utils import parametrize

import big2small as b2s
from big2small.artifact import TENSORS
from big2small.errors import Big2SmallError
from big2small.generators import (
    REGISTRY, ChannelIntConfig, GeneratorConfig, HyperConfig, HyperRefConfig, INRConfig, LowRankConfig, PruneConfig,
    RawConfig, TrellisConfig, UniformConfig, decode, generator_for,
)
from big2small.layout import MatrixLayout
from big2small.recipe import Recipe
from big2small.restore import restore


@dataclass(frozen=True)
class Case:
    """config: the method's representative config. max_rel_error: bound on |W_hat - W| / |W| for
    `weights()` (a codec that decodes zeros scores 1; measured values in the comments).
    bits_for_exact: False where bits_for is an upper bound (bit widths chosen from the data).
    matrix_view: encodes the [out, in] matrix view (False: the tensor's stored order).
    codec: refuses integer and non-finite weights (False for raw, which keeps buffers verbatim and
    is loaded dense rather than decoded on the fly)."""

    config: GeneratorConfig
    max_rel_error: float
    bits_for_exact: bool = True
    matrix_view: bool = True
    codec: bool = True


CASES = {
    "channel_int": Case(ChannelIntConfig(bits=6), 0.08, bits_for_exact=False),  # 0.04
    "hyper": Case(HyperConfig(bits=6, codebook="fitted", lloyd_iters=3, sample_size=500), 0.25),  # 0.16; seeded subsample
    "hyper_ref": Case(HyperRefConfig(num_inner_list=[225]), 0.15, bits_for_exact=False, matrix_view=False),  # 0.10
    "inr": Case(INRConfig(width=8, steps=80, lr=1e-2), 0.75),  # 0.47-0.65 after 80 steps
    "lowrank": Case(LowRankConfig(rank=4), 0.35),  # 0.25: the noise beyond rank 2
    "prune": Case(PruneConfig(0.5), 0.3),  # 0.2
    "raw": Case(RawConfig("float32"), 0.0, codec=False),  # exact
    "trellis": Case(TrellisConfig(bits=3, state_bits=8), 0.25),  # 0.20: short rows share a scale
    "uniform": Case(UniformConfig(bits=4, group_size=32), 0.15),  # 0.09
}
METHODS = sorted(REGISTRY)  # a method without a Case fails every test below, and the first one says why
CODECS = [m for m in METHODS if m not in CASES or CASES[m].codec]
LAYOUTS = {
    "linear": MatrixLayout((24, 40)),
    "conv": MatrixLayout((16, 3, 3, 3)),
    "transposed": MatrixLayout((40, 24), transposed=True),  # HF Conv1D stores [in, out]
}


def weights(shape, seed=1, dtype=torch.float32):
    """Like a trained layer's weight: a rank-2 matrix view plus noise, at a typical scale of 0.02."""
    g = torch.Generator().manual_seed(seed)
    rows = shape[0]
    cols = torch.Size(shape).numel() // rows
    low = torch.randn(rows, 2, generator=g) @ torch.randn(2, cols, generator=g) / 2**0.5
    return (0.02 * (low + 0.3 * torch.randn(rows, cols, generator=g))).reshape(shape).to(dtype)


def encode(method, w, layout=None, seed=0):
    return generator_for(CASES[method].config).encode(w, layout, seed=seed)


@cache
def encoded(method, layout_name):
    """`weights()` of a LAYOUTS entry encoded with seed 0, once per process (tests must not modify it)."""
    layout = LAYOUTS[layout_name]
    return encode(method, weights(layout.shape), layout)


def rel_error(out, w):
    return float((out.float() - w.float()).norm() / w.float().norm())


def assert_within_bound(method, out, w):
    if CASES[method].max_rel_error == 0:
        assert torch.equal(out, w)
    else:
        assert rel_error(out, w) <= CASES[method].max_rel_error


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_every_registered_method_has_a_case():
    assert sorted(set(REGISTRY) - set(CASES)) == [], "add the method to CASES"
    assert sorted(set(CASES) - set(REGISTRY)) == [], "CASES names a method that is not registered"
    for method, case in CASES.items():
        assert case.config.method == method


# --- round trip -----------------------------------------------------------------------------------


@pytest.mark.parametrize("layout_name", LAYOUTS)
@pytest.mark.parametrize("method", METHODS)
def test_round_trip_keeps_shape_and_dtype_within_the_bound(method, layout_name):
    layout = LAYOUTS[layout_name]
    w = weights(layout.shape)
    enc = encoded(method, layout_name)
    out = decode(enc)
    assert out.shape == w.shape and out.dtype == w.dtype
    assert_within_bound(method, out, w)
    # decode is the matrix view that regenerate_matrix gives, put back into the tensor's shape.
    assert torch.equal(generator_for(enc.config).regenerate_matrix(enc), layout.to_matrix(out))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("method", METHODS)
def test_low_precision_weights_decode_in_their_dtype(method, dtype):
    w = weights((24, 40), dtype=dtype)
    out = decode(encode(method, w))
    assert out.shape == w.shape and out.dtype == dtype
    assert_within_bound(method, out, w)


@pytest.mark.parametrize("method", [m for m in METHODS if m not in CASES or CASES[m].matrix_view])
def test_transposed_layout_decodes_as_the_transposed_matrix(method):
    w = weights(LAYOUTS["transposed"].shape)  # HF Conv1D [in, out]: rows of the view are output channels
    out_t = decode(encoded(method, "transposed"))
    out_ref = decode(encode(method, w.t().contiguous()))
    assert out_t.shape == w.shape
    assert torch.equal(out_t, out_ref.t())


# --- stored bits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout_name", LAYOUTS)
@pytest.mark.parametrize("method", METHODS)
def test_stored_bits_are_predicted_itemised_and_held_by_the_payload(method, layout_name):
    enc = encoded(method, layout_name)
    assert all(isinstance(v, int) and v >= 0 for v in enc.bits.values())
    assert enc.total_bits == sum(enc.bits.values()) > 0
    assert_stored_bits(enc, exact=CASES[method].bits_for_exact)


@pytest.mark.parametrize("layout_name", LAYOUTS)
@pytest.mark.parametrize("method", METHODS)
def test_every_encoded_record_has_the_stored_form_and_bits_its_method_checks_on_load(method, layout_name):
    enc = encoded(method, layout_name)
    gen = REGISTRY[method]
    assert gen.stored_form(enc) == {k: (t.dtype, tuple(t.shape)) for k, t in enc.tensors.items()}
    assert gen.stored_bits(enc) == enc.total_bits
    gen.check_stored(enc)


def _largest_part(enc):
    return max(enc.tensors, key=lambda k: (enc.tensors[k].numel(), k))


@pytest.mark.parametrize("damage", ["short", "long", "dtype", "extra", "missing", "bits", "ledger"])
@pytest.mark.parametrize("method", METHODS)
def test_a_record_its_method_cannot_have_written_is_refused_before_decoding(method, damage):
    """What load() reads back passes check_stored only if its arrays and bits are what the config
    and shape make: an array too short or too long, of another dtype, one too many or missing, a
    total that differs, or bits moved into the header."""
    enc = encoded(method, "linear")
    part = _largest_part(enc)
    t = enc.tensors[part]
    tensors, bits = dict(enc.tensors), dict(enc.bits)
    if damage == "short":
        tensors[part] = t.reshape(-1)[:-1]
    elif damage == "long":
        tensors[part] = torch.cat([t.reshape(-1), t.reshape(-1)[:1]])
    elif damage == "dtype":
        tensors[part] = t.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.float64}[t.element_size()])
    elif damage == "extra":
        tensors["extra"] = torch.zeros(4, dtype=torch.uint8)
    elif damage == "missing":
        del tensors[part]
    elif damage == "bits":
        bits[part] = bits.get(part, 0) + 8
    else:
        bits["header"] = bits.get("header", 0) + 64
        bits[next(k for k in bits if k != "header")] -= 64
    with pytest.raises(Big2SmallError) as info:
        REGISTRY[method].check_stored(dataclasses.replace(enc, tensors=tensors, bits=bits))
    assert "\n" not in str(info.value)


class Conv1D(nn.Module):
    """Hugging Face GPT-2's Conv1D (transformers.pytorch_utils.Conv1D): weight [in, out], y = x W + b.
    big2small knows it by its class name and stores it with MatrixLayout(transposed=True)."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(0.02 * torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).reshape(*x.shape[:-1], self.nf)


class TinyNet(nn.Module):
    """One weight of each layout: conv (4-D), HF Conv1D (transposed), Linear (2-D)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 32, 3)
        self.proj = Conv1D(48, 32)
        self.fc = nn.Linear(48, 16)

    def forward(self, x):
        y = torch.relu(self.conv(x)).mean((2, 3))
        return self.fc(torch.relu(self.proj(y)))


COMPRESSED = ["conv.weight", "proj.weight", "fc.weight"]


@pytest.fixture(scope="module", params=METHODS)
def saved(request, tmp_path_factory):
    """(method, CompressedModel, artifact path) of TinyNet with the method's case config."""
    method = request.param
    torch.manual_seed(0)
    model = TinyNet().eval()
    cm = b2s.compress(model, Recipe(default=CASES[method].config, min_numel=512), progress=False)
    assert [n for n, e in cm.tensors.items() if e.config == CASES[method].config] == COMPRESSED
    assert cm.tensors["proj.weight"].layout.transposed
    path = tmp_path_factory.mktemp(method) / "tiny.b2s"
    b2s.save(cm, path)
    return method, cm, path


def test_bytes_on_disk_are_the_stored_bits(saved):
    _, cm, path = saved
    data = (path / TENSORS).read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    on_disk = len(data) - 8 - header_len  # the safetensors payload, after its JSON header
    assert on_disk == sum(enc.payload_bytes for enc in cm.tensors.values())
    n_arrays = sum(len(enc.tensors) for enc in cm.tensors.values())
    stored = cm.size().bits_total - sum(enc.bits.get("header", 0) for enc in cm.tensors.values())
    assert 0 <= 8 * on_disk - stored < 8 * n_arrays
    loaded = b2s.load(path)
    assert loaded.tensors.keys() == cm.tensors.keys()
    for name, enc in cm.tensors.items():
        back = loaded.tensors[name]
        assert (back.config, back.layout, back.dtype, back.bits) == (enc.config, enc.layout, enc.dtype, enc.bits)
        assert_same_tensors(back.tensors, enc.tensors)


# --- determinism ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_the_same_seed_gives_the_same_stored_tensors(method):
    a = encoded(method, "linear")  # encoded earlier in this process, or just now
    b = encode(method, weights(LAYOUTS["linear"].shape), LAYOUTS["linear"], seed=0)
    assert a is not b
    assert_same_tensors(a.tensors, b.tensors)
    assert a.bits == b.bits


# --- refused inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("method", CODECS)
def test_non_finite_weights_are_refused(method, bad):
    w = weights((24, 40))
    w[3, 4] = bad
    layout = MatrixLayout((24, 40))
    with pytest.raises(Big2SmallError, match="NaN or Inf"):
        encode(method, w, layout)
    with pytest.raises(Big2SmallError, match="NaN or Inf"):
        REGISTRY[method].encode_many([(CASES[method].config, w, layout)])


@pytest.mark.parametrize("method", CODECS)
def test_integer_weights_are_refused(method):
    with pytest.raises(Big2SmallError, match=f"{method}: cannot encode a torch.int64 tensor"):
        encode(method, torch.ones(24, 40, dtype=torch.int64))


@pytest.mark.parametrize("layout", [MatrixLayout((40, 24)), MatrixLayout((24, 41))], ids=["swapped", "larger"])
@pytest.mark.parametrize("method", METHODS)
def test_a_layout_of_another_shape_is_refused(method, layout):
    with pytest.raises(ValueError, match=r"layout shape .* does not match tensor \(24, 40\)"):
        encode(method, weights((24, 40)), layout)


# --- config ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_config_json_round_trip(method):
    for cfg in (CASES[method].config, REGISTRY[method].config_type()):
        data = json.loads(json.dumps(cfg.to_dict()))
        assert data["method"] == method
        back = GeneratorConfig.from_dict(data)
        assert type(back) is type(cfg) and back == cfg


@pytest.mark.parametrize("method", METHODS)
def test_unknown_option_is_refused_naming_the_known_ones(method):
    data = {**CASES[method].config.to_dict(), "no_such_option": 1}
    with pytest.raises(Big2SmallError, match="unknown option") as err:
        GeneratorConfig.from_dict(data)
    message = str(err.value)
    assert "no_such_option" in message
    known = message.rpartition("known:")[2]
    assert all(f.name in known for f in dataclasses.fields(REGISTRY[method].config_type))


def test_unknown_method_is_refused_naming_the_known_ones():
    with pytest.raises(Big2SmallError, match="unknown method 'nope'") as err:
        GeneratorConfig.from_dict({"method": "nope"})
    known = str(err.value).rpartition("known:")[2]
    assert all(m in known for m in METHODS)


# --- on-the-fly decoding ----------------------------------------------------------------------------


def _stored_bytes(module):
    p = module.parametrizations.weight
    return sum(t.numel() * t.element_size() for t in [*p.parameters(), *p.buffers()])


@pytest.mark.parametrize("unpack", [False, True], ids=["packed", "unpacked"])
def test_on_the_fly_restore_equals_the_dense_restore(saved, unpack):
    method, _, path = saved
    dense = restore(path, TinyNet())
    lazy = restore(path, TinyNet(), on_the_fly=True, unpack=unpack)
    x = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(lazy(x), dense(x))
    for name in COMPRESSED:
        module = lazy.get_submodule(name.rpartition(".")[0])
        dense_weight = dense.get_submodule(name.rpartition(".")[0]).weight
        # raw storage is the dense weight itself, loaded as a plain parameter
        assert parametrize.is_parametrized(module, "weight") == CASES[method].codec, name
        if CASES[method].codec:
            # the compact tensors are resident, the weight is regenerated on each access
            assert not hasattr(module.parametrizations.weight, "original")
            assert _stored_bytes(module) < dense_weight.numel() * dense_weight.element_size(), name
        with torch.no_grad():
            torch.testing.assert_close(module.weight, dense_weight)
