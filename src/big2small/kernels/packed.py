"""Reading the codecs' stored arrays inside compiled (numba) kernels: bit-packed codes and fp16 scales.

Codes are the LSB-first streams of big2small.bitpack: value k of width B bits occupies stream bits
[kB, kB + B), stream bit t being bit (t mod 8) of byte floor(t / 8). numba has no float16, so fp16
scales are read as their raw 16 bits (a uint16 view) and converted here.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch


@numba.njit(inline="always", cache=True)
def read_code(codes, bit_pos, bits):  # pragma: no cover - compiled; tested through the kernels
    """The `bits`-bit value (bits <= 17) that starts at stream bit `bit_pos`; reads only the bytes it spans."""
    byte = bit_pos >> 3
    offset = bit_pos & 7
    value = np.int64(codes[byte]) >> offset
    if offset + bits > 8:
        value |= np.int64(codes[byte + 1]) << (8 - offset)
        if offset + bits > 16:
            value |= np.int64(codes[byte + 2]) << (16 - offset)
    return value & ((1 << bits) - 1)


# 2^(e - 25) for each fp16 exponent field e (2^-24 for e = 0, whose mantissa has no implicit 1):
# a multiply per conversion instead of a libm ldexp call.
_HALF_EXPONENT = np.array([math.ldexp(1.0, max(e, 1) - 25) for e in range(32)], np.float32)


@numba.njit(inline="always", cache=True)
def half_to_float(raw):  # pragma: no cover - compiled; tested through the kernels
    """An IEEE fp16 number, given as its 16 bits, as float32 (finite values: the codecs store no Inf/NaN)."""
    raw = np.int64(raw) & 0xFFFF
    exponent = (raw >> 10) & 0x1F
    mantissa = (raw & 0x3FF) | (1024 if exponent else 0)
    value = np.float32(mantissa) * _HALF_EXPONENT[exponent]
    return -value if raw >> 15 else value


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """A CPU tensor's memory as a numpy array (no copy); fp16 as its raw 16 bits (uint16)."""
    if t.dtype == torch.float16:
        t = t.view(torch.int16)
    array = t.detach().contiguous().numpy()
    return array.view(np.uint16) if array.dtype == np.int16 else array


def run_product(kernel, arrays: tuple, rows: int, x: torch.Tensor, *x_views: torch.Tensor) -> torch.Tensor:
    """Call a compiled product kernel(*arrays, x, *x_views, y) on fp32 inputs x [B, cols]; y [B, rows]."""
    y = np.empty((x.shape[0], rows), np.float32)
    kernel(*arrays, as_numpy(x), *(as_numpy(v) for v in x_views), y)
    return torch.from_numpy(y)


def run_decode(kernel, arrays: tuple, shape: tuple[int, int]) -> torch.Tensor:
    """Call a compiled decode kernel(*arrays, out) into a fresh fp32 matrix of `shape`."""
    out = np.empty(shape, np.float32)
    kernel(*arrays, out)
    return torch.from_numpy(out)
