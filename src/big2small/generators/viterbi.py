"""Optimal search over a bit-shift trellis (the Viterbi algorithm), and its decoder.

A sequence of T weights is stored as T codes of k bits. The decoder's state after code t is the
last L stored bits, s_t = ((s_{t-1} << k) | c_t) mod 2^L with s_{-1} = 0, and weight t decodes to
`values[s_t]`: a shift register whose states map to values (hyper-compression's dynamical system,
searched optimally instead of greedily). Each state has 2^k successors and 2^k predecessors (they
differ in the k bits about to leave the register), so the best code sequence for a target x is a
shortest path: cost D_t(s) = min over predecessors p of D_{t-1}(p) + (x_t - values[s])^2.

Work is T * 2^L additions and comparisons per sequence, whatever k. On the CPU a compiled numba
kernel (viterbi_cpu, imported on first use) runs it on blocks of up to 64 sequences side by side
(SIMD across sequences, one block per thread); elsewhere (CUDA) the same recursion runs in vectorised torch over all sequences at once.
Both search exactly; where two paths tie they may pick different ones (same cost).
"""

from __future__ import annotations

import torch

# Rows per torch chunk are bounded so that the back-pointer table stays under this many bytes.
TORCH_BACKPOINTER_BYTES = 256 << 20
# The CPU kernel searches up to MAX_LANES rows side by side (SIMD across rows); fewer where their
# back-pointer table (one byte per step, predecessor group and row) would pass this many bytes.
MAX_LANES = 64
MIN_LANES = 16
CPU_BACKPOINTER_BYTES = 256 << 20


def cpu_lanes(rows: int, length: int, memory_bits: int) -> int:
    """Rows per block of the CPU kernel: a power of two in [MIN_LANES, MAX_LANES], as many as the
    rows need and the back-pointer budget (bytes per thread) allows."""
    lanes = MAX_LANES
    while lanes > MIN_LANES and (lanes // 2 >= rows or lanes * length * (1 << memory_bits) > CPU_BACKPOINTER_BYTES):
        lanes //= 2
    return lanes


def decode_states(codes: torch.Tensor, k: int, state_bits: int) -> torch.Tensor:
    """The register state after every code: codes [B, T] (ints < 2^k) -> states [B, T] int32.

    s_t holds codes t, t-1, ... packed from the low bits up, cut to `state_bits` bits; computed in
    ceil(L / k) shifted ORs over the whole tensor, not a loop over positions."""
    codes = codes.to(torch.int32)  # states have at most 12 bits; int32 halves the memory traffic of int64
    states = codes.clone()
    for j in range(1, min(-(-state_bits // k), codes.shape[1])):
        states[:, j:] |= codes[:, :-j] << (k * j)  # in place: code t - j lands on bits k*j.. of state t
    return states.bitwise_and_((1 << state_bits) - 1)


def search(x: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
    """The codes [B, T] (uint8, < 2^k) whose decoded sequence is nearest to each row of x [B, T] in
    squared error, for the trellis with state values `values` [2^L] (L = log2 of its length)."""
    state_bits = values.numel().bit_length() - 1
    if values.numel() != 1 << state_bits or not 1 <= k < state_bits or k > 8:
        raise ValueError(f"a trellis needs 2^L state values and 1 <= k < L, k <= 8; got {values.numel()} values, k={k}")
    x = x.float()
    if x.shape[1] == 0 or x.shape[0] == 0:
        return torch.zeros(x.shape, dtype=torch.uint8, device=x.device)
    kernel = _cpu_kernel() if x.device.type == "cpu" else None
    if kernel is not None:
        codes = torch.empty(tuple(x.shape), dtype=torch.uint8)
        lanes = cpu_lanes(x.shape[0], x.shape[1], state_bits - k)
        kernel(x.contiguous().numpy(), values.float().contiguous().numpy(), k, state_bits, codes.numpy(), lanes)
        return codes
    return _search_torch(x, values.float().to(x.device), k, state_bits)


def _cpu_kernel():
    """The compiled CPU search (big2small.generators.viterbi_cpu), imported on first use: numba
    takes about a second to import, which a process that never searches a trellis (a pool worker
    encoding uniform codes) should not pay. None without numba: the torch recursion runs instead."""
    try:
        from big2small.generators.viterbi_cpu import search_cpu
    except ImportError:  # pragma: no cover - numba is a dependency
        return None
    return search_cpu


def _search_torch(x: torch.Tensor, values: torch.Tensor, k: int, state_bits: int) -> torch.Tensor:
    """The Viterbi recursion in torch, vectorised over rows (chunked to bound memory)."""
    rows, length = x.shape
    n_next = 1 << (state_bits - k)  # predecessor groups: states sharing their low L-k bits
    chunk = max(1, TORCH_BACKPOINTER_BYTES // max(1, length * n_next))
    return torch.cat([_search_torch_chunk(x[i:i + chunk], values, k, state_bits) for i in range(0, rows, chunk)])


def _search_torch_chunk(x: torch.Tensor, values: torch.Tensor, k: int, state_bits: int) -> torch.Tensor:
    rows, length = x.shape
    n_states, n_branch = 1 << state_bits, 1 << k
    n_keep = n_states >> k
    by_low = values.view(n_keep, n_branch)  # state s = (low L-k bits of its predecessor) * 2^k + code
    cost = torch.full((rows, n_states), float("inf"), device=x.device)
    cost[:, :n_branch] = (x[:, :1] - values[:n_branch]) ** 2  # from the all-zero start state
    back = torch.empty((length, rows, n_keep), dtype=torch.uint8, device=x.device)
    for t in range(1, length):
        # Predecessors of the states with low part r are hi * 2^(L-k) + r: a min over the top k bits.
        best, back[t] = cost.view(rows, n_branch, n_keep).min(dim=1)
        cost = (best.unsqueeze(2) + (x[:, t, None, None] - by_low) ** 2).view(rows, n_states)
    state = cost.argmin(dim=1)
    codes = torch.empty((rows, length), dtype=torch.uint8, device=x.device)
    for t in range(length - 1, 0, -1):
        codes[:, t] = state & (n_branch - 1)
        low = state >> k
        state = back[t].gather(1, low.unsqueeze(1)).squeeze(1).long() * n_keep + low
    codes[:, 0] = state & (n_branch - 1)
    return codes
