"""Apply a one-matrix quantiser to the named weights of a state dict (shared by the external baselines).

A quantiser takes one fp32 weight matrix [rows, cols] and returns (its dequantised fp32
reconstruction, same shape; the exact stored size in bits). Tensors of more than two dimensions
(convolutions) are quantised in big2small's matrix view, [out, in * kh * kw] (`MatrixLayout`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from big2small.layout import MatrixLayout

MatrixQuantiser = Callable[[torch.Tensor], tuple[torch.Tensor, int]]


def compress_matrices(weights: dict[str, torch.Tensor], names: list[str],
                      quantise: MatrixQuantiser) -> tuple[dict[str, torch.Tensor], int, float]:
    """Quantise-dequantise the named weights of a state dict with `quantise`.

    Returns (a new dict with those names replaced by their dequantised weights, in each original
    dtype and shape, other entries shared; the stored bits of the named tensors; wall-clock seconds
    spent quantising).
    """
    out = dict(weights)
    total_bits = 0
    start = time.perf_counter()
    for name in names:
        w = weights[name]
        layout = MatrixLayout(tuple(w.shape))
        restored, n_bits = quantise(layout.to_matrix(w.detach().float()))
        out[name] = layout.from_matrix(restored).to(w.dtype)
        total_bits += n_bits
    return out, total_bits, time.perf_counter() - start
