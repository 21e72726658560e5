"""HQQ (half-quadratic quantisation, PyPI `hqq==0.2.8`) as an external, data-free baseline.

Benchmark-only: install with `pip install -e ".[bench]"` (`make bench` does). Each 2-D weight is
quantised by hqq's own `Quantizer.quantize(..., optimize=True, axis=1)` on the CPU in float32, then
dequantised by `Quantizer.dequantize`. A group is `group_size` consecutive weights along a row.

Supported code widths (bits): 8, 6, 5, 4, 3, 2, 1 -- hqq's `Quantizer.SUPPORTED_BITS` minus its
ternary 1.58. hqq 0.2.8 bit-packs 8, 4, 3, 2 and 1; it keeps 6- and 5-bit codes in uint8, but they
are counted here at their nominal width, as our own codecs would pack them.

Stored bits follow TARGETS.md: bits * numel for the codes, plus an fp16 scale and an fp16 zero
(32 bits) per group, plus a 128-bit header per tensor. The scales and zeros are rounded to fp16
before dequantising, so the returned weights match what those bits can store.
"""

from __future__ import annotations

import torch
from hqq.core.quantize import Quantizer

from big2small.generators.base import HEADER_BITS
from matrices import compress_matrices

SUPPORTED_BITS = (8, 6, 5, 4, 3, 2, 1)
GROUP_META_BITS = 32  # fp16 scale + fp16 zero per group


def hqq_quantize_matrix(weight: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, int]:
    """Quantise then dequantise one 2-D weight with HQQ.

    weight: (rows, cols), any float dtype; group_size weights per group along a row (the last group
    of a row may be shorter).
    Returns (the dequantised weight, fp32, same shape; the exact stored size in bits).
    """
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"hqq: bits must be one of {SUPPORTED_BITS}, got {bits}")
    if weight.dim() != 2:
        raise ValueError(f"hqq: expected a 2-D weight, got shape {tuple(weight.shape)}")
    if group_size <= 0:
        raise ValueError(f"hqq: group_size must be > 0, got {group_size}")

    w = weight.detach().to(device="cpu", dtype=torch.float32)
    # A row that is not a whole number of groups ends in a shorter group, as in our own codecs:
    # pad it with zeros for hqq, drop the padding after, and pay for its codes (none are stored).
    cols = w.shape[1]
    pad = (-cols) % group_size
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    codes, meta = Quantizer.quantize(w, nbits=bits, channel_wise=True, group_size=group_size, optimize=True,
                                     round_zero=False, axis=1, bitpack=True, compute_dtype=torch.float32,
                                     view_as_float=False, device="cpu")
    meta["compute_dtype"] = torch.float32  # dequantize() unpacks to float16 without this
    meta["scale"] = meta["scale"].half().float()  # stored as fp16 (counted below)
    meta["zero"] = meta["zero"].half().float()
    restored = Quantizer.dequantize(codes, meta).float()

    n_groups = w.numel() // group_size
    return restored[:, :cols], bits * weight.numel() + GROUP_META_BITS * n_groups + HEADER_BITS


def hqq_compress_state(weights: dict[str, torch.Tensor], names: list[str], bits: int,
                       group_size: int) -> tuple[dict[str, torch.Tensor], int, float]:
    """Quantise-dequantise the named 2-D weights of a state dict with HQQ.

    Returns (a new dict with those names replaced by their dequantised weights, in each original
    dtype, other entries shared; the stored bits of the named tensors; wall-clock seconds spent).
    """
    return compress_matrices(weights, names, lambda w: hqq_quantize_matrix(w, bits, group_size))
