"""The compiled (numba) CPU kernel of big2small.generators.viterbi's search: blocks of up to 64
sequences searched side by side (SIMD across sequences), one block per thread. Its own module so
that numba is imported only by a process that searches a trellis on the CPU.

search_cpu(x [rows, T] float32, values [2^L] float32, k, L, codes [rows, T] uint8 (written), lanes).
"""

from __future__ import annotations

import numba
import numpy as np


@numba.njit(parallel=True, fastmath=True, boundscheck=False, cache=True)
def search_cpu(x, values, k, state_bits, codes, lanes):  # pragma: no cover - compiled; tested through search()
    rows, length = x.shape
    n_blocks = (rows + lanes - 1) // lanes
    for block in numba.prange(n_blocks):
        first = block * lanes
        xb = np.zeros((length, lanes), np.float32)  # the block's rows side by side (padding rows are 0)
        for lane in range(min(lanes, rows - first)):
            for t in range(length):
                xb[t, lane] = x[first + lane, t]
        back = np.empty((length, 1 << (state_bits - k), lanes), np.uint8)
        cost = _forward(xb, values, k, state_bits, back)
        for lane in range(min(lanes, rows - first)):
            _trace_back(cost, back, k, state_bits, lane, codes[first + lane])


@numba.njit(fastmath=True, boundscheck=False, cache=True)
def _forward(xb, values, k, state_bits, back):  # pragma: no cover - compiled
    """The recursion for `lanes` sequences at once: cost[s, lane]. Every inner loop runs over the
    lanes through a row view of a 2-D array, which LLVM turns into SIMD (flat index arithmetic
    or a trip count it can fully unroll leaves it scalar). The running arg-min is kept as
    float32 so that its select uses the comparison's own mask width; a uint8 select does not
    vectorise."""
    length, lanes = xb.shape
    n_states, n_branch = 1 << state_bits, 1 << k
    n_keep = n_states >> k
    cost = np.full((n_states, lanes), np.inf, np.float32)
    nxt = np.empty((n_states, lanes), np.float32)
    best = np.empty(lanes, np.float32)
    arg = np.empty(lanes, np.float32)
    for c in range(n_branch):  # from the all-zero start state
        row, x0 = cost[c], xb[0]
        for lane in range(lanes):
            e = x0[lane] - values[c]
            row[lane] = e * e
    for t in range(1, length):
        xt, bt = xb[t], back[t]
        for r in range(n_keep):
            # Predecessors of the states with low part r are hi * 2^(L-k) + r: a min over hi.
            row = cost[r]
            for lane in range(lanes):
                best[lane] = row[lane]
                arg[lane] = 0.0
            for hi in range(1, n_branch):
                row = cost[hi * n_keep + r]
                f_hi = np.float32(hi)
                for lane in range(lanes):
                    c, b = row[lane], best[lane]
                    smaller = c < b  # strict: the first minimum wins, as in the torch recursion
                    best[lane] = c if smaller else b
                    arg[lane] = f_hi if smaller else arg[lane]
            out = bt[r]
            for lane in range(lanes):
                out[lane] = np.uint8(arg[lane])
            for c in range(n_branch):
                s = r * n_branch + c
                v, row = values[s], nxt[s]
                for lane in range(lanes):
                    e = xt[lane] - v
                    row[lane] = best[lane] + e * e
        cost, nxt = nxt, cost
    return cost


@numba.njit(fastmath=True, boundscheck=False, cache=True)
def _trace_back(cost, back, k, state_bits, lane, codes_row):  # pragma: no cover - compiled
    n_states, n_branch = 1 << state_bits, 1 << k
    n_keep = n_states >> k
    state = 0
    for s in range(1, n_states):
        if cost[s, lane] < cost[state, lane]:
            state = s
    for t in range(codes_row.shape[0] - 1, 0, -1):
        codes_row[t] = state & (n_branch - 1)
        low = state >> k
        state = back[t, low, lane] * n_keep + low
    codes_row[0] = state & (n_branch - 1)
