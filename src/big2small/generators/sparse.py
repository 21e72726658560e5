"""Unstructured magnitude pruning with sparse storage.

The round((1 - sparsity) * N) largest |w| of the tensor are kept (ties go to the earlier position in
row-major order of the matrix view); their values are stored in fp16 in row-major order, and their
positions in the cheapest of three codings, named by a 2-bit flag (ties go to the earlier one):

- 0, bitmap: N bits;
- 1, per-row CSR: nnz column indices at ceil(log2 J) bits, then O + 1 row pointers at
  ceil(log2(nnz + 1)) bits;
- 2, flat index list: nnz indices at ceil(log2 N) bits.

Every integer stream is bit-packed; a stream of width 0 (an index into a set of one) stores nothing.
Widths above bitpack's limit are stored as two streams (low and high bits), same total bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from big2small import bitpack
from big2small.errors import Big2SmallError
from big2small.generators.base import (
    HEADER_BITS, ArrayForm, Encoded, Generator, GeneratorConfig, byte_arrays, meta_int, register, stored_array,
)
from big2small.layout import MatrixLayout

BITMAP, CSR, FLAT = 0, 1, 2
CODINGS = ("bitmap", "csr", "flat")
FLAG_BITS = 2


@dataclass
class PruneConfig(GeneratorConfig):
    """sparsity: share of the weights set to zero, 0 <= s < 1; round((1 - s) * N) are kept."""

    method = "prune"
    sparsity: float = 0.5

    def validate(self) -> None:
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s < 1:
            raise Big2SmallError(f"prune: sparsity must be in [0, 1), got {s!r}")


def _kept(sparsity: float, numel: int) -> int:
    return min(numel, max(0, int(round((1.0 - sparsity) * numel))))


def _position_costs(nnz: int, layout: MatrixLayout) -> tuple[int, int, int]:
    rows, cols, n = layout.rows, layout.cols, layout.numel
    return (
        n,
        nnz * bitpack.index_bits(cols) + (rows + 1) * bitpack.index_bits(nnz + 1),
        nnz * bitpack.index_bits(n),
    )


def _bits(nnz: int, layout: MatrixLayout) -> int:
    return 16 * nnz + min(_position_costs(nnz, layout)) + FLAG_BITS + HEADER_BITS


@register
class PruneGenerator(Generator):
    config_type = PruneConfig

    def encode_matrix(self, matrix: torch.Tensor, layout: MatrixLayout, *, seed: int) -> Encoded:
        cfg: PruneConfig = self.config
        rows, cols, n = layout.rows, layout.cols, layout.numel
        flat = matrix.reshape(-1)
        nnz = _kept(cfg.sparsity, n)
        # A stable descending sort keeps the earlier position among equal magnitudes.
        order = torch.sort(flat.abs(), descending=True, stable=True).indices
        idx = torch.sort(order[:nnz]).values  # row-major order
        values = flat[idx].to(torch.float16)
        if not torch.isfinite(values).all():
            raise Big2SmallError("prune: weights too large for fp16 storage")

        costs = _position_costs(nnz, layout)
        coding = costs.index(min(costs))
        tensors: dict[str, torch.Tensor] = {"values": values.contiguous()}
        if coding == BITMAP:
            mask = torch.zeros(n, dtype=torch.int64, device=idx.device)
            mask[idx] = 1
            bitpack.pack_stream(tensors, "bitmap", mask, 1)
        elif coding == CSR:
            counts = torch.bincount(idx // cols, minlength=rows)
            ptr = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
            bitpack.pack_stream(tensors, "col_idx", idx % cols, bitpack.index_bits(cols))
            bitpack.pack_stream(tensors, "row_ptr", ptr, bitpack.index_bits(nnz + 1))
        else:
            bitpack.pack_stream(tensors, "idx", idx, bitpack.index_bits(n))
        tensors["flag"] = bitpack.pack(torch.tensor([coding], dtype=torch.int64, device=idx.device), FLAG_BITS)
        bits = {"values": 16 * nnz, "positions": costs[coding], "flag": FLAG_BITS, "header": HEADER_BITS}
        meta = {"nnz": nnz, "coding": CODINGS[coding]}
        return Encoded(self.config.method, cfg, layout, matrix.dtype, tensors, bits, meta)

    def decode_matrix(self, enc: Encoded) -> torch.Tensor:
        layout = enc.layout
        rows, cols, n = layout.rows, layout.cols, layout.numel
        values = enc.tensors["values"]
        nnz, dev = values.numel(), values.device
        coding = int(bitpack.unpack(enc.tensors["flag"], FLAG_BITS, 1)[0])
        if coding == BITMAP:
            idx = torch.nonzero(bitpack.unpack_stream(enc.tensors, "bitmap", 1, n, dev)).reshape(-1)
        elif coding == CSR:
            col = bitpack.unpack_stream(enc.tensors, "col_idx", bitpack.index_bits(cols), nnz, dev)
            ptr = bitpack.unpack_stream(enc.tensors, "row_ptr", bitpack.index_bits(nnz + 1), rows + 1, dev)
            counts = ptr.diff()
            if int(ptr[0]) != 0 or int(ptr[-1]) != nnz or bool((counts < 0).any()) or bool((col >= cols).any()):
                raise Big2SmallError("prune: stored row pointers or column indices are out of range")
            row = torch.repeat_interleave(torch.arange(rows, device=ptr.device), counts)
            idx = row * cols + col
        elif coding == FLAT:
            idx = bitpack.unpack_stream(enc.tensors, "idx", bitpack.index_bits(n), nnz, dev)
        else:
            raise Big2SmallError(f"prune: unknown position coding flag {coding}")
        if idx.numel() != nnz:
            raise Big2SmallError(f"prune: {idx.numel()} stored positions for {nnz} values")
        if nnz and int(idx.max()) >= n:
            raise Big2SmallError(f"prune: a stored position is beyond the tensor's {n} weights")
        out = torch.zeros(n, dtype=torch.float32, device=dev)
        out[idx.to(dev)] = values.float()
        return out.reshape(rows, cols)

    @classmethod
    def bits_for(cls, config: PruneConfig, layout: MatrixLayout) -> int:
        return _bits(_kept(config.sparsity, layout.numel), layout)

    @classmethod
    def stored_form(cls, enc: Encoded) -> dict[str, ArrayForm]:
        layout = enc.layout
        rows, cols, n = layout.rows, layout.cols, layout.numel
        nnz = meta_int(enc, "nnz", 0, n)
        if nnz != _kept(enc.config.sparsity, n):
            raise Big2SmallError(f"prune: meta nnz {nnz}, its sparsity keeps {_kept(enc.config.sparsity, n)}")
        costs = _position_costs(nnz, layout)
        coding = costs.index(min(costs))
        flag = bitpack.unpack(stored_array(enc, "flag", torch.uint8, (1,)), FLAG_BITS, 1)
        if enc.meta.get("coding") != CODINGS[coding] or int(flag[0]) != coding:
            raise Big2SmallError(f"prune: position coding {enc.meta.get('coding')!r} (flag {int(flag[0])}); "
                                 f"{nnz} kept weights are stored as {CODINGS[coding]}")
        if coding == BITMAP:
            streams = bitpack.stream_bytes("bitmap", n, 1)
        elif coding == CSR:
            streams = {**bitpack.stream_bytes("col_idx", nnz, bitpack.index_bits(cols)),
                       **bitpack.stream_bytes("row_ptr", rows + 1, bitpack.index_bits(nnz + 1))}
        else:
            streams = bitpack.stream_bytes("idx", nnz, bitpack.index_bits(n))
        return {"values": (torch.float16, (nnz,)), **byte_arrays({**streams, "flag": 1})}

    @classmethod
    def for_budget(cls, bits_per_weight: float, layout: MatrixLayout, fixed: dict[str, Any]) -> PruneConfig:
        n = layout.numel
        budget = bits_per_weight * n
        if fixed.get("sparsity") is not None:
            return cls.require_fit(PruneConfig(sparsity=fixed["sparsity"]), layout, bits_per_weight,
                                   f"sparsity {fixed['sparsity']}")
        # Bits grow with nnz, so bisect for the largest nnz that fits. Keeping nothing would erase
        # the tensor, so at least one weight must fit.
        if n == 0 or _bits(1, layout) > budget:
            raise Big2SmallError(
                f"prune: not even one kept weight fits {bits_per_weight:.3f} bits per weight on a "
                f"{list(layout.shape)} tensor"
            )
        lo, hi = 1, n  # _bits(lo) fits
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if _bits(mid, layout) <= budget:
                lo = mid
            else:
                hi = mid - 1
        cfg = PruneConfig(sparsity=1.0 - lo / n)
        if _kept(cfg.sparsity, n) != lo:  # pragma: no cover - float guard
            raise Big2SmallError(f"prune: cannot express {lo} kept weights of {n} as a sparsity")
        return cfg
