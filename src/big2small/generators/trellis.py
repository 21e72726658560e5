"""Trellis-coded quantisation: exactly k bits per weight, searched optimally (Viterbi).

Hyper-compression stores a group of weights as the index of a point on a dynamical system's
trajectory; here the system is a shift register of L bits (2^L states) that takes k new bits per
weight, and each state maps to a value from a table shaped to a Gaussian (trellis_codes). The
encoder finds, for each group of weights, the code sequence whose decoded values are nearest in
squared error (viterbi.search: optimal, not greedy). Rotated first (rotation, "input" by default),
weights are near-Gaussian whatever the layer, which is what the tables are trained for.

A group is one row of the matrix view (rows under MIN_SEQUENCE weights are joined, so a depthwise
[C, 9] kernel is not charged a scale per 9 weights), or `group_size` weights. Each group is divided
by its RMS before the search; its stored fp16 scale is then the least-squares scale for the chosen
codes. The register starts at zero in every group, so codes are exactly k bits per weight: nothing
else is stored but one fp16 scale per group (and the rotation's seed).

Decoding: state_t = ((state_{t-1} << k) | code_t) mod 2^L, weight_t = scale * table[state_t].
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from big2small import bitpack
from big2small.errors import Big2SmallError
from big2small.generators import rotation
from big2small.generators.base import HEADER_BITS, ArrayForm, Encoded, byte_arrays, register
from big2small.generators.grouping import grouped, grouping, per_element, ungrouped
from big2small.generators.trellis_codes import is_shipped, shipped_summary, state_values
from big2small.generators.viterbi import decode_states, search
from big2small.layout import MatrixLayout

# Groups shorter than this (rows of a small kernel) are joined, by whole rows, up to this length.
MIN_SEQUENCE = 256
DEFAULT_STATE_BITS = 12


@dataclass
class TrellisConfig(rotation.RotatableConfig):
    """bits: bits per weight, exactly (the code width k, 1-8). state_bits: the register length L
    (2^L states; 8, 10 or 12, 14 for 2-4 bits and 16 for 4 bits): quality grows and encoding time doubles with
    each bit. group_size:
    weights per fp16 scale along a row, 0 = one per row. rotate: none | input | both."""

    method = "trellis"
    allocatable = True
    bits_option = "bits"  # --bits is its code width: bits per weight, exactly
    bits: int = 2
    state_bits: int = DEFAULT_STATE_BITS
    group_size: int = 0
    rotate: str = "input"

    def validate(self) -> None:
        super().validate()
        if isinstance(self.bits, bool) or not 1 <= self.bits <= 8:
            raise Big2SmallError(f"trellis: bits must be in 1..8, got {self.bits}")
        if isinstance(self.state_bits, bool) or not is_shipped(self.bits, self.state_bits):
            raise Big2SmallError(f"trellis: no code table for bits={self.bits} with state_bits={self.state_bits}; "
                                 f"shipped: {shipped_summary()}")
        if self.group_size < 0:
            raise Big2SmallError(f"trellis: group_size must be >= 0 (0 = per row), got {self.group_size}")


def trellis_grouping(cfg: TrellisConfig, layout: MatrixLayout):
    """The groups of `layout` (one fp16 scale and a fresh register each): rows, joined when short."""
    size = cfg.group_size if cfg.group_size or layout.cols >= MIN_SEQUENCE else MIN_SEQUENCE
    return grouping(layout, size)


@register
class TrellisGenerator(rotation.RotatingGenerator):
    config_type = TrellisConfig

    def encode_matrix(self, matrix: torch.Tensor, layout: MatrixLayout, *, seed: int) -> Encoded:
        cfg: TrellisConfig = self.config
        gp = trellis_grouping(cfg, layout)
        groups = grouped(matrix, gp)
        real = grouped(torch.ones_like(matrix), gp)  # 1 on weights, 0 on the padding of short groups
        rms = (groups.pow(2).sum(1) / real.sum(1)).sqrt()
        if bool((rms > 65504).any()):
            raise Big2SmallError("trellis: weights too large for fp16 group scales")
        values = state_values(cfg.bits, cfg.state_bits).to(matrix.device)
        unit = groups / torch.where(rms > 0, rms, torch.ones_like(rms)).unsqueeze(1)
        codes = search(unit, values, cfg.bits).to(matrix.device)
        decoded = values[decode_states(codes, cfg.bits, cfg.state_bits)] * real
        # The least-squares scale for the chosen codes (never worse than the RMS it searched with).
        fit = (groups * decoded).sum(1) / decoded.pow(2).sum(1).clamp(min=1e-30)
        scale = torch.where((fit > 0) & (rms > 0), fit, rms).to(torch.float16)
        flat_codes = ungrouped(codes.to(torch.int64), gp, layout).reshape(-1)
        tensors = {"codes": bitpack.pack(flat_codes, cfg.bits), "scales": scale}
        bits = {"codes": layout.numel * cfg.bits, "scales": 16 * gp.n_groups, "header": HEADER_BITS}
        return Encoded(cfg.method, cfg, layout, matrix.dtype, tensors, bits)

    def decode_matrix(self, enc: Encoded) -> torch.Tensor:
        return self.fake_quantize(None, enc, enc.tensors["scales"].float())

    # Its codes are a Viterbi search, not a rounding: quantisation-aware distillation trains the
    # scales with the codes kept (no gradient passes through the search).
    trainable = "scales"

    def fake_quantize(self, matrix: torch.Tensor, enc: Encoded, scales: torch.Tensor) -> torch.Tensor:
        gp = trellis_grouping(enc.config, enc.layout)
        return ungrouped(self._table_values(enc, scales.device) * scales.unsqueeze(1), gp, enc.layout)

    def _table_values(self, enc: Encoded, device: torch.device) -> torch.Tensor:
        """The code table's values at the decoded states, before the scale: [n_groups, group_len] fp32."""
        cfg: TrellisConfig = enc.config
        gp = trellis_grouping(cfg, enc.layout)
        codes = bitpack.unpack(enc.tensors["codes"], cfg.bits, enc.numel).reshape(enc.layout.rows, enc.layout.cols)
        states = decode_states(grouped(codes, gp), cfg.bits, cfg.state_bits)
        return state_values(cfg.bits, cfg.state_bits).to(device)[states]

    @staticmethod
    def _rows_scaled(enc: Encoded) -> bool:
        """Whether each scale multiplies whole rows and no rotation mixes rows: the rotation along
        the rows then commutes with the scales (unrotate(s * U) = s * unrotate(U), per row)."""
        return trellis_grouping(enc.config, enc.layout).groups_per_row == 1 and not rotation.rotated_dims(enc.config, enc.layout)[0]

    def train_cache(self, matrix: torch.Tensor, enc: Encoded) -> dict[str, torch.Tensor]:
        """The decoded table values (the codes are kept: only the scales train), decoded once: as a
        [rows, cols] matrix with the rotation already undone when the scales commute with it
        (_rows_scaled), else grouped ([n_groups, group_len]). Same memory as the weight, in fp32."""
        values = self._table_values(enc, matrix.device)
        if self._rows_scaled(enc):
            return {"unit_weight": self.weight_domain(ungrouped(values, trellis_grouping(enc.config, enc.layout), enc.layout), enc)}
        return {"unit": values}

    def train_weight(self, matrix: torch.Tensor, enc: Encoded, params: dict[str, torch.Tensor],
                     cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """The trained scales times the cached table values: bit for bit decode's when nothing is
        rotated; with the rotation undone before the scaling (_rows_scaled), equal to it up to fp32
        rounding (a relative 1e-7: the products are rounded in another order), and the rotation's
        cost (a Hadamard transform forwards and backwards per step) is gone."""
        scales = self._trained_scales(enc, params)
        gp = trellis_grouping(enc.config, enc.layout)
        if "unit_weight" in cache:
            return cache["unit_weight"] * per_element(scales, gp, enc.layout)
        return self.weight_domain(ungrouped(cache["unit"] * scales.unsqueeze(1), gp, enc.layout), enc)

    def requantize(self, matrix: torch.Tensor, enc: Encoded, scales: torch.Tensor) -> Encoded:
        """The codes kept, the scales replaced (see trainable)."""
        return replace(enc, tensors={**enc.tensors, "scales": scales.to(torch.float16)}, bits=dict(enc.bits),
                       meta=dict(enc.meta))

    @classmethod
    def bits_for(cls, config: TrellisConfig, layout: MatrixLayout) -> int:
        n_groups = trellis_grouping(config, layout).n_groups
        return layout.numel * config.bits + 16 * n_groups + HEADER_BITS + rotation.stored_bits(config)

    @classmethod
    def stored_form(cls, enc: Encoded) -> dict[str, ArrayForm]:
        cfg: TrellisConfig = enc.config
        n_groups = trellis_grouping(cfg, enc.layout).n_groups
        return {**byte_arrays({"codes": bitpack.packed_nbytes(enc.numel, cfg.bits)}),
                "scales": (torch.float16, (n_groups,)), **rotation.stored_form(cfg)}

    @classmethod
    def for_budget(cls, bits_per_weight: float, layout: MatrixLayout, fixed: dict[str, Any]) -> TrellisConfig:
        # The widest code that fits; options the user set are kept.
        choices = [fixed["bits"]] if "bits" in fixed else range(8, 0, -1)
        options = {key: fixed[key] for key in ("state_bits", "group_size", "rotate") if key in fixed}
        for k in choices:
            cfg = TrellisConfig(bits=k, **options)
            if is_shipped(k, cfg.state_bits) and cls.bits_for(cfg, layout) <= bits_per_weight * layout.numel:
                return cfg
        raise Big2SmallError(
            f"trellis: no setting fits {bits_per_weight:.3f} bits per weight on a {list(layout.shape)} tensor"
        )
