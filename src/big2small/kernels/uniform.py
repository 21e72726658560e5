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
from torch import nn

from big2small.generators.base import Encoded
from big2small.generators.grouping import grouping
from big2small.kernels.packed import as_numpy, half_to_float, read_code, run_decode, run_product
from big2small.kernels.rows import segment, segment_plan


# Inputs with more rows than this decode W once and multiply densely (see big2small.compact): the
# product recomputes the codes' values for each row of x, and the decode is nearly as fast.
FUSED_MAX_ROWS = 1


def supports(enc: Encoded) -> bool:
    return True


def resident_extra(enc: Encoded) -> dict[str, torch.Tensor]:
    """Nothing beyond the stored arrays: codes, fp16 scales and zero-points are read as stored."""
    return {}


def arrays(tensors: dict[str, torch.Tensor], enc: Encoded) -> tuple:
    """The kernels' arguments: numpy views of `tensors` (valid while they live) and the shape integers."""
    cfg = enc.config
    gp = grouping(enc.layout, cfg.group_size)
    zeros = tensors.get("zeros", torch.zeros(1, dtype=torch.uint8))
    return (as_numpy(tensors["codes"]), cfg.bits, as_numpy(tensors["scales"]), as_numpy(zeros), cfg.symmetric,
            enc.layout.rows, enc.layout.cols, *segment_plan(gp))


def matmul(tensors: dict[str, torch.Tensor], enc: Encoded, x: torch.Tensor, prepared: tuple | None = None) -> torch.Tensor:
    """x [B, cols] fp32 -> x W^T [B, rows] fp32, W the matrix `enc`'s stored arrays (`tensors`) decode to."""
    x = x.detach().float()
    prepared = prepared or arrays(tensors, enc)
    bits, cols, per, group_len = prepared[1], prepared[6], prepared[7], prepared[8]
    if bits == 4 and per == 1 and cols % 2 == 0 and group_len % 2 == 0:
        # Whole bytes per group: the byte-wise kernel, with each group's zero-point applied to its sum of x.
        group_sums = nn.functional.pad(x, (0, -cols % group_len)).view(x.shape[0], -1, group_len).sum(2)
        return run_product(_matmul4, prepared, enc.layout.rows, x[:, 0::2], x[:, 1::2], group_sums)
    return run_product(_matmul, prepared, enc.layout.rows, x)


def decode_matrix(tensors: dict[str, torch.Tensor], enc: Encoded, prepared: tuple | None = None) -> torch.Tensor:
    """W [rows, cols] fp32, as UniformGenerator.decode_matrix computes it (same operations, same bits)."""
    return run_decode(_decode, prepared or arrays(tensors, enc), (enc.layout.rows, enc.layout.cols))


@numba.njit(inline="always", cache=True)
def _zero(zeros, symmetric, bits, g):  # pragma: no cover - compiled
    if symmetric:
        return np.float32(1 << (bits - 1))
    return np.float32(read_code(zeros, g * bits, bits))


@numba.njit(parallel=True, fastmath=True, cache=True)
def _matmul(codes, bits, scales, zeros, symmetric, rows, cols, per, group_len, n_seg, x, y):  # pragma: no cover
    for r in numba.prange(rows):
        for b in range(x.shape[0]):
            total = np.float32(0)
            for j in range(n_seg):
                c0, c1, g, _ = segment(r, j, cols, per, group_len, n_seg)
                z = _zero(zeros, symmetric, bits, g)
                start = (r * cols + c0) * bits
                acc = np.float32(0)
                if bits == 8:
                    base = start >> 3
                    for i in range(c1 - c0):
                        acc += (np.float32(codes[base + i]) - z) * x[b, c0 + i]
                else:
                    for c in range(c0, c1):
                        acc += (np.float32(read_code(codes, start + (c - c0) * bits, bits)) - z) * x[b, c]
                total += half_to_float(scales[g]) * acc
            y[b, r] = total


@numba.njit(parallel=True, fastmath=True, cache=True)
def _matmul4(codes, bits, scales, zeros, symmetric, rows, cols, per, group_len, n_seg, x_even, x_odd,
             group_sums, y):  # pragma: no cover
    """4-bit codes, groups of whole bytes along rows of whole bytes. Per row: one long loop of
    products q x over the row (vectorised: the nibbles are split with float arithmetic, which AVX2
    converts 8 at a time, unlike numba's int64 integer ops), then the groups' sums, each times its
    scale, less zero-point x the group's sum of x."""
    half_row = cols // 2
    half_group = group_len // 2
    for r in numba.prange(rows):
        products = np.empty(half_row, np.float32)
        base = r * half_row
        for b in range(x_even.shape[0]):
            x_lo = x_even[b]
            x_hi = x_odd[b]
            for i in range(half_row):
                byte = np.float32(codes[base + i])
                high = np.floor(byte * np.float32(0.0625))
                products[i] = (byte - np.float32(16) * high) * x_lo[i] + high * x_hi[i]
            total = np.float32(0)
            for j in range(n_seg):
                acc = np.float32(0)
                for i in range(j * half_group, min((j + 1) * half_group, half_row)):
                    acc += products[i]
                g = r * n_seg + j
                total += half_to_float(scales[g]) * (acc - _zero(zeros, symmetric, bits, g) * group_sums[b, j])
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
