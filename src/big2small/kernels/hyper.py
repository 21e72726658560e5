"""Compiled kernels for the `hyper` codec, on its indices in lanes (big2small.kernels.lanes):
y = x W^T without materialising W, and W itself (the decode for larger batches), for codebooks
without rings.

Each index picks one codeword of `dim` values from the fp32 codebook (a few KB, in L1); per
block of LANES rows and per segment (a group's run of vectors), the product sums codeword . x
for all LANES rows, then multiplies each row's sum by its group's scale once. The codebook reads
are gathers, which this CPU runs one lane at a time, so hyper's product is slower per weight
than uniform's. Columns are padded to whole vectors as the codec pads them (x is read as zero
there). Blocks run in parallel (numba prange).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from big2small import bitpack
from big2small.generators.base import Encoded
from big2small.generators.grouping import grouping
from big2small.generators.hyper import codebook_of, padded_layout
from big2small.kernels.lanes import (LANES, add_scaled, as_numpy, lane_codes, lane_segment_values, n_blocks,
                                     product_output, segments, store_block)


# Inputs with more rows than this decode W once and multiply densely (see big2small.compact); on a
# [1536, 576] layer, one thread (shared machine, so roughly): fused 1.0 / 2.0 / 3.5 ms at 1 / 2 / 4
# rows against 2.6 / 3.0 / 2.8 ms for decode plus product.
FUSED_MAX_ROWS = 2


def supports(enc: Encoded) -> bool:
    return not enc.config.rings  # ring codes scale codewords by a radius per ring: decode-then-matmul


def _segments(enc: Encoded):
    cfg = enc.config
    playout = padded_layout(enc.layout, cfg.dim)
    gp = grouping(playout, cfg.group_size)
    # Vectors per row, grouped as the codec groups weights: group_len / dim vectors per group.
    seg = segments(gp, playout.cols // cfg.dim, max(cfg.bits, 5))  # one index per unit, never nibbles
    if gp.rows_per_group_row == 1:
        seg = type(seg)(seg.n_seg, gp.group_len // cfg.dim, seg.row_len, seg.per_byte)
    return playout, gp, seg


def resident(enc: Encoded) -> dict[str, torch.Tensor]:
    """Indices in lanes (one per byte, or per 16-bit word above 8 bits), fp32 scales per segment in
    lanes, and the fp32 codebook."""
    cfg = enc.config
    playout, gp, seg = _segments(enc)
    n_vectors = playout.numel // cfg.dim
    codes = enc.tensors["codes"] if cfg.bits == 8 else bitpack.unpack(enc.tensors["codes"], cfg.bits, n_vectors)
    return {"lane_codes": lane_codes(codes.reshape(playout.rows, -1), seg, max(cfg.bits, 5)),
            "lane_scales": lane_segment_values(enc.tensors["scales"], gp, playout.rows),
            "codebook": codebook_of(enc).float().contiguous()}


def arrays(tensors: dict[str, torch.Tensor], enc: Encoded) -> tuple:
    """The kernels' arguments: numpy views of the resident `tensors` (valid while they live) and integers."""
    _, _, seg = _segments(enc)
    return (as_numpy(tensors["lane_codes"]), as_numpy(tensors["lane_scales"]), as_numpy(tensors["codebook"].reshape(-1)),
            enc.config.dim, seg.n_seg, seg.seg_len, seg.units_per_seg)


def matmul(tensors: dict[str, torch.Tensor], enc: Encoded, x: torch.Tensor, prepared: tuple | None = None) -> torch.Tensor:
    """x [B, cols] -> x W^T [B, rows] fp32 (W in the codec's coded, i.e. rotated, domain)."""
    xs, y = product_output(x, enc.layout.rows)
    _product(*(prepared or arrays(tensors, enc)), xs, y)
    return torch.from_numpy(y)[:, : enc.layout.rows]


def decode_matrix(tensors: dict[str, torch.Tensor], enc: Encoded, prepared: tuple | None = None) -> torch.Tensor:
    """W [rows, cols] fp32, as HyperGenerator.decode_matrix computes it; a transposed view of a
    [cols, rows] matrix, so that x @ W.T reads it in order."""
    playout = padded_layout(enc.layout, enc.config.dim)
    out = np.empty((playout.cols, n_blocks(enc.layout.rows) * LANES), np.float32)
    _decode_t(*(prepared or arrays(tensors, enc)), out)
    return torch.from_numpy(out)[: enc.layout.cols, : enc.layout.rows].T


@numba.njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def _product(codes, scales, codebook, dim, n_seg, seg_len, units_per_seg, x, y):  # pragma: no cover
    n_units = n_seg * units_per_seg
    cols = x.shape[1]
    for blk in numba.prange(y.shape[1] // LANES):
        acc = np.empty(LANES, np.float32)
        total = np.empty(LANES, np.float32)
        for b in range(x.shape[0]):
            total[:] = 0
            for j in range(n_seg):
                acc[:] = 0
                for u in range(units_per_seg):
                    unit = codes[blk * n_units + j * units_per_seg + u]
                    c = (j * seg_len + u) * dim
                    if dim == 2 and c + 1 < cols:
                        x0 = x[b, c]
                        x1 = x[b, c + 1]
                        for lane in range(LANES):
                            i = np.int64(unit[lane]) * 2
                            acc[lane] += codebook[i] * x0 + codebook[i + 1] * x1
                    else:
                        for d in range(min(dim, cols - c)):
                            xd = x[b, c + d]
                            for lane in range(LANES):
                                acc[lane] += codebook[np.int64(unit[lane]) * dim + d] * xd
                add_scaled(total, scales[blk * n_seg + j], acc)
            store_block(y, b, blk, total)


@numba.njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def _decode_t(codes, scales, codebook, dim, n_seg, seg_len, units_per_seg, out):  # pragma: no cover
    """W^T [padded cols, n_blocks * LANES]: each output row is written LANES entries at a time."""
    n_units = n_seg * units_per_seg
    for blk in numba.prange(out.shape[1] // LANES):
        for j in range(n_seg):
            s = scales[blk * n_seg + j]
            for u in range(units_per_seg):
                unit = codes[blk * n_units + j * units_per_seg + u]
                c = (j * seg_len + u) * dim
                if dim == 2 and c + 1 < out.shape[0]:  # the default: both rows of W^T in one pass
                    w0 = out[c, blk * LANES:(blk + 1) * LANES]
                    w1 = out[c + 1, blk * LANES:(blk + 1) * LANES]
                    for lane in range(LANES):
                        i = np.int64(unit[lane]) * 2
                        w0[lane] = codebook[i] * s[lane]
                        w1[lane] = codebook[i + 1] * s[lane]
                    continue
                for d in range(dim):
                    if c + d >= out.shape[0]:
                        break
                    w = out[c + d, blk * LANES:(blk + 1) * LANES]
                    for lane in range(LANES):
                        w[lane] = codebook[np.int64(unit[lane]) * dim + d] * s[lane]
