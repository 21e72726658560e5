"""Compiled kernels for the `trellis` codec: y = x W^T without materialising W, and W itself (the
decode for larger batches). W is the matrix the codes describe, in the rotated domain when the
codec rotates (big2small.compact rotates x instead of W).

The codec decodes a group as a shift register: state_t = ((state_t-1 << k) | code_t) mod 2^L from
state 0, weight_t = s_g * table[state_t]. Run weight after weight, that is a serial chain of three
integer operations per weight. The kernels instead read every state directly from its bit
position, with no chain: each row's segment (a group's run of the row) is kept in memory as one
bit stream, its first state's L - k leading bits (the register a row continues from, when a group
spans rows; zeros otherwise), then its k-bit codes, each code's bits first to last, the stream's
bits packed low bit first, the stream starting on a byte. State t is then the L bits at stream
bit t k, read low bit first: the codec's state with its bits reversed, so the resident table is
permuted to match (table'[reverse(s)] = table[s], the same values). A chunk of CHUNK = 8 weights
is k bytes; two unaligned 64-bit loads give its states (0-3 from the first, 4-7 from the second,
k / 2 bytes on), each a shift and a mask, all eight independent.

The product runs ROWS = 8 rows at a time, chunk by chunk of columns: the chunk's eight inputs are
read once for the eight rows, whose 64 table reads and multiply-adds are independent (a running
sum per row, in registers); it asks for the next block's streams (LLVM's prefetch) while it runs
this one. Its float sums are not reassociated by the compiler (PRODUCT_MATH):
with reassociation LLVM vectorised the chunk loop into a slower form. The table (2^L fp32: 1 KB
to 256 KB) stays in L1 or L2. Rows are padded to a multiple of ROWS (zero streams, zero scales;
their outputs are dropped). The decode writes W row by row, in order, table[state] * scale as the
codec computes it (bit for bit). A segment's last, partial chunk is read weight by weight. Each
kernel has a serial and a parallel build over the same body (big2small.kernels.lanes.build); the
parallel one splits the rows into one run per thread. The stored bit stream is untouched: this is
the in-memory form only, built once per layer (`resident`).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from big2small import bitpack
from big2small.generators.base import Encoded
from big2small.generators.grouping import grouped, ungrouped
from big2small.generators.trellis import decode_states, trellis_grouping
from big2small.generators.trellis_codes import state_values
from big2small.kernels.lanes import Prepared, as_numpy, build, product, segment_groups, segments

# Inputs with more rows than this decode W once and multiply densely (see big2small.compact); on a
# [1536, 576] layer, one thread, CPU time on the loaded machine: fused 0.28 / 0.55 / 0.81 / 1.08 ms
# at 1 / 2 / 3 / 4 rows against 0.47 / 0.55 / 0.66 / 0.61 ms for decode plus product.
FUSED_MAX_ROWS = 2
ROWS = 8  # rows per block: eight independent table reads and running sums per input value
# Fast-math flags but reassociation: with it, LLVM vectorises the chunk loop's sum (a version for
# k = 1, scalarised table reads), 3x slower.
PRODUCT_MATH = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}
CHUNK = 8  # weights per pass: k bytes of a stream, read as two 64-bit loads


def supports(enc: Encoded) -> bool:
    # A state and its shift within a load fit in 64 bits: 3 k + 4 + L <= 64 for every shipped (k, L).
    return 3 * enc.config.bits + 4 + enc.config.state_bits <= 64


def _stream_bytes(k: int, state_bits: int, seg_len: int) -> int:
    """Bytes of one segment's stream: L - k leading bits and seg_len codes, to a whole byte (a
    chunk's load may run into the next stream: those bits are never used)."""
    return math.ceil((state_bits - k + seg_len * k) / 8)


def _bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """Integers [..., n] -> their `width` bits, highest first, [..., n * width] uint8 (computed in
    the integers' own dtype: uint8 codes cost one byte per bit)."""
    shifts = torch.arange(width - 1, -1, -1, dtype=values.dtype)
    return ((values.unsqueeze(-1) >> shifts) & 1).to(torch.uint8).flatten(-2)


def resident(enc: Encoded) -> dict[str, torch.Tensor]:
    """Each row's segment streams (uint8, rows padded to a multiple of ROWS, then 8 bytes so the
    last load stays inside), fp32 scales per row and segment, and the state table permuted to
    bit-reversed states (fp32)."""
    cfg, layout = enc.config, enc.layout
    k, L = cfg.bits, cfg.state_bits
    gp = trellis_grouping(cfg, layout)
    seg = segments(gp, layout.cols, k)
    rows = layout.rows
    codes = bitpack.unpack(enc.tensors["codes"], k, layout.numel).reshape(rows, layout.cols)
    start = torch.zeros(rows, seg.n_seg, dtype=torch.int64)
    if gp.rows_per_group_row > 1:  # a row continues its group's register: the state before its first code
        states = ungrouped(decode_states(grouped(codes, gp), k, L), gp, layout)
        continues = torch.arange(rows) % gp.rows_per_group_row != 0
        start[continues, 0] = states[:-1, -1][continues[1:]].long()
    padded = torch.nn.functional.pad(codes.to(torch.uint8), (0, seg.n_seg * seg.seg_len - layout.cols))
    bits = torch.cat([_bits(start.unsqueeze(-1), L - k),  # the first state's leading L - k bits
                      _bits(padded.reshape(rows, seg.n_seg, seg.seg_len), k)], dim=2)
    nbytes = _stream_bytes(k, L, seg.seg_len)
    bits = torch.nn.functional.pad(bits, (0, 8 * nbytes - bits.shape[2])).reshape(rows, seg.n_seg, nbytes, 8)
    streams = (bits << torch.arange(8, dtype=torch.uint8)).sum(3, dtype=torch.uint8)  # distinct bits: no carry
    padded_rows = math.ceil(rows / ROWS) * ROWS
    streams = torch.nn.functional.pad(streams.reshape(rows, -1), (0, 0, 0, padded_rows - rows))
    scales = enc.tensors["scales"].float()[segment_groups(gp, rows)]
    reverse = _bits(torch.arange(1 << L).unsqueeze(-1), L).reshape(-1, L)  # bits of each index, highest first
    reversed_index = (reverse.long() << torch.arange(L)).sum(1)  # those bits read lowest first
    return {"streams": torch.nn.functional.pad(streams.reshape(-1), (0, 8)),
            "scales": torch.nn.functional.pad(scales, (0, 0, 0, padded_rows - rows)).contiguous(),
            "state_table": state_values(k, L)[reversed_index].contiguous()}


def arrays(tensors: dict[str, torch.Tensor], enc: Encoded, threads: int | None = None) -> Prepared:
    """The kernels' arguments, prepared once (big2small.kernels.lanes.Prepared); `threads` (default:
    numba's current count) picks the serial or parallel builds and sets the runs of blocks."""
    cfg, layout = enc.config, enc.layout
    k, L = cfg.bits, cfg.state_bits
    seg = segments(trellis_grouping(cfg, layout), layout.cols, k)
    width = math.ceil(layout.rows / ROWS) * ROWS
    threads = threads or numba.get_num_threads()
    args = (as_numpy(tensors["streams"]), as_numpy(tensors["scales"]), as_numpy(tensors["state_table"]),
            k, (1 << L) - 1, seg.n_seg, seg.seg_len, seg.row_len, _stream_bytes(k, L, seg.seg_len),
            min(threads, width // ROWS))
    return Prepared(args, layout.rows, width, build(_product_serial, _product_parallel, threads),
                    build(_decode_serial, _decode_parallel, threads))


def matmul(tensors: dict[str, torch.Tensor], enc: Encoded, x: torch.Tensor, prepared: Prepared | None = None) -> torch.Tensor:
    """x [B, cols] -> x W^T [B, rows] fp32 (W in the codec's coded, i.e. rotated, domain)."""
    return product(prepared or arrays(tensors, enc), x)


def decode_matrix(tensors: dict[str, torch.Tensor], enc: Encoded, prepared: Prepared | None = None) -> torch.Tensor:
    """W [rows, cols] fp32 (row-major, as nn.Linear keeps its weight), as TrellisGenerator.decode_matrix
    computes it (bit for bit)."""
    prepared = prepared or arrays(tensors, enc)
    out = np.empty((prepared.rows, enc.layout.cols), np.float32)
    prepared.decode(*prepared.args, out)
    return torch.from_numpy(out)


@intrinsic
def _load64(typingctx, data, offset):
    """The 8 bytes of uint8 array `data` from byte `offset` as one little-endian int64 (an
    unaligned load; the caller keeps offset + 8 inside the array)."""
    if not (isinstance(data, types.Array) and data.dtype == types.uint8 and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        address = builder.gep(array.data, [args[1]])
        return builder.load(builder.bitcast(address, ir.IntType(64).as_pointer()), align=1)

    return types.int64(data, offset), codegen


@intrinsic
def _prefetch(typingctx, data, offset):
    """Ask for the cache line holding byte `offset` of uint8 array `data` into the caches (LLVM's
    prefetch: a hint, which never faults)."""
    if not (isinstance(data, types.Array) and data.dtype == types.uint8 and isinstance(offset, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        address = builder.gep(array.data, [args[1]])
        i32 = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [address.type, i32, i32, i32]),
                                                  "llvm.prefetch.p0")
        builder.call(prefetch, [address, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])  # read, keep, data
        return context.get_dummy_value()

    return types.void(data, offset), codegen


@numba.njit(inline="always", cache=True)
def _state(word, shift, mask):  # pragma: no cover - compiled
    """The L-bit state at bit `shift` of a loaded word (bit-reversed, as the resident table is
    indexed); unsigned, so that indexing checks for no negative index."""
    return (np.uint64(word) >> np.uint64(shift)) & np.uint64(mask)


@numba.njit(inline="always", cache=True)
def _state_at(streams, at, t, k, mask):  # pragma: no cover - compiled
    """State t of the stream at byte `at`, by itself (a segment's last, partial chunk)."""
    return _state(_load64(streams, at + t * k // 8), t * k % 8, mask)


@numba.njit(inline="always", cache=True)
def _chunk_dot(streams, at, k, mask, table, x0, x1, x2, x3, x4, x5, x6, x7):  # pragma: no cover - compiled
    """sum_m table[state m] x_m over a chunk of CHUNK weights (k bytes from byte `at`): states 0-3
    from one load, 4-7 from a second, k / 2 bytes on (plus half a byte when k is odd)."""
    a = _load64(streams, at)
    b = _load64(streams, at + k // 2)
    h = 4 * (k % 2)
    return ((table[_state(a, 0, mask)] * x0 + table[_state(a, k, mask)] * x1)
            + (table[_state(a, 2 * k, mask)] * x2 + table[_state(a, 3 * k, mask)] * x3)) \
        + ((table[_state(b, h, mask)] * x4 + table[_state(b, h + k, mask)] * x5)
           + (table[_state(b, h + 2 * k, mask)] * x6 + table[_state(b, h + 3 * k, mask)] * x7))


@numba.njit(fastmath=PRODUCT_MATH, cache=True, boundscheck=False)
def _product_blocks(streams, scales, table, k, mask, n_seg, seg_len, row_len, seg_bytes, x, y, b0, b1):  # pragma: no cover
    """y = x W^T for the rows of blocks b0 .. b1 - 1 (ROWS rows each): chunk by chunk of CHUNK
    columns, the chunk's inputs read once for the block's ROWS rows."""
    row_bytes = n_seg * seg_bytes
    block_bytes = ROWS * row_bytes
    for blk in range(b0, b1):
        r0 = blk * ROWS
        if blk + 1 < b1:  # the next block's streams, asked for while this one runs (short streams: the
            for at in range(0, block_bytes, 64):  # CPU's own prefetchers do not catch them in time)
                _prefetch(streams, (blk + 1) * block_bytes + at)
        for b in range(x.shape[0]):
            xb = x[b]
            t0 = t1 = t2 = t3 = t4 = t5 = t6 = t7 = np.float32(0)
            for j in range(n_seg):
                c0 = j * seg_len
                n = min(seg_len, row_len - c0)
                full = n // CHUNK * CHUNK
                at = r0 * row_bytes + j * seg_bytes
                a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0)
                for ch in range(0, full, CHUNK):
                    xs = xb[c0 + ch:c0 + ch + CHUNK]  # constant indices: no negative-index checks
                    x0, x1, x2, x3, x4, x5, x6, x7 = xs[0], xs[1], xs[2], xs[3], xs[4], xs[5], xs[6], xs[7]
                    u = at + ch // CHUNK * k
                    a0 += _chunk_dot(streams, u, k, mask, table, x0, x1, x2, x3, x4, x5, x6, x7)
                    a1 += _chunk_dot(streams, u + row_bytes, k, mask, table, x0, x1, x2, x3, x4, x5, x6, x7)
                    a2 += _chunk_dot(streams, u + 2 * row_bytes, k, mask, table, x0, x1, x2, x3, x4, x5, x6, x7)
                    a3 += _chunk_dot(streams, u + 3 * row_bytes, k, mask, table, x0, x1, x2, x3, x4, x5, x6, x7)
                    a4 += _chunk_dot(streams, u + 4 * row_bytes, k, mask, table, x0, x1, x2, x3, x4, x5, x6, x7)
                    a5 += _chunk_dot(streams, u + 5 * row_bytes, k, mask, table, x0, x1, x2, x3, x4, x5, x6, x7)
                    a6 += _chunk_dot(streams, u + 6 * row_bytes, k, mask, table, x0, x1, x2, x3, x4, x5, x6, x7)
                    a7 += _chunk_dot(streams, u + 7 * row_bytes, k, mask, table, x0, x1, x2, x3, x4, x5, x6, x7)
                for t in range(full, n):  # the last, partial chunk
                    xv = xb[c0 + t]
                    a0 += table[_state_at(streams, at, t, k, mask)] * xv
                    a1 += table[_state_at(streams, at + row_bytes, t, k, mask)] * xv
                    a2 += table[_state_at(streams, at + 2 * row_bytes, t, k, mask)] * xv
                    a3 += table[_state_at(streams, at + 3 * row_bytes, t, k, mask)] * xv
                    a4 += table[_state_at(streams, at + 4 * row_bytes, t, k, mask)] * xv
                    a5 += table[_state_at(streams, at + 5 * row_bytes, t, k, mask)] * xv
                    a6 += table[_state_at(streams, at + 6 * row_bytes, t, k, mask)] * xv
                    a7 += table[_state_at(streams, at + 7 * row_bytes, t, k, mask)] * xv
                s = scales[r0:r0 + ROWS, j]
                t0 += s[0] * a0
                t1 += s[1] * a1
                t2 += s[2] * a2
                t3 += s[3] * a3
                t4 += s[4] * a4
                t5 += s[5] * a5
                t6 += s[6] * a6
                t7 += s[7] * a7
            out = y[b, r0:r0 + ROWS]
            out[0], out[1], out[2], out[3] = t0, t1, t2, t3
            out[4], out[5], out[6], out[7] = t4, t5, t6, t7


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _product_serial(streams, scales, table, k, mask, n_seg, seg_len, row_len, seg_bytes, n_runs, x, y):  # pragma: no cover
    _product_blocks(streams, scales, table, k, mask, n_seg, seg_len, row_len, seg_bytes, x, y, 0, y.shape[1] // ROWS)


@numba.njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def _product_parallel(streams, scales, table, k, mask, n_seg, seg_len, row_len, seg_bytes, n_runs, x, y):  # pragma: no cover
    """`n_runs` runs of blocks of rows, one per thread."""
    nb = y.shape[1] // ROWS
    for run in numba.prange(n_runs):
        _product_blocks(streams, scales, table, k, mask, n_seg, seg_len, row_len, seg_bytes, x, y,
                        run * nb // n_runs, (run + 1) * nb // n_runs)


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _decode_rows(streams, scales, table, k, mask, n_seg, seg_len, row_len, seg_bytes, out, r0, r1):  # pragma: no cover
    """W [rows, cols] for rows r0 .. r1 - 1, each row written in order, CHUNK weights per two
    loads: table[state] * scale, the codec's operation (bit for bit)."""
    row_bytes = n_seg * seg_bytes
    h = 4 * (k % 2)
    for r in range(r0, r1):
        w_row = out[r]
        for j in range(n_seg):
            c0 = j * seg_len
            n = min(seg_len, row_len - c0)
            full = n // CHUNK * CHUNK
            s = scales[r, j]
            at = r * row_bytes + j * seg_bytes
            for ch in range(0, full, CHUNK):
                u = at + ch // CHUNK * k
                a = _load64(streams, u)
                b = _load64(streams, u + k // 2)
                w = w_row[c0 + ch:c0 + ch + CHUNK]
                w[0] = table[_state(a, 0, mask)] * s
                w[1] = table[_state(a, k, mask)] * s
                w[2] = table[_state(a, 2 * k, mask)] * s
                w[3] = table[_state(a, 3 * k, mask)] * s
                w[4] = table[_state(b, h, mask)] * s
                w[5] = table[_state(b, h + k, mask)] * s
                w[6] = table[_state(b, h + 2 * k, mask)] * s
                w[7] = table[_state(b, h + 3 * k, mask)] * s
            for t in range(full, n):  # the last, partial chunk
                w_row[c0 + t] = table[_state_at(streams, at, t, k, mask)] * s


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _decode_serial(streams, scales, table, k, mask, n_seg, seg_len, row_len, seg_bytes, n_runs, out):  # pragma: no cover
    _decode_rows(streams, scales, table, k, mask, n_seg, seg_len, row_len, seg_bytes, out, 0, out.shape[0])


@numba.njit(parallel=True, fastmath=True, cache=True, boundscheck=False)
def _decode_parallel(streams, scales, table, k, mask, n_seg, seg_len, row_len, seg_bytes, n_runs, out):  # pragma: no cover
    """`n_runs` runs of rows, one per thread."""
    rows = out.shape[0]
    for run in numba.prange(n_runs):
        _decode_rows(streams, scales, table, k, mask, n_seg, seg_len, row_len, seg_bytes, out,
                     run * rows // n_runs, (run + 1) * rows // n_runs)
