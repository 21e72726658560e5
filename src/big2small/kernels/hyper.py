"""Compiled kernels for the `hyper` codec, on its indices in lanes (big2small.kernels.lanes):
y = x W^T without materialising W, and W itself (the decode for larger batches), for codebooks
without rings.

Each index picks one codeword of `dim` values from the fp32 codebook. The product is a table
lookup (LUT-GEMV): for each vector position p along the rows, table[i] = codeword_i . x_p (x_p the
p-th `dim` input values; one SIMD pass over the codebook, shared by every row), then each row adds
table[its index] and, at the end of a segment (a group's run of vectors), multiplies its sum by
the group's scale once. A weight vector thus costs one table read and one add; four positions are
read per pass over a block of LANES rows, so each row's running sum is loaded and stored once per
four lookups (segments are padded to whole multiples of UNITS_PER_PASS units; padding adds zero).
Building a table costs 2^bits x dim multiply-adds per position, so for codebooks too large for
the layer (`by_table`) the product decodes W and multiplies densely instead. The decode writes
W^T, codeword value times scale, LANES rows at a time; for pairs (dim 2) each index is read once
and its codeword as one 64-bit value (complex64), both values written. Each kernel has a serial
and a parallel build over the same compiled body (big2small.kernels.lanes.build). Columns are padded to whole vectors as the
codec pads them (x is read as zero there). The table reads and the decode's codebook reads are
loads one lane at a time (the compiler does not emit gathers for this CPU).
"""

from __future__ import annotations

import dataclasses

import numba
import numpy as np
import torch

from big2small import bitpack
from big2small.generators.base import Encoded
from big2small.generators.grouping import grouping
from big2small.generators.hyper import codebook_of, padded_layout
from big2small.kernels.lanes import (LANES, Prepared, add_scaled, as_numpy, build, decode_t, lane_codes,
                                     lane_segment_values, n_blocks, product, segments, store_block)


# Inputs with more rows than this decode W once and multiply densely (see big2small.compact); on a
# [1536, 576] layer, one thread, CPU time on a loaded machine: fused (tables) 0.37 / 0.45 / 0.68 /
# 0.84 ms at 1 / 2 / 3 / 4 rows against 1.03 / 0.88 / 0.95 / 1.05 ms for decode plus product.
FUSED_MAX_ROWS = 4
UNITS_PER_PASS = 4  # vector positions the product reads per pass over a block of rows


def supports(enc: Encoded) -> bool:
    return not enc.config.rings  # ring codes scale codewords by a radius per ring: decode-then-matmul


def _segments(enc: Encoded):
    cfg = enc.config
    playout = padded_layout(enc.layout, cfg.dim)
    gp = grouping(playout, cfg.group_size)
    # Vectors per row, grouped as the codec groups weights: group_len / dim vectors per group.
    seg = segments(gp, playout.cols // cfg.dim, max(cfg.bits, 5))  # one index per unit, never nibbles
    seg_len = gp.group_len // cfg.dim if gp.rows_per_group_row == 1 else seg.seg_len
    return playout, gp, dataclasses.replace(seg, seg_len=seg_len, unit_multiple=UNITS_PER_PASS)


def resident(enc: Encoded) -> dict[str, torch.Tensor]:
    """Indices in lanes (one per byte, or per 16-bit word above 8 bits; pass-major), fp32 scales per
    segment in lanes, and the fp32 codebook transposed ([dim, 2^bits])."""
    cfg = enc.config
    playout, gp, seg = _segments(enc)
    n_vectors = playout.numel // cfg.dim
    codes = enc.tensors["codes"] if cfg.bits == 8 else bitpack.unpack(enc.tensors["codes"], cfg.bits, n_vectors)
    units = lane_codes(codes.reshape(playout.rows, -1), seg, max(cfg.bits, 5))
    # Pass-major: the UNITS_PER_PASS units of every block that one pass reads are adjacent, so the
    # kernels read the codes as one forward stream.
    nb = n_blocks(playout.rows)
    units = units.reshape(nb, -1, UNITS_PER_PASS, LANES).transpose(0, 1).reshape(-1, LANES).contiguous()
    return {"lane_codes": units,
            "lane_scales": lane_segment_values(enc.tensors["scales"], gp, playout.rows),
            "codebook_t": codebook_of(enc).float().T.contiguous()}


def arrays(tensors: dict[str, torch.Tensor], enc: Encoded, threads: int | None = None) -> Prepared:
    """The kernels' arguments, prepared once (big2small.kernels.lanes.Prepared); `threads` picks
    the serial or parallel builds (default: numba's current thread count)."""
    _, _, seg = _segments(enc)
    threads = threads or numba.get_num_threads()
    nb = n_blocks(enc.layout.rows)
    args = (as_numpy(tensors["lane_codes"]), as_numpy(tensors["lane_scales"]), as_numpy(tensors["codebook_t"]),
            enc.config.dim, seg.n_seg, seg.seg_len, seg.units_per_seg, min(threads, nb))  # runs of blocks: one per thread
    return Prepared(args, enc.layout.rows, nb * LANES,
                    build(_product_serial, _product_parallel, threads), build(_decode_serial, _decode_parallel, threads),
                    fused=by_table(enc))


def by_table(enc: Encoded) -> bool:
    """Whether the product builds tables: one costs 2^bits x dim multiply-adds (8 per SIMD
    instruction) per vector position and saves about one operation per row, so it pays while
    2^bits x dim / 8 is at most the rows (in whole blocks). Else decode, then a dense product."""
    return (1 << enc.config.bits) * enc.config.dim <= 8 * n_blocks(enc.layout.rows) * LANES


def matmul(tensors: dict[str, torch.Tensor], enc: Encoded, x: torch.Tensor, prepared: Prepared | None = None) -> torch.Tensor:
    """x [B, cols] -> x W^T [B, rows] fp32 (W in the codec's coded, i.e. rotated, domain)."""
    prepared = prepared or arrays(tensors, enc)
    if not prepared.fused:
        return x.float() @ decode_matrix(tensors, enc, prepared).T
    return product(prepared, x)


def decode_matrix(tensors: dict[str, torch.Tensor], enc: Encoded, prepared: Prepared | None = None) -> torch.Tensor:
    """W [rows, cols] fp32, as HyperGenerator.decode_matrix computes it; a transposed view of a
    [cols, rows] matrix, so that x @ W.T reads it in order."""
    out = decode_t(prepared or arrays(tensors, enc), padded_layout(enc.layout, enc.config.dim).cols)
    return torch.from_numpy(out)[: enc.layout.cols, : enc.layout.rows].T


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _product_serial(codes, scales, codebook_t, dim, n_seg, seg_len, units_per_seg, n_chunks, x, y):  # pragma: no cover
    """The `n_chunks` runs of blocks of rows in turn (one run at one thread)."""
    nb = y.shape[1] // LANES
    for chunk in range(n_chunks):
        _product_blocks(codes, scales, codebook_t, dim, n_seg, seg_len, units_per_seg, x, y,
                        chunk * nb // n_chunks, (chunk + 1) * nb // n_chunks)


@numba.njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def _product_parallel(codes, scales, codebook_t, dim, n_seg, seg_len, units_per_seg, n_chunks, x, y):  # pragma: no cover
    """The `n_chunks` runs of blocks of rows, one per thread; each builds its own tables."""
    nb = y.shape[1] // LANES
    for chunk in numba.prange(n_chunks):
        _product_blocks(codes, scales, codebook_t, dim, n_seg, seg_len, units_per_seg, x, y,
                        chunk * nb // n_chunks, (chunk + 1) * nb // n_chunks)


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _product_blocks(codes, scales, codebook_t, dim, n_seg, seg_len, units_per_seg, x, y, b0, b1):  # pragma: no cover
    """y = x W^T by table lookups (the module docstring), for the rows of blocks b0 .. b1 - 1."""
    n_codes = codebook_t.shape[1]
    cols = x.shape[1]
    nb = y.shape[1] // LANES
    tables = np.empty((UNITS_PER_PASS, n_codes), np.float32)
    acc = np.empty((b1 - b0, LANES), np.float32)
    total = np.zeros((b1 - b0, LANES), np.float32)
    for b in range(x.shape[0]):
        total[:] = 0
        for j in range(n_seg):
            acc[:] = 0
            for u0 in range(0, units_per_seg, UNITS_PER_PASS):
                for p in range(UNITS_PER_PASS):
                    t = tables[p]
                    c = (j * seg_len + u0 + p) * dim
                    valid = max(0, min(dim, cols - c)) if u0 + p < seg_len else 0  # padding: all zero
                    xd = x[b, c] if valid > 0 else np.float32(0)
                    cb = codebook_t[0]
                    if valid == 2:  # pairs (the default): the table in one pass
                        x1, cb1 = x[b, c + 1], codebook_t[1]
                        for i in range(n_codes):
                            t[i] = cb[i] * xd + cb1[i] * x1
                        continue
                    for i in range(n_codes):
                        t[i] = cb[i] * xd
                    for d in range(1, valid):
                        xd = x[b, c + d]
                        cb = codebook_t[d]
                        for i in range(n_codes):
                            t[i] += cb[i] * xd
                t0, t1, t2, t3 = tables[0], tables[1], tables[2], tables[3]
                first = (j * units_per_seg + u0) * nb  # pass-major: this pass's units of every block
                for blk in range(b0, b1):
                    u = first + blk * UNITS_PER_PASS
                    c0, c1, c2, c3 = codes[u], codes[u + 1], codes[u + 2], codes[u + 3]
                    a = acc[blk - b0]
                    for lane in range(LANES):
                        a[lane] += (t0[c0[lane]] + t1[c1[lane]]) + (t2[c2[lane]] + t3[c3[lane]])
            for blk in range(b0, b1):
                add_scaled(total[blk - b0], scales[blk * n_seg + j], acc[blk - b0])
        for blk in range(b0, b1):
            store_block(y, b, blk, total[blk - b0])


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _decode_serial(codes, scales, codebook_t, dim, n_seg, seg_len, units_per_seg, n_chunks, out):  # pragma: no cover
    """The `n_chunks` runs of blocks of rows in turn (one run at one thread)."""
    nb = out.shape[1] // LANES
    for chunk in range(n_chunks):
        _decode_blocks(codes, scales, codebook_t, dim, n_seg, seg_len, units_per_seg, out,
                       chunk * nb // n_chunks, (chunk + 1) * nb // n_chunks)


@numba.njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def _decode_parallel(codes, scales, codebook_t, dim, n_seg, seg_len, units_per_seg, n_chunks, out):  # pragma: no cover
    """The `n_chunks` runs of blocks of rows, one per thread."""
    nb = out.shape[1] // LANES
    for chunk in numba.prange(n_chunks):
        _decode_blocks(codes, scales, codebook_t, dim, n_seg, seg_len, units_per_seg, out,
                       chunk * nb // n_chunks, (chunk + 1) * nb // n_chunks)


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _decode_blocks(codes, scales, codebook_t, dim, n_seg, seg_len, units_per_seg, out, b0, b1):  # pragma: no cover
    """W^T [padded cols, n_blocks * LANES] for the rows of blocks b0 .. b1 - 1: pass by pass, each
    output row written LANES entries at a time, block after block (in order)."""
    nb = out.shape[1] // LANES
    pairs = np.empty(codebook_t.shape[1] if dim == 2 else 0, np.complex64)  # codeword i as one 64-bit value
    for i in range(pairs.shape[0]):
        pairs[i] = codebook_t[0, i] + np.complex64(1j) * codebook_t[1, i]
    for j in range(n_seg):
        for u0 in range(0, min(seg_len, units_per_seg), UNITS_PER_PASS):
            first = (j * units_per_seg + u0) * nb
            for blk in range(b0, b1):
                s = scales[blk * n_seg + j]
                for p in range(min(UNITS_PER_PASS, seg_len - u0)):  # not the padding units
                    unit = codes[first + blk * UNITS_PER_PASS + p]
                    c = (j * seg_len + u0 + p) * dim
                    valid = max(0, min(dim, out.shape[0] - c))  # a row's last segment may be shorter
                    if valid == 2:  # pairs (the default): each index read once for both values
                        w0 = out[c, blk * LANES:(blk + 1) * LANES]
                        w1 = out[c + 1, blk * LANES:(blk + 1) * LANES]
                        for lane in range(LANES):
                            v = pairs[unit[lane]]
                            w0[lane] = v.real * s[lane]
                            w1[lane] = v.imag * s[lane]
                        continue
                    for d in range(valid):
                        cb = codebook_t[d]
                        w = out[c + d, blk * LANES:(blk + 1) * LANES]
                        for lane in range(LANES):
                            w[lane] = cb[unit[lane]] * s[lane]
