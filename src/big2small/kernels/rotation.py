"""The incoherence rotation (generators.rotation) of a few input or output rows, compiled.

A layer whose weight is coded rotated multiplies Q x instead of x (big2small.compact). In torch,
Q x is some forty small tensor operations (one per butterfly pass), which at batch 1 costs more
than the product itself; here it is one call: random signs, the fast Walsh-Hadamard transform of
each block of 2^p entries, then the dense odd factor across blocks. Same transform as
`rotation._apply`, up to float rounding (sums in another order).
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch

from big2small.generators import rotation


def rotate_rows(x: torch.Tensor, seed: int, which: int, *, inverse: bool) -> torch.Tensor:
    """Q x (Q^T x when `inverse`) along the last dimension of x [B, n] fp32, Q the rotation of
    dimension `which` (0: a weight's columns, 1: its rows) drawn from `seed`."""
    n = x.shape[-1]
    signs, q_odd = rotation.factors(n, seed, which)
    out = np.empty((x.shape[0], n), np.float32)
    _rotate(x.detach().float().contiguous().numpy(), signs.numpy(), q_odd.numpy(), inverse, out)
    return torch.from_numpy(out)


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _hadamard(v, block):  # pragma: no cover - compiled
    """In place: the normalised Walsh-Hadamard transform of each block of `block` entries of v."""
    h = 1
    while h < block:
        for start in range(0, v.shape[0], 2 * h):
            for i in range(start, start + h):
                a = v[i]
                b = v[i + h]
                v[i] = a + b
                v[i + h] = a - b
        h *= 2
    norm = np.float32(1.0 / math.sqrt(block))
    for i in range(v.shape[0]):
        v[i] *= norm


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _mix(v, q, transpose, out):  # pragma: no cover - compiled
    """out = (Q or Q^T) applied across the odd number of blocks of v (v viewed as [odd, block])."""
    odd = q.shape[0]
    block = v.shape[0] // odd
    for i in range(odd):
        for j in range(block):
            out[i * block + j] = 0
        for k in range(odd):
            w = q[k, i] if transpose else q[i, k]
            for j in range(block):
                out[i * block + j] += w * v[k * block + j]


@numba.njit(fastmath=True, cache=True, boundscheck=False)
def _rotate(x, signs, q_odd, inverse, out):  # pragma: no cover - compiled
    n = x.shape[1]
    block = n & -n
    v = np.empty(n, np.float32)
    for b in range(x.shape[0]):
        if inverse:  # Q^T x = signs * H (Q_odd^T x)
            _mix(x[b], q_odd, True, v)
            _hadamard(v, block)
            for i in range(n):
                out[b, i] = v[i] * signs[i]
        else:  # Q x = Q_odd H (signs * x)
            for i in range(n):
                v[i] = x[b, i] * signs[i]
            _hadamard(v, block)
            _mix(v, q_odd, False, out[b])
