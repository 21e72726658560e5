"""Compiled kernels for the `uniform` codec on its stored arrays: y = W x without materialising W,
and W itself (the decode for large batches).

W[r, c] = (q[r, c] - z_g) * s_g with q the bit-packed codes, s_g the fp16 scale and z_g the
zero-point of the group (2^(bits-1) when symmetric). The matrix product reads each code once per
input row, with the group's scale applied once per group (y_r = sum_g s_g sum_i (q_i - z_g) x_i);
4- and 8-bit codes are read byte by byte, other widths through packed.read_code. Rows run in
parallel (numba prange).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from big2small.generators.base import Encoded
from big2small.generators.grouping import grouping
from big2small.kernels.packed import as_numpy, half_to_float, read_code, run_decode, run_product
from big2small.kernels.rows import segment, segment_plan


def supports(enc: Encoded) -> bool:
    return True


def resident_extra(enc: Encoded) -> dict[str, torch.Tensor]:
    """Nothing beyond the stored arrays: codes, fp16 scales and zero-points are read as stored."""
    return {}


def _arrays(tensors: dict[str, torch.Tensor], enc: Encoded):
    cfg = enc.config
    gp = grouping(enc.layout, cfg.group_size)
    zeros = tensors.get("zeros", torch.zeros(1, dtype=torch.uint8))
    return (as_numpy(tensors["codes"]), cfg.bits, as_numpy(tensors["scales"]), as_numpy(zeros), cfg.symmetric,
            enc.layout.rows, enc.layout.cols, *segment_plan(gp))


def matmul(tensors: dict[str, torch.Tensor], enc: Encoded, x: torch.Tensor) -> torch.Tensor:
    """x [B, cols] fp32 -> x W^T [B, rows] fp32, W the matrix `enc`'s stored arrays (`tensors`) decode to."""
    x = x.detach().float()
    return run_product(_matmul, _arrays(tensors, enc), enc.layout.rows, x, x[:, 0::2], x[:, 1::2])


def decode_matrix(tensors: dict[str, torch.Tensor], enc: Encoded) -> torch.Tensor:
    """W [rows, cols] fp32, as UniformGenerator.decode_matrix computes it (same operations, same bits)."""
    return run_decode(_decode, _arrays(tensors, enc), (enc.layout.rows, enc.layout.cols))


@numba.njit(inline="always", cache=True)
def _zero(zeros, symmetric, bits, g):  # pragma: no cover - compiled
    if symmetric:
        return np.float32(1 << (bits - 1))
    return np.float32(read_code(zeros, g * bits, bits))


@numba.njit(parallel=True, fastmath=True, cache=True)
def _matmul(codes, bits, scales, zeros, symmetric, rows, cols, per, group_len, n_seg, x, x_even, x_odd, y):  # pragma: no cover
    for r in numba.prange(rows):
        for b in range(x.shape[0]):
            total = np.float32(0)
            for j in range(n_seg):
                c0, c1, g, _ = segment(r, j, cols, per, group_len, n_seg)
                z = _zero(zeros, symmetric, bits, g)
                start = (r * cols + c0) * bits
                acc = np.float32(0)
                if bits == 4 and (start & 7) == 0 and ((c1 - c0) & 1) == 0 and (c0 & 1) == 0:
                    base = (start >> 3) - (c0 >> 1)
                    for i in range(c0 >> 1, c1 >> 1):  # x's even and odd entries apart: contiguous, vectorised
                        byte = codes[base + i]
                        acc += (np.float32(byte & 15) - z) * x_even[b, i] + (np.float32(byte >> 4) - z) * x_odd[b, i]
                elif bits == 8:
                    base = start >> 3
                    for i in range(c1 - c0):
                        acc += (np.float32(codes[base + i]) - z) * x[b, c0 + i]
                else:
                    for c in range(c0, c1):
                        acc += (np.float32(read_code(codes, start + (c - c0) * bits, bits)) - z) * x[b, c]
                total += half_to_float(scales[g]) * acc
            y[b, r] = total


@numba.njit(parallel=True, fastmath=True, cache=True)
def _decode(codes, bits, scales, zeros, symmetric, rows, cols, per, group_len, n_seg, out):  # pragma: no cover
    for r in numba.prange(rows):
        for j in range(n_seg):
            c0, c1, g, _ = segment(r, j, cols, per, group_len, n_seg)
            z = _zero(zeros, symmetric, bits, g)
            s = half_to_float(scales[g])
            start = (r * cols + c0) * bits
            if bits == 4 and (start & 7) == 0 and ((c1 - c0) & 1) == 0:
                base = start >> 3
                for i in range((c1 - c0) >> 1):
                    byte = codes[base + i]
                    out[r, c0 + 2 * i] = (np.float32(byte & 15) - z) * s
                    out[r, c0 + 2 * i + 1] = (np.float32(byte >> 4) - z) * s
            else:
                for c in range(c0, c1):
                    out[r, c] = (np.float32(read_code(codes, start + (c - c0) * bits, bits)) - z) * s
