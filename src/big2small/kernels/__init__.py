"""Compiled CPU kernels (numba) that multiply with a codec's stored arrays directly: y = x W^T
without materialising W (batch-1 generation reads the compact codes only), and a fast decode of W
for large batches. One module per codec; each has the same functions:

- supports(enc): whether its kernels handle this record (else big2small.compact is not used for it);
- FUSED_MAX_ROWS: inputs with more rows than this are better served by decoding W once and a dense
  product (1 for all three: on a [1536, 576] SmolLM2 layer, one thread, the product took 0.8, 1.4
  and 0.9 ms at 1 row for uniform 4-bit g32, trellis 4-bit and hyper 8-bit, and 2.3, 12 and 11 ms
  at 2 rows, against 1.1-1.6, 6 and 1.6 ms for decode plus product; a shared, loaded machine,
  so only roughly);
- resident_extra(enc): derived tensors they read besides the codec's resident tensors (a table);
- matmul(tensors, enc, x, prepared=None): x [B, cols] fp32 -> x W^T [B, rows], W the codec's
  `decode_matrix`;
- decode_matrix(tensors, enc, prepared=None): W [rows, cols] fp32;

and `arrays(tensors, enc)`, their arguments prepared once (`prepared`: a layer calling them many
times skips about 25 microseconds of Python per call).

W is the matrix the codes describe: in the rotated domain when the codec rotates (the caller
rotates x, big2small.compact). Each kernel is tested against its codec's own decode.
"""

from __future__ import annotations

from types import ModuleType

from big2small.generators.base import Encoded
from big2small.kernels import hyper, trellis, uniform

KERNELS: dict[str, ModuleType] = {"uniform": uniform, "trellis": trellis, "hyper": hyper}


def kernel_for(enc: Encoded) -> ModuleType | None:
    """The kernel module for `enc`'s codec, or None where there is none or it does not support `enc`."""
    module = KERNELS.get(enc.method)
    return module if module is not None and module.supports(enc) else None
