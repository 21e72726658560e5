"""The HQQ benchmark baseline (benchmarks/hqq_baseline.py): error, exact bits, shapes and dtypes.

Skipped unless the benchmark-only `hqq` package is installed (`pip install -e ".[bench]"`).
"""

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("hqq")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from hqq_baseline import hqq_compress_state, hqq_quantize_matrix

ROWS, COLS = 256, 512


@pytest.fixture(scope="module")
def weight():
    return torch.randn(ROWS, COLS, generator=torch.Generator().manual_seed(0))


def rel_error(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_4bit_error_is_small_and_below_3bit(weight):
    w4, _ = hqq_quantize_matrix(weight, 4, 64)
    w3, _ = hqq_quantize_matrix(weight, 3, 64)
    assert rel_error(w4, weight) < 0.12
    assert rel_error(w4, weight) < rel_error(w3, weight)


def test_bits_are_codes_plus_fp16_scale_and_zero_per_group_plus_header(weight):
    _, bits = hqq_quantize_matrix(weight, 4, 64)
    assert bits == COLS * ROWS * 4 + (COLS * ROWS // 64) * 32 + 128


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_shapes_and_dtypes(weight, dtype):
    restored, _ = hqq_quantize_matrix(weight.to(dtype), 4, 64)
    assert restored.shape == (ROWS, COLS) and restored.dtype == torch.float32

    state = {"a.weight": weight.to(dtype), "kept": torch.ones(3)}
    out, bits, seconds = hqq_compress_state(state, ["a.weight"], 4, 64)
    assert out["a.weight"].shape == (ROWS, COLS) and out["a.weight"].dtype == dtype
    assert out["kept"] is state["kept"] and state["a.weight"].dtype == dtype
    assert bits == hqq_quantize_matrix(weight, 4, 64)[1] and seconds >= 0


def test_rows_that_are_not_whole_groups_end_in_a_short_group(weight):
    restored, bits = hqq_quantize_matrix(weight[:, :192], 4, 128)  # a group of 128, then one of 64
    assert restored.shape == (ROWS, 192)
    assert bits == ROWS * 192 * 4 + ROWS * 2 * 32 + 128


@pytest.mark.parametrize("bits, group_size", [(7, 64), (4, 0)])
def test_refuses_unsupported_bits_and_groups(weight, bits, group_size):
    with pytest.raises(ValueError):
        hqq_quantize_matrix(weight, bits, group_size)
