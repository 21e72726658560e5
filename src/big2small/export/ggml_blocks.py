"""Our uniform codes as ggml quantisation blocks, bit for bit, without re-quantising.

ggml's legacy block types quantise 32 consecutive weights of a row (ne0, the input dimension of a
Linear weight) with one fp16 scale d, and dequantise as

    Q4_0: w = d (q - 8),   q in 0..15     block: d, 16 bytes of nibbles                  (18 bytes)
    Q5_0: w = d (q - 16),  q in 0..31     block: d, 32 high bits (uint32), 16 bytes     (22 bytes)
    Q8_0: w = d q,         q in -128..127 block: d, 32 int8                             (34 bytes)
    Q4_1: w = d q + m,     q in 0..15     block: d, fp16 m, 16 bytes of nibbles          (20 bytes)
    Q5_1: w = d q + m,     q in 0..31     block: d, fp16 m, 32 high bits, 16 bytes      (24 bytes)

(nibble byte j holds weight j in its low half and weight j + 16 in its high half). Our symmetric
uniform codec at group size 32 decodes w = s (c - 2^(b-1)) with an fp16 s, so symmetric 4, 5 and
8 bits are Q4_0, Q5_0 and Q8_0 exactly (d = s, q = c, or c - 128 for Q8_0). The asymmetric codec
decodes w = s (c - z) with an integer zero-point z: that is Q4_1/Q5_1 with d = s and m = -z s only
where -z s is an fp16 number, which `offset_exact` checks per group (a product of an 11-bit
mantissa and a 4-5 bit integer can need 15 bits; measured on SmolLM2 in docs/export.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from big2small import bitpack
from big2small.generators.base import Encoded
from big2small.generators.uniform import UniformConfig

BLOCK = 32  # weights per ggml block


@dataclass(frozen=True)
class BlockType:
    """A ggml block type that our uniform codec can fill exactly."""

    name: str  # ggml's name: Q4_0, Q5_1, ...
    bits: int
    symmetric: bool
    block_bytes: int  # bytes per block of 32 weights


EXACT_TYPES = {(4, True): BlockType("Q4_0", 4, True, 18), (5, True): BlockType("Q5_0", 5, True, 22),
               (8, True): BlockType("Q8_0", 8, True, 34), (4, False): BlockType("Q4_1", 4, False, 20),
               (5, False): BlockType("Q5_1", 5, False, 24)}


def block_type_of(enc: Encoded) -> BlockType | None:
    """The ggml type that holds `enc` exactly by its configuration (uniform, group 32, rows of whole
    blocks, an exact-type width), or None. Asymmetric types also need `offset_exact`."""
    cfg = enc.config
    if (enc.method != "uniform" or not isinstance(cfg, UniformConfig) or rotated(cfg) or cfg.group_size != BLOCK
            or enc.layout.transposed or len(enc.layout.shape) != 2 or enc.layout.cols % BLOCK):
        return None
    return EXACT_TYPES.get((cfg.bits, cfg.symmetric))


def rotated(cfg: UniformConfig) -> bool:
    """Whether the codec rotated the matrix before coding (an option on newer branches): its codes
    then lie on a grid of the rotated weights, which no engine format undoes."""
    return getattr(cfg, "rotate", "none") != "none"


def codes_and_params(enc: Encoded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The codes [rows, cols] (int64, 0..2^bits - 1), fp16 scales [n_blocks] and integer
    zero-points [n_blocks] (None when symmetric) of a uniform tensor with group size 32."""
    cfg: UniformConfig = enc.config
    rows, cols = enc.layout.rows, enc.layout.cols
    codes = bitpack.unpack(enc.tensors["codes"], cfg.bits, rows * cols).reshape(rows, cols)
    n_blocks = rows * cols // BLOCK
    zeros = None if cfg.symmetric else bitpack.unpack(enc.tensors["zeros"], cfg.bits, n_blocks)
    return codes, enc.tensors["scales"], zeros


def block_offsets(scales: torch.Tensor, zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """m = -z s as fp16 per block, and whether each is exact (m == -z s in fp32, where the product
    of an fp16 scale and an integer below 2^8 is exact)."""
    exact_m = -zeros.float() * scales.float()
    m16 = exact_m.to(torch.float16)
    return m16, m16.float() == exact_m


def offset_exact(enc: Encoded) -> torch.Tensor:
    """Per block of an asymmetric group-32 tensor: whether Q4_1/Q5_1's fp16 m holds -z s exactly."""
    _, scales, zeros = codes_and_params(enc)
    return block_offsets(scales, zeros)[1]


def to_blocks(enc: Encoded, btype: BlockType) -> np.ndarray:
    """The ggml blocks of `enc` as bytes: uint8 [rows, cols / 32 * block_bytes] (the byte shape
    gguf.GGUFWriter.add_tensor takes with raw_dtype). The caller has checked block_type_of and, for
    asymmetric types, that every offset is exact."""
    codes, scales, zeros = codes_and_params(enc)
    rows, cols = codes.shape
    q = codes.reshape(-1, BLOCK)  # [n_blocks, 32]
    parts = [_bytes(scales.reshape(-1, 1))]
    if not btype.symmetric:
        parts.append(_bytes(block_offsets(scales, zeros)[0].reshape(-1, 1)))
    if btype.bits == 8:
        parts.append(_bytes((q - 128).to(torch.int8)))
    else:
        if btype.bits == 5:
            high = ((q >> 4) & 1).reshape(-1, 4, 8) << torch.arange(8)  # bit j of a little-endian uint32
            parts.append(high.sum(2).to(torch.uint8))
        low = q & 0xF
        parts.append(_bytes((low[:, :16] | (low[:, 16:] << 4)).to(torch.uint8)))
    blocks = torch.cat(parts, dim=1)
    return blocks.reshape(rows, cols // BLOCK * btype.block_bytes).numpy()


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """Little-endian bytes of each row of `t`: [n, k] of dtype D -> uint8 [n, k * D.itemsize]."""
    t = t.contiguous()
    return t.view(torch.uint8).reshape(t.shape[0], -1)
