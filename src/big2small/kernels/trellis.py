"""Compiled kernels for the `trellis` codec on its stored arrays: y = W x without materialising W,
and W itself (the decode for large batches). W is the matrix the codes describe, in the rotated
domain when the codec rotates (big2small.compact rotates x instead of W).

Along each group the register runs as the codec decodes it (generators.trellis):
state_t = ((state_{t-1} << k) | code_t) mod 2^L from state 0, weight_t = s_g * table[state_t];
the 2^L-entry table (4-16 KB) stays in L1. A row inside a group that spans several rows starts
from the state its group's previous codes leave. The product keeps two accumulators per row
(consecutive weights) so that the table loads overlap. Rows run in parallel (numba prange).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from big2small.generators.base import Encoded
from big2small.generators.trellis import trellis_grouping
from big2small.generators.trellis_codes import state_values
from big2small.kernels.packed import as_numpy, half_to_float, read_code, run_decode, run_product
from big2small.kernels.rows import segment, segment_plan


# Inputs with more rows than this decode W once and multiply densely (see big2small.compact).
FUSED_MAX_ROWS = 1


def supports(enc: Encoded) -> bool:
    return True


def resident_extra(enc: Encoded) -> dict[str, torch.Tensor]:
    """What the kernels read besides the stored arrays: the fp32 state table."""
    return {"state_table": state_values(enc.config.bits, enc.config.state_bits)}


def arrays(tensors: dict[str, torch.Tensor], enc: Encoded) -> tuple:
    """The kernels' arguments: numpy views of `tensors` (valid while they live) and the shape integers."""
    cfg = enc.config
    table = tensors["state_table"] if "state_table" in tensors else resident_extra(enc)["state_table"]
    return (as_numpy(tensors["codes"]), cfg.bits, cfg.state_bits, as_numpy(table), as_numpy(tensors["scales"]),
            enc.layout.rows, enc.layout.cols, *segment_plan(trellis_grouping(cfg, enc.layout)))


def matmul(tensors: dict[str, torch.Tensor], enc: Encoded, x: torch.Tensor, prepared: tuple | None = None) -> torch.Tensor:
    """x [B, cols] fp32 -> x W^T [B, rows] fp32 (W in the codec's coded, i.e. rotated, domain)."""
    return run_product(_matmul, prepared or arrays(tensors, enc), enc.layout.rows, x.detach().float())


def decode_matrix(tensors: dict[str, torch.Tensor], enc: Encoded, prepared: tuple | None = None) -> torch.Tensor:
    """W [rows, cols] fp32, as TrellisGenerator.decode_matrix computes it."""
    return run_decode(_decode, prepared or arrays(tensors, enc), (enc.layout.rows, enc.layout.cols))


@numba.njit(inline="always", cache=True)
def _register_at(codes, k, state_bits, group_start, first):  # pragma: no cover - compiled
    """The register before flat position `first`: 0 at its group's start, else what the group's
    previous codes (the last ceil(L / k), all that still shape it) left."""
    mask = (1 << state_bits) - 1
    n_prev = (state_bits + k - 1) // k
    state = 0
    for e in range(max(group_start, first - n_prev), first):
        state = ((state << k) | read_code(codes, e * k, k)) & mask
    return state


@numba.njit(parallel=True, fastmath=True, cache=True)
def _matmul(codes, k, state_bits, table, scales, rows, cols, per, group_len, n_seg, x, y):  # pragma: no cover
    mask = (1 << state_bits) - 1
    for r in numba.prange(rows):
        for b in range(x.shape[0]):
            total = np.float32(0)
            for j in range(n_seg):
                c0, c1, g, group_start = segment(r, j, cols, per, group_len, n_seg)
                first = r * cols + c0
                state = _register_at(codes, k, state_bits, group_start, first)
                acc0 = np.float32(0)
                acc1 = np.float32(0)
                c = c0
                if k == 4 and (first & 1) == 0:
                    base = first >> 1
                    while c + 1 < c1:
                        byte = codes[base + ((c - c0) >> 1)]
                        state = ((state << 4) | (byte & 15)) & mask
                        acc0 += table[state] * x[b, c]
                        state = ((state << 4) | (byte >> 4)) & mask
                        acc1 += table[state] * x[b, c + 1]
                        c += 2
                while c < c1:
                    state = ((state << k) | read_code(codes, (r * cols + c) * k, k)) & mask
                    acc0 += table[state] * x[b, c]
                    c += 1
                total += half_to_float(scales[g]) * (acc0 + acc1)
            y[b, r] = total


@numba.njit(parallel=True, fastmath=True, cache=True)
def _decode(codes, k, state_bits, table, scales, rows, cols, per, group_len, n_seg, out):  # pragma: no cover
    mask = (1 << state_bits) - 1
    for r in numba.prange(rows):
        for j in range(n_seg):
            c0, c1, g, group_start = segment(r, j, cols, per, group_len, n_seg)
            first = r * cols + c0
            state = _register_at(codes, k, state_bits, group_start, first)
            s = half_to_float(scales[g])
            for c in range(c0, c1):
                state = ((state << k) | read_code(codes, (r * cols + c) * k, k)) & mask
                out[r, c] = table[state] * s
