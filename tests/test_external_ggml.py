"""The ggml ctypes path of benchmarks/external.py: ggml's own quantiser, gguf-py's dequantiser.

Skipped unless the benchmark-only `llama_cpp` (llama-cpp-python) and `gguf` packages are installed.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("llama_cpp")
gguf_quants = pytest.importorskip("gguf.quants")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from external import ggml_matrix, ggml_quantize_bytes, ggml_type, stored_type  # noqa: E402

from big2small.generators.base import HEADER_BITS  # noqa: E402

ROWS, COLS = 16, 256


@pytest.fixture(scope="module")
def weight():
    return torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name, bytes_per_32", [("Q8_0", 34), ("Q4_0", 18)])
def test_ggml_bytes_and_round_trip_equal_gguf_py_reference(weight, name, bytes_per_32):
    data = ggml_quantize_bytes(weight, name)
    reference = gguf_quants.quantize(weight.numpy(), ggml_type(name))
    assert data.shape == (ROWS, COLS // 32 * bytes_per_32)
    np.testing.assert_array_equal(data, reference)

    restored, bits, kind = ggml_matrix(weight, name)
    expected = gguf_quants.dequantize(reference, ggml_type(name))
    assert kind == name and restored.dtype == torch.float32
    np.testing.assert_array_equal(restored.numpy(), expected)
    assert bits == 8 * data.size + HEADER_BITS


def test_k_quant_round_trip_is_close_and_counts_its_super_blocks(weight):
    restored, bits, kind = ggml_matrix(weight, "Q4_K")
    assert kind == "Q4_K" and bits == ROWS * (COLS // 256) * 144 * 8 + HEADER_BITS  # 4.5 bits per weight
    assert ((restored - weight).norm() / weight.norm()).item() < 0.12


@pytest.mark.parametrize("name, cols, expected", [
    ("Q4_K", 384, "Q5_0"), ("Q2_K", 576, "Q4_0"), ("IQ4_XS", 576, "IQ4_NL"), ("Q4_K", 512, "Q4_K"),
    ("Q4_0", 25, "F16"), ("Q3_K", 40, "F16"),
])
def test_llama_cpp_fallback_for_rows_that_are_not_whole_blocks(name, cols, expected):
    assert stored_type(name, cols) == expected


def test_f16_fallback_stores_16_bits_per_weight():
    w = torch.randn(8, 25, generator=torch.Generator().manual_seed(1))
    restored, bits, kind = ggml_matrix(w, "Q4_0")
    assert kind == "F16" and bits == 16 * w.numel() + HEADER_BITS
    assert torch.equal(restored, w.half().float())
