"""Compiled kernels for the `trellis` codec, on its codes in lanes (big2small.kernels.lanes):
y = x W^T without materialising W, and W itself (the decode for larger batches). W is the matrix
the codes describe, in the rotated domain when the codec rotates (big2small.compact rotates x
instead of W).

Along each group the register runs as the codec decodes it (generators.trellis):
state_t = ((state_t-1 << k) | code_t) mod 2^L from state 0, weight_t = s_g * table[state_t];
the 2^L-entry table (1-16 KB) stays in L1. LANES rows advance their registers together; a row
inside a group that spans several rows starts from the register its group's previous row left,
computed once when the layer is built (`lane_start`). The table reads are gathers, which this CPU
runs one lane at a time. Runs of blocks run in parallel (numba prange, one run per thread); the
decode advances the registers of a run's blocks together, column by column, so that W^T is
written row after row in order.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from big2small import bitpack
from big2small.generators.base import Encoded
from big2small.generators.grouping import grouped, ungrouped
from big2small.generators.trellis import decode_states, trellis_grouping
from big2small.generators.trellis_codes import state_values
from big2small.kernels.lanes import (LANES, Prepared, add_scaled, as_numpy, decode_t, lane_codes, lane_rows,
                                     lane_segment_values, n_blocks, product, segments, store_block, x_at)

# Inputs with more rows than this decode W once and multiply densely (see big2small.compact); on a
# [1536, 576] layer, one thread (shared machine, so roughly): fused 1.4 / 2.4 / 5.1 ms at 1 / 2 / 4
# rows against 2.5 / 3.1 / 3.4 ms for decode plus product.
FUSED_MAX_ROWS = 2


def supports(enc: Encoded) -> bool:
    return True


def resident(enc: Encoded) -> dict[str, torch.Tensor]:
    """Codes in lanes, fp32 scales per segment in lanes, each row's starting register in lanes,
    and the fp32 state table."""
    cfg, layout = enc.config, enc.layout
    gp = trellis_grouping(cfg, layout)
    seg = segments(gp, layout.cols, cfg.bits)
    codes = bitpack.unpack(enc.tensors["codes"], cfg.bits, layout.numel).reshape(layout.rows, layout.cols)
    start = torch.zeros(layout.rows, 1, dtype=torch.int64)
    if gp.rows_per_group_row > 1:  # a row continues its group's register: the state before its first code
        states = ungrouped(decode_states(grouped(codes, gp), cfg.bits, cfg.state_bits), gp, layout)
        continues = torch.arange(layout.rows) % gp.rows_per_group_row != 0
        start[continues, 0] = states[:-1, -1][continues[1:]].long()
    return {"lane_codes": lane_codes(codes, seg, cfg.bits),
            "lane_scales": lane_segment_values(enc.tensors["scales"], gp, layout.rows),
            "lane_start": lane_rows(start),
            "state_table": state_values(cfg.bits, cfg.state_bits)}


def arrays(tensors: dict[str, torch.Tensor], enc: Encoded, threads: int | None = None) -> Prepared:
    """The kernels' arguments, prepared once (big2small.kernels.lanes.Prepared); `threads` (default:
    numba's current count) sets the runs of blocks."""
    cfg, layout = enc.config, enc.layout
    seg = segments(trellis_grouping(cfg, layout), layout.cols, cfg.bits)
    args = (as_numpy(tensors["lane_codes"]), as_numpy(tensors["lane_scales"]), as_numpy(tensors["lane_start"]),
            as_numpy(tensors["state_table"]), cfg.bits, (1 << cfg.state_bits) - 1,
            seg.n_seg, seg.seg_len, seg.row_len, seg.per_byte, seg.units_per_seg,
            min(threads or numba.get_num_threads(), n_blocks(layout.rows)))  # runs of blocks: one per thread
    # One build, parallel at any thread count: a serial build of the same loops was slower here
    # (big2small.kernels.lanes.build; docs/inference.md).
    return Prepared(args, layout.rows, n_blocks(layout.rows) * LANES, _product, _decode_t)


def matmul(tensors: dict[str, torch.Tensor], enc: Encoded, x: torch.Tensor, prepared: Prepared | None = None) -> torch.Tensor:
    """x [B, cols] -> x W^T [B, rows] fp32 (W in the codec's coded, i.e. rotated, domain)."""
    return product(prepared or arrays(tensors, enc), x)


def decode_matrix(tensors: dict[str, torch.Tensor], enc: Encoded, prepared: Prepared | None = None) -> torch.Tensor:
    """W [rows, cols] fp32, as TrellisGenerator.decode_matrix computes it; a transposed view of a
    [cols, rows] matrix, so that x @ W.T reads it in order."""
    out = decode_t(prepared or arrays(tensors, enc), enc.layout.cols)
    return torch.from_numpy(out)[:, : enc.layout.rows].T


@numba.njit(inline="always", cache=True)
def _code(unit, lane, p, per_byte):  # pragma: no cover - compiled
    """Code p of a unit: a nibble of a two-code byte, or the whole unit."""
    v = np.int64(unit[lane])
    return (v >> 4 if p == 1 else v & 15) if per_byte == 2 else v


@numba.njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def _product(codes, scales, start, table, k, mask, n_seg, seg_len, row_len, per_byte, units_per_seg, n_chunks, x, y):  # pragma: no cover
    n_units = n_seg * units_per_seg
    nb = y.shape[1] // LANES
    for chunk in numba.prange(n_chunks):  # runs of blocks, one per thread
        for blk in range(chunk * nb // n_chunks, (chunk + 1) * nb // n_chunks):
            acc = np.empty(LANES, np.float32)
            total = np.empty(LANES, np.float32)
            state = np.empty(LANES, np.int64)
            middle = np.empty(LANES, np.int64)  # the register after a unit's first code
            first = start[blk]
            for b in range(x.shape[0]):
                total[:] = 0
                for j in range(n_seg):
                    c0 = j * seg_len
                    c1 = min(c0 + seg_len, row_len)
                    acc[:] = 0
                    for lane in range(LANES):
                        state[lane] = first[lane]
                    for u in range(units_per_seg):
                        unit = codes[blk * n_units + j * units_per_seg + u]
                        c = c0 + u * per_byte
                        x0 = x_at(x, b, c, c1)
                        # The registers advance in one loop (integer SIMD) and the table is read in
                        # another (one lane at a time): together they would not vectorise at all.
                        if per_byte == 2:
                            x1 = x_at(x, b, c + 1, c1)
                            for lane in range(LANES):
                                v = np.int64(unit[lane])
                                s0 = ((state[lane] << k) | (v & 15)) & mask
                                middle[lane] = s0
                                state[lane] = ((s0 << k) | (v >> 4)) & mask
                            for lane in range(LANES):
                                acc[lane] += table[middle[lane]] * x0 + table[state[lane]] * x1
                        else:
                            for lane in range(LANES):
                                state[lane] = ((state[lane] << k) | np.int64(unit[lane])) & mask
                            for lane in range(LANES):
                                acc[lane] += table[state[lane]] * x0
                    add_scaled(total, scales[blk * n_seg + j], acc)
                store_block(y, b, blk, total)


@numba.njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def _decode_t(codes, scales, start, table, k, mask, n_seg, seg_len, row_len, per_byte, units_per_seg, n_chunks, out):  # pragma: no cover
    """W^T [cols, n_blocks * LANES], written row after row in order: the registers of every block of
    a run advance together, column by column, so each output row is written LANES entries per
    block, block after block (not one block's stripe down all rows: a new page per entry run).
    `n_chunks` runs of blocks, one per thread."""
    n_units = n_seg * units_per_seg
    nb = out.shape[1] // LANES
    for chunk in numba.prange(n_chunks):
        b0 = chunk * nb // n_chunks
        b1 = (chunk + 1) * nb // n_chunks
        state = np.empty((b1 - b0, LANES), np.int64)
        for j in range(n_seg):
            c0 = j * seg_len
            c1 = min(c0 + seg_len, row_len)
            for blk in range(b0, b1):
                first, st = start[blk], state[blk - b0]
                for lane in range(LANES):
                    st[lane] = first[lane]
            for u in range(units_per_seg):
                for p in range(per_byte):
                    c = c0 + u * per_byte + p
                    if c >= c1:
                        break
                    for blk in range(b0, b1):
                        unit = codes[blk * n_units + j * units_per_seg + u]
                        st, s = state[blk - b0], scales[blk * n_seg + j]
                        w = out[c, blk * LANES:(blk + 1) * LANES]
                        for lane in range(LANES):  # registers (integer SIMD), then table reads, as in _product
                            st[lane] = ((st[lane] << k) | _code(unit, lane, p, per_byte)) & mask
                        for lane in range(LANES):
                            w[lane] = table[st[lane]] * s[lane]
