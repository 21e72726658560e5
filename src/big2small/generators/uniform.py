"""Uniform round-to-nearest quantisation with groups (RTN), symmetric or asymmetric.

A group is `group_size` consecutive weights along a row of the matrix view (the last group of a row
is shorter); `group_size=0` means one group per row (per-channel). When a row is shorter than a
group, a group spans floor(group_size / cols) whole rows. Codes are bit-packed; scales are fp16;
asymmetric zero-points are integers stored at the code width, so the offset is exact in code units.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from big2small import bitpack
from big2small.errors import Big2SmallError
from big2small.generators import rotation
from big2small.generators.base import HEADER_BITS, ArrayForm, Encoded, byte_arrays, register
from big2small.generators.grouping import Grouping, grouped, grouping, ungrouped
from big2small.generators.straight_through import round_st
from big2small.layout import MatrixLayout

# Candidate group sizes when sizing to a bits-per-weight target, finest first; 0 = per-channel.
BUDGET_GROUP_SIZES = (32, 64, 128, 256, 0)


@dataclass
class UniformConfig(rotation.RotatableConfig):
    """bits: code width (1-8; symmetric needs >= 2). group_size: weights per group, 0 = per row.
    rotate: none | input | both (generators.rotation)."""

    method = "uniform"
    allocatable = True
    bits_option = "bits"
    bits: int = 4
    group_size: int = 128
    symmetric: bool = False

    def validate(self) -> None:
        super().validate()
        low = 2 if self.symmetric else 1
        if not low <= self.bits <= 8:
            raise Big2SmallError(f"uniform: bits must be in {low}..8, got {self.bits}")
        if self.group_size < 0:
            raise Big2SmallError(f"uniform: group_size must be >= 0 (0 = per channel), got {self.group_size}")


@register
class UniformGenerator(rotation.RotatingGenerator):
    config_type = UniformConfig

    def encode_matrix(self, matrix: torch.Tensor, layout: MatrixLayout, *, seed: int) -> Encoded:
        cfg: UniformConfig = self.config
        gp = grouping(layout, cfg.group_size)
        groups = grouped(matrix, gp)
        levels = (1 << cfg.bits) - 1
        if cfg.symmetric:
            half = 1 << (cfg.bits - 1)
            scale = groups.abs().amax(1) / (half - 1)
        else:
            lo = groups.amin(1).clamp(max=0)
            hi = groups.amax(1).clamp(min=0)
            scale = (hi - lo) / levels
        scale16 = scale.to(torch.float16)
        if not torch.isfinite(scale16).all():
            raise Big2SmallError("uniform: weights too large for fp16 group scales")
        scale16 = torch.where(scale16 == 0, torch.ones_like(scale16), scale16)
        s = scale16.float().unsqueeze(1)  # encode with the scale the decoder will see
        zero = None if cfg.symmetric else torch.clamp(torch.round(-lo / s.squeeze(1)), 0, levels)
        q = _codes(groups, s, zero, cfg)
        codes = ungrouped(q, gp, layout).reshape(-1).to(torch.uint8)  # codes < 2^8: a byte each until packed
        tensors = {"codes": bitpack.pack(codes, cfg.bits), "scales": scale16}
        bits = {"codes": codes.numel() * cfg.bits, "scales": 16 * gp.n_groups, "header": HEADER_BITS}
        if zero is not None:
            tensors["zeros"] = bitpack.pack(zero.to(torch.int64), cfg.bits)
            bits["zeros"] = gp.n_groups * cfg.bits
        return Encoded(self.config.method, cfg, layout, matrix.dtype, tensors, bits)

    def decode_matrix(self, enc: Encoded) -> torch.Tensor:
        cfg: UniformConfig = enc.config
        layout = enc.layout
        gp = grouping(layout, cfg.group_size)
        codes = bitpack.unpack(enc.tensors["codes"], cfg.bits, layout.numel).reshape(layout.rows, layout.cols)
        q = grouped(codes.float(), gp)
        return ungrouped((q - _offset(enc, gp)) * enc.tensors["scales"].float().unsqueeze(1), gp, layout)

    trainable = "scales"

    def fake_quantize(self, matrix: torch.Tensor, enc: Encoded, scales: torch.Tensor) -> torch.Tensor:
        gp = grouping(enc.layout, enc.config.group_size)
        zero = None if enc.config.symmetric else _offset(enc, gp).squeeze(1)
        s = scales.unsqueeze(1)
        q = _codes(grouped(matrix, gp), s, zero, enc.config, straight_through=True)
        return ungrouped((q - _offset(enc, gp)) * s, gp, enc.layout)

    def requantize(self, matrix: torch.Tensor, enc: Encoded, scales: torch.Tensor) -> Encoded:
        cfg: UniformConfig = enc.config
        gp = grouping(enc.layout, cfg.group_size)
        scales = scales.to(torch.float16)
        zero = None if cfg.symmetric else _offset(enc, gp).squeeze(1)
        q = _codes(grouped(matrix, gp), scales.float().unsqueeze(1), zero, cfg)
        codes = ungrouped(q, gp, enc.layout).reshape(-1).to(torch.uint8)
        return replace(enc, tensors={**enc.tensors, "codes": bitpack.pack(codes, cfg.bits), "scales": scales},
                       bits=dict(enc.bits), meta=dict(enc.meta))

    @classmethod
    def stored_form(cls, enc: Encoded) -> dict[str, ArrayForm]:
        cfg: UniformConfig = enc.config
        n_groups = grouping(enc.layout, cfg.group_size).n_groups
        form = {**byte_arrays({"codes": bitpack.packed_nbytes(enc.numel, cfg.bits)}), "scales": (torch.float16, (n_groups,))}
        if not cfg.symmetric:
            form.update(byte_arrays({"zeros": bitpack.packed_nbytes(n_groups, cfg.bits)}))
        return {**form, **rotation.stored_form(cfg)}

    @classmethod
    def bits_for(cls, config: UniformConfig, layout: MatrixLayout) -> int:
        n_groups = grouping(layout, config.group_size).n_groups
        zero_bits = 0 if config.symmetric else config.bits
        return layout.numel * config.bits + n_groups * (16 + zero_bits) + HEADER_BITS + rotation.stored_bits(config)

    @classmethod
    def for_budget(cls, bits_per_weight: float, layout: MatrixLayout, fixed: dict[str, Any]) -> UniformConfig:
        # More code bits beat finer groups at equal size, so take the widest code that fits, then
        # the finest group size that still fits.
        symmetric = fixed.get("symmetric", False)
        bit_choices = [fixed["bits"]] if "bits" in fixed else range(8, 1 if symmetric else 0, -1)
        group_choices = [fixed["group_size"]] if "group_size" in fixed else BUDGET_GROUP_SIZES
        budget = bits_per_weight * layout.numel
        for b in bit_choices:
            for g in group_choices:
                cfg = UniformConfig(bits=b, group_size=g, symmetric=symmetric, rotate=fixed.get("rotate", "none"))
                if cls.bits_for(cfg, layout) <= budget:
                    return cfg
        raise Big2SmallError(
            f"uniform: no setting fits {bits_per_weight:.3f} bits per weight on a {list(layout.shape)} tensor"
        )


def _codes(groups: torch.Tensor, s: torch.Tensor, zero: torch.Tensor | None, cfg: UniformConfig, *,
           straight_through: bool = False) -> torch.Tensor:
    """The codes (as floats, [n_groups, group_len]) of grouped weights with scales s [n_groups, 1]
    and zero-points [n_groups] (None: symmetric); with `straight_through`, differentiable in s."""
    x = groups / s
    if not straight_through:  # the same operations in place on x: no temporaries the size of the matrix
        x.round_()
        if cfg.symmetric:
            half = 1 << (cfg.bits - 1)
            return x.clamp_(-half, half - 1).add_(half)
        return x.add_(zero.unsqueeze(1)).clamp_(0, (1 << cfg.bits) - 1)
    r = round_st(x)
    if cfg.symmetric:
        half = 1 << (cfg.bits - 1)
        return torch.clamp(r, -half, half - 1) + half
    return torch.clamp(r + zero.unsqueeze(1), 0, (1 << cfg.bits) - 1)


def _offset(enc: Encoded, gp: Grouping) -> torch.Tensor | float:
    """What decoding subtracts from the codes: the stored zero-points [n_groups, 1], or half the
    range when symmetric."""
    cfg: UniformConfig = enc.config
    if cfg.symmetric:
        return float(1 << (cfg.bits - 1))
    return bitpack.unpack(enc.tensors["zeros"], cfg.bits, gp.n_groups).float().unsqueeze(1)
