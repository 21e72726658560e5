"""Compiled kernels for the `hyper` codec on its stored arrays: y = W x without materialising W,
and W itself (the decode for large batches), for codebooks without rings.

Each stored index picks one codeword of `dim` values from the fp32 codebook (a few KB, in L1);
each group's fp16 scale multiplies its segment's partial sum once. Columns are padded to a whole
number of vectors as the codec pads them (x gets zeros there). Rows run in parallel (numba prange).
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from big2small.generators.base import Encoded
from big2small.generators.grouping import grouping
from big2small.generators.hyper import codebook_of, padded_layout
from big2small.kernels.packed import as_numpy, half_to_float, read_code, run_decode, run_product
from big2small.kernels.rows import segment, segment_plan


# Inputs with more rows than this decode W once and multiply densely (see big2small.compact).
FUSED_MAX_ROWS = 1


def supports(enc: Encoded) -> bool:
    return not enc.config.rings  # ring codes scale codewords by a radius per ring: decode-then-matmul


def resident_extra(enc: Encoded) -> dict[str, torch.Tensor]:
    """What the kernels read besides the stored arrays: the fp32 codebook."""
    return {"codebook": codebook_of(enc).float().contiguous()}


def arrays(tensors: dict[str, torch.Tensor], enc: Encoded) -> tuple:
    """The kernels' arguments: numpy views of `tensors` (valid while they live) and the shape integers."""
    cfg = enc.config
    playout = padded_layout(enc.layout, cfg.dim)
    codebook = tensors["codebook"].float() if "codebook" in tensors else resident_extra(enc)["codebook"]
    return (as_numpy(tensors["codes"]), cfg.bits, cfg.dim, as_numpy(codebook.contiguous()), as_numpy(tensors["scales"]),
            enc.layout.rows, playout.cols, *segment_plan(grouping(playout, cfg.group_size)))


def matmul(tensors: dict[str, torch.Tensor], enc: Encoded, x: torch.Tensor, prepared: tuple | None = None) -> torch.Tensor:
    """x [B, cols] fp32 -> x W^T [B, rows] fp32 (W in the codec's coded, i.e. rotated, domain)."""
    x = x.detach().float()
    pad = padded_layout(enc.layout, enc.config.dim).cols - x.shape[1]
    x = torch.nn.functional.pad(x, (0, pad)) if pad else x
    return run_product(_matmul, prepared or arrays(tensors, enc), enc.layout.rows, x)


def decode_matrix(tensors: dict[str, torch.Tensor], enc: Encoded, prepared: tuple | None = None) -> torch.Tensor:
    """W [rows, cols] fp32, as HyperGenerator.decode_matrix computes it."""
    playout = padded_layout(enc.layout, enc.config.dim)
    return run_decode(_decode, prepared or arrays(tensors, enc), (playout.rows, playout.cols))[:, : enc.layout.cols]


@numba.njit(parallel=True, fastmath=True, cache=True)
def _matmul(codes, bits, dim, codebook, scales, rows, cols, per, group_len, n_seg, x, y):  # pragma: no cover
    for r in numba.prange(rows):
        for b in range(x.shape[0]):
            total = np.float32(0)
            for j in range(n_seg):
                c0, c1, g, _ = segment(r, j, cols, per, group_len, n_seg)
                first = (r * cols + c0) // dim  # vector index; segments hold whole vectors
                acc = np.float32(0)
                if bits == 8 and dim == 2:
                    for v in range((c1 - c0) >> 1):
                        index = codes[first + v]
                        c = c0 + 2 * v
                        acc += codebook[index, 0] * x[b, c] + codebook[index, 1] * x[b, c + 1]
                else:
                    for v in range((c1 - c0) // dim):
                        index = read_code(codes, (first + v) * bits, bits)
                        for d in range(dim):
                            acc += codebook[index, d] * x[b, c0 + v * dim + d]
                total += half_to_float(scales[g]) * acc
            y[b, r] = total


@numba.njit(parallel=True, fastmath=True, cache=True)
def _decode(codes, bits, dim, codebook, scales, rows, cols, per, group_len, n_seg, out):  # pragma: no cover
    for r in numba.prange(rows):
        for j in range(n_seg):
            c0, c1, g, _ = segment(r, j, cols, per, group_len, n_seg)
            first = (r * cols + c0) // dim
            s = half_to_float(scales[g])
            if bits == 8 and dim == 2:  # the default: one byte per pair
                for v in range((c1 - c0) >> 1):
                    index = codes[first + v]
                    out[r, c0 + 2 * v] = codebook[index, 0] * s
                    out[r, c0 + 2 * v + 1] = codebook[index, 1] * s
            else:
                for v in range((c1 - c0) // dim):
                    index = read_code(codes, (first + v) * bits, bits)
                    for d in range(dim):
                        out[r, c0 + v * dim + d] = codebook[index, d] * s
