"""Raw storage: the tensor as it is, in a float dtype, with exact bits and no header."""

import json

import pytest
import torch

from big2small.errors import Big2SmallError
from big2small.generators import GeneratorConfig, RawConfig, generator_for
from big2small.generators.raw import RawGenerator
from big2small.layout import MatrixLayout
from codec_checks import randn, round_trip


SHAPES = [(7, 5), (1, 1), (3, 1000), (33, 3, 3, 3), (17,)]


def test_float16_storage_keeps_input_dtype():
    w = randn(7, 5)
    enc, out = round_trip(w, RawConfig("float16"))
    assert enc.tensors["values"].dtype == torch.float16
    assert out.dtype == torch.float32 and out.shape == w.shape
    assert torch.equal(out, w.half().float())


def test_bfloat16_storage():
    w = randn(33, 3, 3, 3)
    enc, out = round_trip(w, RawConfig("bfloat16"))
    assert enc.tensors["values"].dtype == torch.bfloat16
    assert torch.equal(out, w.bfloat16().float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_same_dtype_is_lossless(dtype):
    w = randn(3, 1000, dtype=dtype)
    enc, out = round_trip(w, RawConfig("same"))
    assert enc.tensors["values"].dtype == dtype
    assert out.dtype == dtype and torch.equal(out, w)


def test_integer_buffer_is_kept_exactly():
    w = torch.tensor(12345, dtype=torch.int64)  # BatchNorm's num_batches_tracked
    enc, out = round_trip(w, RawConfig("float16"))
    assert out.dtype == torch.int64 and torch.equal(out, w)
    assert enc.total_bits == 64


def test_scalar_tensor_round_trip():
    w = torch.tensor(0.75)
    _, out = round_trip(w, RawConfig())
    assert out.shape == () and out.item() == 0.75


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "same"])
def test_bits_equal_payload_bytes_without_header(shape, dtype):
    enc, _ = round_trip(randn(*shape), RawConfig(dtype))
    assert "header" not in enc.bits
    assert enc.total_bits == 8 * enc.payload_bytes


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "same"])
def test_bits_for_equals_encoded_bits_for_fp32_input(shape, dtype):
    enc, _ = round_trip(randn(*shape), RawConfig(dtype))
    assert RawGenerator.bits_for(RawConfig(dtype), MatrixLayout(shape)) == enc.total_bits


def test_transposed_layout_decodes_to_the_matrix_view():
    w = randn(6, 4)  # HF Conv1D [in, out]
    layout = MatrixLayout((6, 4), transposed=True)
    gen = generator_for(RawConfig("float32"))
    enc = gen.encode(w, layout)
    assert torch.equal(gen.decode_matrix(enc), w.t())  # [out, in]
    assert torch.equal(gen.decode(enc), w)


def test_conv_decode_matrix_is_row_per_output_channel():
    w = randn(33, 3, 3, 3)
    gen = generator_for(RawConfig("float32"))
    assert torch.equal(gen.decode_matrix(gen.encode(w)), w.reshape(33, 27))


def test_non_finite_values_are_stored_as_they_are():
    # Raw storage keeps buffers verbatim (masks may hold -inf); only the codecs refuse them.
    w = torch.tensor([1.0, float("-inf"), 2.0])
    _, out = round_trip(w, RawConfig("float32"))
    assert torch.equal(out, w)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "same"])
def test_config_json_round_trip(dtype):
    cfg = RawConfig(dtype)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data == {"method": "raw", "version": RawConfig.version, "dtype": dtype}
    assert GeneratorConfig.from_dict(data) == cfg


def test_invalid_dtype_is_refused():
    with pytest.raises(Big2SmallError):
        generator_for(RawConfig("int8"))


def test_unknown_method_and_option_are_refused():
    with pytest.raises(Big2SmallError):
        GeneratorConfig.from_dict({"method": "nope"})
    with pytest.raises(Big2SmallError):
        GeneratorConfig.from_dict({"method": "raw", "dtype": "float16", "bits": 4})
