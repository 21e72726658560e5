"""Compiled kernels for the `uniform` codec, on its codes in lanes (big2small.kernels.lanes):
y = x W^T without materialising W, and W itself (the decode for larger batches).

W[r, c] = (q[r, c] - z_g) * s_g, q the code, s_g the group's scale and z_g its zero-point
(2^(bits-1) when symmetric). Per block of LANES rows and per segment (a group's run of a row),
the product sums q x over the segment for all LANES rows at once, then adds s_g (sum - z_g sum x)
to each row's total, so scales and zero-points cost one operation per group. Nibbles are split
with float arithmetic (floor(v / 16)), which AVX2 runs 8 lanes at a time, unlike numba's 64-bit
integer operations. Blocks run in parallel (numba prange).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from big2small import bitpack
from big2small.generators.base import Encoded
from big2small.generators.grouping import grouping
from big2small.kernels.lanes import (LANES, Prepared, as_numpy, build, decode_t, lane_codes, lane_segment_values,
                                     n_blocks, product, segments, store_block, x_at)

# Inputs with more rows than this decode W once and multiply densely (see big2small.compact); on a
# [1536, 576] layer, one thread (shared machine, so roughly): fused 0.08 / 0.28 / 1.1 / 1.9 ms at 1 /
# 2 / 4 / 8 rows against 0.9 / 1.4 / 1.9 / 1.6 ms for decode plus product.
FUSED_MAX_ROWS = 4


def supports(enc: Encoded) -> bool:
    return enc.config.bits <= 8


def resident(enc: Encoded) -> dict[str, torch.Tensor]:
    """Codes in lanes, and fp32 scales (and zero-points, when not symmetric) per segment in lanes."""
    cfg, layout = enc.config, enc.layout
    gp = grouping(layout, cfg.group_size)
    seg = segments(gp, layout.cols, cfg.bits)
    codes = bitpack.unpack(enc.tensors["codes"], cfg.bits, layout.numel).reshape(layout.rows, layout.cols)
    out = {"lane_codes": lane_codes(codes, seg, cfg.bits),
           "lane_scales": lane_segment_values(enc.tensors["scales"], gp, layout.rows)}
    if not cfg.symmetric:
        zeros = bitpack.unpack(enc.tensors["zeros"], cfg.bits, gp.n_groups)
        out["lane_zeros"] = lane_segment_values(zeros, gp, layout.rows)
    return out


def arrays(tensors: dict[str, torch.Tensor], enc: Encoded, threads: int | None = None) -> Prepared:
    """The kernels' arguments, prepared once (big2small.kernels.lanes.Prepared); `threads` picks
    the serial or parallel builds (default: numba's current thread count)."""
    cfg, layout = enc.config, enc.layout
    seg = segments(grouping(layout, cfg.group_size), layout.cols, cfg.bits)
    zeros = tensors.get("lane_zeros", torch.zeros(0, LANES))
    zero = float(1 << (cfg.bits - 1)) if cfg.symmetric else -1.0
    args = (as_numpy(tensors["lane_codes"]), as_numpy(tensors["lane_scales"]), as_numpy(zeros), np.float32(zero),
            seg.n_seg, seg.seg_len, seg.row_len, seg.per_byte, seg.units_per_seg)
    return Prepared(args, layout.rows, n_blocks(layout.rows) * LANES, build(_product_serial, _product_parallel, threads),
                    build(_decode_serial, _decode_parallel, threads))


def matmul(tensors: dict[str, torch.Tensor], enc: Encoded, x: torch.Tensor, prepared: Prepared | None = None) -> torch.Tensor:
    """x [B, cols] -> x W^T [B, rows] fp32, W the matrix `enc` decodes to."""
    return product(prepared or arrays(tensors, enc), x)


def decode_matrix(tensors: dict[str, torch.Tensor], enc: Encoded, prepared: Prepared | None = None) -> torch.Tensor:
    """W [rows, cols] fp32, as UniformGenerator.decode_matrix computes it (same operations, same bits);
    a transposed view of a [cols, rows] matrix, so that x @ W.T reads it in order."""
    out = decode_t(prepared or arrays(tensors, enc), enc.layout.cols)
    return torch.from_numpy(out)[:, : enc.layout.rows].T


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _product_serial(codes, scales, zeros, zero, n_seg, seg_len, row_len, per_byte, units_per_seg, x, y):  # pragma: no cover
    _product_blocks(codes, scales, zeros, zero, n_seg, seg_len, row_len, per_byte, units_per_seg, x, y, 0, y.shape[1] // LANES)


@numba.njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def _product_parallel(codes, scales, zeros, zero, n_seg, seg_len, row_len, per_byte, units_per_seg, x, y):  # pragma: no cover
    """One block of rows per iteration, the iterations spread over numba's threads."""
    for blk in numba.prange(y.shape[1] // LANES):
        _product_blocks(codes, scales, zeros, zero, n_seg, seg_len, row_len, per_byte, units_per_seg, x, y, blk, blk + 1)


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _product_blocks(codes, scales, zeros, zero, n_seg, seg_len, row_len, per_byte, units_per_seg, x, y, b0, b1):  # pragma: no cover
    """The rows of blocks b0 .. b1 - 1."""
    n_units = n_seg * units_per_seg
    for blk in range(b0, b1):
        acc = np.empty(LANES, np.float32)
        total = np.empty(LANES, np.float32)
        for b in range(x.shape[0]):
            total[:] = 0
            for j in range(n_seg):
                c0 = j * seg_len
                c1 = min(c0 + seg_len, row_len)
                acc[:] = 0
                for u in range(units_per_seg):
                    unit = codes[blk * n_units + j * units_per_seg + u]
                    c = c0 + u * per_byte
                    x0 = x_at(x, b, c, c1)
                    if per_byte == 2:
                        x1 = x_at(x, b, c + 1, c1)
                        for lane in range(LANES):
                            v = np.float32(unit[lane])
                            high = np.floor(v * np.float32(0.0625))
                            acc[lane] += (v - np.float32(16) * high) * x0 + high * x1
                    else:
                        for lane in range(LANES):
                            acc[lane] += np.float32(unit[lane]) * x0
                x_sum = np.float32(0)
                for c in range(c0, c1):
                    x_sum += x[b, c]
                s = scales[blk * n_seg + j]
                if zero >= 0:
                    zx = zero * x_sum
                    for lane in range(LANES):
                        total[lane] += s[lane] * (acc[lane] - zx)
                else:
                    z = zeros[blk * n_seg + j]
                    for lane in range(LANES):
                        total[lane] += s[lane] * (acc[lane] - z[lane] * x_sum)
            store_block(y, b, blk, total)


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _decode_serial(codes, scales, zeros, zero, n_seg, seg_len, row_len, per_byte, units_per_seg, out):  # pragma: no cover
    _decode_blocks(codes, scales, zeros, zero, n_seg, seg_len, row_len, per_byte, units_per_seg, out, 0, out.shape[1] // LANES)


@numba.njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def _decode_parallel(codes, scales, zeros, zero, n_seg, seg_len, row_len, per_byte, units_per_seg, out):  # pragma: no cover
    """One block of rows per iteration, the iterations spread over numba's threads."""
    for blk in numba.prange(out.shape[1] // LANES):
        _decode_blocks(codes, scales, zeros, zero, n_seg, seg_len, row_len, per_byte, units_per_seg, out, blk, blk + 1)


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _decode_blocks(codes, scales, zeros, zero, n_seg, seg_len, row_len, per_byte, units_per_seg, out, b0, b1):  # pragma: no cover
    """W^T [cols, n_blocks * LANES]: each output row is written LANES entries at a time, for the
    rows of blocks b0 .. b1 - 1."""
    n_units = n_seg * units_per_seg
    for blk in range(b0, b1):
        for j in range(n_seg):
            c0 = j * seg_len
            c1 = min(c0 + seg_len, row_len)
            s = scales[blk * n_seg + j]
            z = zeros[blk * n_seg + j] if zero < 0 else s  # s: a placeholder when symmetric
            for u in range(units_per_seg):
                unit = codes[blk * n_units + j * units_per_seg + u]
                for p in range(per_byte):
                    c = c0 + u * per_byte + p
                    if c >= c1:
                        break
                    w = out[c, blk * LANES:(blk + 1) * LANES]
                    for lane in range(LANES):
                        q = np.float32(unit[lane])
                        if per_byte == 2:
                            high = np.floor(q * np.float32(0.0625))
                            q = high if p == 1 else q - np.float32(16) * high
                        w[lane] = (q - (zero if zero >= 0 else z[lane])) * s[lane]
