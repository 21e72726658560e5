"""The state values of the trellis codec: one table of 2^L values per (k, L), shaped to a Gaussian.

A table starts as the 2^L Gaussian quantiles (i + 1/2) / 2^L in a seeded random order (a random
Gaussian code, as a bit-shift trellis wants, without the sampling noise of random draws), then
takes Lloyd steps on the trellis: encode unit-RMS Gaussian sequences optimally (viterbi.search),
move each state's value to the mean of the weights that ended in it. The tables ship with the
package (`trellis_codes.safetensors`, 0 stored bits per tensor); `python -m
big2small.generators.trellis_codes` rebuilds them, deterministically.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from big2small.errors import Big2SmallError
from big2small.generators.viterbi import decode_states, search

PACKAGED_TRELLIS_CODES = Path(__file__).with_name("trellis_codes.safetensors")
# The (k, L) pairs that ship: code widths 1..8 at register lengths 8, 10 and 12 (L > k), the
# widths the rate-distortion targets are measured at (2-4 bits) on a 14-bit register, where each
# search costs 4x a 12-bit one, and 4 bits on a 16-bit register (16x a 12-bit search), the one
# width whose gap to the bound a 14-bit register leaves above 0.75 dB.
SHIPPED_CODE_BITS = {8: range(1, 8), 10: range(1, 9), 12: range(1, 9), 14: range(2, 5), 16: range(4, 5)}
SHIPPED_STATE_BITS = tuple(SHIPPED_CODE_BITS)
TRAIN_SEQUENCE_LENGTH = 512
# Training sequences per table at L <= 12; longer registers get proportionally more, so that every
# table is fitted on the same number of weights per state (32).
TRAIN_ROWS = 256


def table_name(k: int, state_bits: int) -> str:
    return f"k{k}_L{state_bits}"


def shipped_pairs() -> list[tuple[int, int]]:
    return [(k, L) for L, widths in SHIPPED_CODE_BITS.items() for k in widths]


def is_shipped(k: int, state_bits: int) -> bool:
    return k in SHIPPED_CODE_BITS.get(state_bits, ())


@functools.cache
def _packaged() -> dict[str, torch.Tensor]:
    return load_file(str(PACKAGED_TRELLIS_CODES))


def state_values(k: int, state_bits: int) -> torch.Tensor:
    """The shipped table of 2^L fp32 state values for k-bit codes (a fresh copy)."""
    table = _packaged().get(table_name(k, state_bits))
    if table is None:
        raise Big2SmallError(f"trellis: no code table for {k} bits per weight with a {state_bits}-bit "
                             f"register; shipped: {shipped_summary()}")
    return table.clone()


def shipped_summary() -> str:
    """The shipped pairs in words, for error messages."""
    return "; ".join(f"L={L}: {min(w)}-{max(w)} bits" for L, w in SHIPPED_CODE_BITS.items())


def gaussian_quantile_code(state_bits: int, seed: int) -> torch.Tensor:
    """The 2^L Gaussian quantiles at (i + 1/2) / 2^L, in a seeded random order."""
    n = 1 << state_bits
    p = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    quantiles = math.sqrt(2.0) * torch.erfinv(2 * p - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return quantiles[order].float()


def unit_rms_sequences(n_rows: int, length: int, seed: int) -> torch.Tensor:
    """Gaussian rows scaled to RMS 1 each, as the codec normalises its groups."""
    x = torch.randn(n_rows, length, generator=torch.Generator().manual_seed(seed))
    return x / x.pow(2).mean(1, keepdim=True).sqrt()


def lloyd_step(values: torch.Tensor, x: torch.Tensor, k: int) -> tuple[torch.Tensor, float]:
    """One Lloyd step on the trellis: (new values, mean squared error of the encoding it starts from)."""
    state_bits = values.numel().bit_length() - 1
    states = decode_states(search(x, values, k), k, state_bits).reshape(-1)
    mse = float(((x.reshape(-1) - values[states]) ** 2).mean())
    sums = torch.zeros_like(values, dtype=torch.float64).index_add_(0, states, x.reshape(-1).double())
    counts = torch.bincount(states, minlength=values.numel()).double()
    return torch.where(counts > 0, sums / counts.clamp(min=1), values.double()).float(), mse


def train(k: int, state_bits: int, *, n_rows: int | None = None, iters: int = 16, seed: int = 0) -> torch.Tensor:
    """A table for k-bit codes on a 2^L-state register (see the module docstring)."""
    n_rows = n_rows or TRAIN_ROWS << max(0, state_bits - 12)
    values = gaussian_quantile_code(state_bits, seed)
    x = unit_rms_sequences(n_rows, TRAIN_SEQUENCE_LENGTH, seed + 1)
    for _ in range(iters):
        values, _ = lloyd_step(values, x, k)
    return values


def main(only_missing: bool = False) -> None:  # pragma: no cover - offline build step
    """Rebuild every shipped table (deterministic), or with `only_missing` train just the pairs the
    packaged file lacks, keeping the others byte for byte (artifacts do not store their table)."""
    from big2small.progress import progress_bar

    tables = dict(_packaged()) if only_missing else {}
    pairs = [(k, L) for k, L in shipped_pairs() if table_name(k, L) not in tables]
    with progress_bar("training trellis code tables", len(pairs)) as advance:
        for k, L in pairs:
            tables[table_name(k, L)] = train(k, L)
            advance(1)
    save_file(tables, str(PACKAGED_TRELLIS_CODES))
    print(f"wrote {len(tables)} tables to {PACKAGED_TRELLIS_CODES}")


if __name__ == "__main__":  # pragma: no cover
    import sys

    main(only_missing="--only-missing" in sys.argv)
