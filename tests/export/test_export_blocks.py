"""Our uniform codes as ggml blocks: what gguf's own dequantiser reads back is our decode, bit for bit."""

import gguf
import numpy as np
import pytest
import torch

from big2small.export.ggml_blocks import block_type_of, offset_exact, to_blocks
from big2small.generators import decode
from big2small.generators.uniform import UniformConfig, UniformGenerator
from big2small.layout import MatrixLayout


def _encode(bits, symmetric, group_size=32, shape=(48, 96), scale=1.0):
    torch.manual_seed(bits)
    w = torch.randn(*shape) * scale
    return UniformGenerator(UniformConfig(bits=bits, group_size=group_size, symmetric=symmetric)).encode(w, MatrixLayout(shape))


@pytest.mark.parametrize("bits,name", [(4, "Q4_0"), (5, "Q5_0"), (8, "Q8_0")])
def test_symmetric_g32_dequantises_to_our_decode_exactly(bits, name):
    enc = _encode(bits, True)
    btype = block_type_of(enc)
    assert btype.name == name
    blocks = to_blocks(enc, btype)
    assert blocks.shape == (48, 96 // 32 * btype.block_bytes)
    assert np.array_equal(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[name]), decode(enc).numpy())


@pytest.mark.parametrize("bits,name", [(4, "Q4_1"), (5, "Q5_1")])
def test_asymmetric_g32_is_exact_exactly_where_the_fp16_offset_is(bits, name):
    enc = _encode(bits, False)
    btype = block_type_of(enc)
    assert btype.name == name
    exact = offset_exact(enc)
    back = gguf.quants.dequantize(to_blocks(enc, btype), gguf.GGMLQuantizationType[name]).reshape(-1, 32)
    same = torch.from_numpy((back == decode(enc).numpy().reshape(-1, 32)).all(1))
    assert torch.equal(same, exact)
    assert 0 < int(exact.sum()) < exact.numel()  # random weights: some offsets fit fp16, some do not


def test_configs_without_a_ggml_block_have_no_exact_type():
    assert block_type_of(_encode(4, True, group_size=64)) is None
    assert block_type_of(_encode(3, True)) is None
    assert block_type_of(_encode(8, False)) is None  # ggml has no Q8_1 weight type
    assert block_type_of(_encode(4, True, shape=(48, 80))) is None  # rows of 80 are not whole blocks
