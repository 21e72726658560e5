"""Compiled CPU kernels (numba) that multiply with a codec's codes directly: y = x W^T without
materialising W (batch-1 generation reads the compact codes only), and a fast decode of W for
larger batches. The codes are kept in lanes of rows (big2small.kernels.lanes; trellis keeps each
row as a bit stream its kernels read states from directly), built once from the stored arrays. One
module per codec; each has the same functions:

- supports(enc): whether its kernels handle this record (else big2small.compact is not used for it);
- FUSED_MAX_ROWS: inputs with more rows than this are better served by decoding W once and a dense
  product;
- resident(enc): the arrays the kernels read (codes in lanes, fp32 scales, tables), built from the
  record's stored arrays; nothing else needs to stay in memory;
- matmul(resident, enc, x, prepared=None): x [B, cols] fp32 -> x W^T [B, rows], W the codec's
  `decode_matrix`;
- decode_matrix(resident, enc, prepared=None): W [rows, cols] fp32, bit for bit the codec's
  `decode_matrix` (uniform, hyper: a transposed view of W^T, which a dense product reads in
  order; trellis: W itself, row-major as nn.Linear keeps it);

and `arrays(resident, enc, threads=None)`, their arguments prepared once (a
`big2small.kernels.lanes.Prepared`, passed back as `prepared`: a layer calling them once per token
skips tens of microseconds of Python per call), with the compiled builds to run: serial at one
numba thread, parallel otherwise (`lanes.build`).

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
