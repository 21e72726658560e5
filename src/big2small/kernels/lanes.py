"""The resident layout the compiled kernels read: a matrix's codes in *lanes*.

A codec stores its codes as one bit stream, row after row. For a batch-1 product that order is
slow on a CPU: each row is one long dot product whose codes must be unpacked one by one. The
kernels instead keep LANES consecutive rows side by side: unit u of rows [b * LANES, (b + 1) *
LANES) is one contiguous run of LANES entries, so the same unpacking step runs on all of them at
once (SIMD) and each input value is read once per LANES rows. A unit holds `per_byte` codes:
two 4-bit nibbles for codes of at most 4 bits (resident: 4 bits per code), else one code per
byte (5-8 bits) or per 16-bit word (9-16 bits, hyper's wide indices).

Each row is cut into segments, the runs of codes that share a group's metadata (one per group
along the row, or the whole row when a group spans several rows), and each segment is padded to
whole units; the padding codes are zero and meet zero inputs. Per-segment metadata (scales,
zero-points) is kept in lanes too, as fp32 (a SIMD multiply needs no conversion).

Rows are padded to a whole number of blocks of LANES; outputs of padding rows are dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np
import torch

from big2small.generators.grouping import Grouping

LANES = 64  # rows per block: 8 AVX2 vectors of fp32, enough to hide the unpacking latency


@dataclass(frozen=True)
class Segments:
    """How each row's `row_len` codes are cut into `n_seg` segments of `seg_len` codes (the last
    may be shorter), each stored as `units_per_seg` units of `per_byte` codes, rounded up to a
    multiple of `unit_multiple` units (a kernel that reads several units per pass)."""

    n_seg: int
    seg_len: int
    row_len: int
    per_byte: int
    unit_multiple: int = 1

    @property
    def units_per_seg(self) -> int:
        return math.ceil(self.seg_len / self.per_byte / self.unit_multiple) * self.unit_multiple

    @property
    def n_units(self) -> int:
        return self.n_seg * self.units_per_seg


def segments(gp: Grouping, row_len: int, bits: int) -> Segments:
    """The segments of rows of `row_len` codes grouped by `gp` (groups along a row, or a group of whole rows)."""
    per_byte = 2 if bits <= 4 else 1
    if gp.rows_per_group_row == 1:
        return Segments(gp.groups_per_row, gp.group_len, row_len, per_byte)
    return Segments(1, row_len, row_len, per_byte)


def segment_groups(gp: Grouping, rows: int) -> torch.Tensor:
    """[rows, n_seg]: the group each segment of each row belongs to."""
    r = torch.arange(rows).unsqueeze(1)
    if gp.rows_per_group_row == 1:
        return r * gp.groups_per_row + torch.arange(gp.groups_per_row)
    return r // gp.rows_per_group_row


def n_blocks(rows: int) -> int:
    return math.ceil(rows / LANES)


def lane_rows(values: torch.Tensor) -> torch.Tensor:
    """[rows, n] -> [n_blocks * n, LANES]: entry j of rows b*LANES .. b*LANES+LANES-1 at row b*n + j."""
    rows, n = values.shape
    nb = n_blocks(rows)
    padded = torch.nn.functional.pad(values, (0, 0, 0, nb * LANES - rows))
    return padded.reshape(nb, LANES, n).transpose(1, 2).reshape(nb * n, LANES).contiguous()


def lane_codes(codes: torch.Tensor, seg: Segments, bits: int) -> torch.Tensor:
    """Codes [rows, row_len] (integers below 2^bits) -> units in lanes [n_blocks * n_units, LANES]."""
    rows = codes.shape[0]
    codes = codes.long()
    row = torch.nn.functional.pad(codes, (0, seg.n_seg * seg.seg_len - seg.row_len)).reshape(rows, seg.n_seg, seg.seg_len)
    row = torch.nn.functional.pad(row, (0, seg.units_per_seg * seg.per_byte - seg.seg_len))
    row = row.reshape(rows, seg.n_units, seg.per_byte)
    units = (row << (4 * torch.arange(seg.per_byte))).sum(2)  # two nibbles: the first code low
    dtype = torch.uint8 if bits <= 8 else torch.int16
    if dtype is torch.int16:
        units = torch.where(units >= 1 << 15, units - (1 << 16), units)  # 16-bit words as signed int16
    return lane_rows(units.to(dtype))


def lane_segment_values(values: torch.Tensor, gp: Grouping, rows: int) -> torch.Tensor:
    """Per-group values [n_groups] -> per-segment fp32 values in lanes [n_blocks * n_seg, LANES]."""
    return lane_rows(values.float()[segment_groups(gp, rows)])


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's memory as a numpy array (no copy); int16 words as uint16."""
    array = t.detach().contiguous().numpy()
    return array.view(np.uint16) if array.dtype == np.int16 else array


@dataclass(frozen=True)
class Prepared:
    """A layer's kernel arguments, prepared once (`arrays` of a kernel module), so that a call
    costs a few microseconds of Python: `args`, numpy views of the resident arrays (valid while
    they live) and integers; `rows` of the output and `width` = n_blocks(rows) * LANES, the rows
    the kernels write; the compiled `product` and `decode` to call (`build`); `fused`: whether the
    product reads the codes (hyper decodes, then multiplies densely, for codebooks too large for
    the layer)."""

    args: tuple
    rows: int
    width: int
    product: Callable
    decode: Callable
    fused: bool = True


def build(serial: Callable, parallel: Callable, threads: int | None = None) -> Callable:
    """The build of a kernel to run at `threads` numba threads (default: numba's current count,
    read when a layer's arguments are prepared): the serial one at one thread, since entering a
    parallel region costs microseconds per call even then; else the parallel one."""
    return serial if (threads or numba.get_num_threads()) == 1 else parallel


def as_input(x: torch.Tensor) -> np.ndarray:
    """x [B, cols] as the kernels' fp32 C-contiguous numpy input (no copy when it is one already)."""
    if x.requires_grad:
        x = x.detach()
    return x.float().contiguous().numpy()


def product(prepared: Prepared, x: torch.Tensor) -> torch.Tensor:
    """x [B, cols] -> x W^T [B, rows] fp32 by `prepared.product` (a fresh output each call)."""
    y = np.empty((x.shape[0], prepared.width), np.float32)
    prepared.product(*prepared.args, as_input(x), y)
    out = torch.from_numpy(y)
    return out if prepared.width == prepared.rows else out[:, :prepared.rows]


def decode_t(prepared: Prepared, cols: int) -> np.ndarray:
    """W^T [cols, width] fp32 by `prepared.decode` (cols: the padded columns the decode writes)."""
    out = np.empty((cols, prepared.width), np.float32)
    prepared.decode(*prepared.args, out)
    return out


@numba.njit(inline="always", cache=True)
def x_at(x, b, c, end):  # pragma: no cover - compiled; tested through the kernels
    """x[b, c], or 0 past the segment's end (padding codes meet zero inputs)."""
    return x[b, c] if c < end else np.float32(0)


@numba.njit(inline="always", cache=True)
def add_scaled(total, scale, acc):  # pragma: no cover - compiled; tested through the kernels
    """total += scale * acc, lane by lane (a segment's sums, times its group's scale)."""
    for lane in range(LANES):
        total[lane] += scale[lane] * acc[lane]


@numba.njit(inline="always", cache=True)
def store_block(y, b, blk, total):  # pragma: no cover - compiled; tested through the kernels
    """Rows blk * LANES .. + LANES of output row b are `total`."""
    out = y[b, blk * LANES:(blk + 1) * LANES]
    for lane in range(LANES):
        out[lane] = total[lane]
