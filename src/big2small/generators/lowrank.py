"""Low-rank SVD: the matrix view A = U S V^T is stored as two fp16 factors of rank r.

L = U_r diag(sqrt(S_r)) [O, r] and R = diag(sqrt(S_r)) V_r^T [r, J], so A_hat = L @ R; splitting
sqrt(S) between the factors keeps both in the same range for fp16. The rank is set directly, by an
energy share of the singular values, or by a bits-per-weight budget. When a rank costs at least as
much as the dense matrix (r (O + J) >= O J), the matrix is stored dense in fp16 instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from big2small.errors import Big2SmallError
from big2small.generators.base import HEADER_BITS, ArrayForm, Encoded, Generator, GeneratorConfig, meta_int, register
from big2small.layout import MatrixLayout

# Share of the singular values' energy kept when no rank option is given.
DEFAULT_ENERGY = 0.9
# Slack on the energy share: an fp32 SVD does not resolve finer shares.
ENERGY_TOL = 1e-6


@dataclass
class LowRankConfig(GeneratorConfig):
    """At most one of: rank (>= 1, capped at min(O, J)); energy (0 < e <= 1: the smallest rank whose
    squared singular values reach this share of the total); bits_per_weight (> 0: the largest rank
    whose stored bits, header included, fit; at least 1). None set means energy = 0.9."""

    method = "lowrank"
    bits_option = "bits_per_weight"
    rank: int | None = None
    energy: float | None = None
    bits_per_weight: float | None = None

    def validate(self) -> None:
        given = [n for n in ("rank", "energy", "bits_per_weight") if getattr(self, n) is not None]
        if len(given) > 1:
            raise Big2SmallError(f"lowrank: set only one of rank, energy, bits_per_weight; got {given}")
        r = self.rank
        if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
            raise Big2SmallError(f"lowrank: rank must be an integer >= 1, got {self.rank!r}")
        if self.energy is not None and not (isinstance(self.energy, (int, float)) and 0 < self.energy <= 1):
            raise Big2SmallError(f"lowrank: energy must be in (0, 1], got {self.energy!r}")
        if self.bits_per_weight is not None and not (
            isinstance(self.bits_per_weight, (int, float)) and math.isfinite(self.bits_per_weight)
            and self.bits_per_weight > 0
        ):
            raise Big2SmallError(f"lowrank: bits_per_weight must be > 0, got {self.bits_per_weight!r}")

    @property
    def data_dependent(self) -> bool:
        """True when the rank is only known after the SVD (energy mode, the default)."""
        return self.rank is None and self.bits_per_weight is None


def _budget_rank(bits_per_weight: float, layout: MatrixLayout) -> int:
    """The largest r with 16 r (O + J) + header <= bits_per_weight * N (may be < 1), or full rank
    (stored dense) when the dense fp16 matrix fits, as it is then the better choice."""
    rows, cols = layout.rows, layout.cols
    budget = bits_per_weight * layout.numel
    if 16 * layout.numel + HEADER_BITS <= budget:
        return min(rows, cols)
    r = math.floor((budget - HEADER_BITS) / (16 * (rows + cols)))
    while r >= 1 and 16 * r * (rows + cols) + HEADER_BITS > budget:  # guard against float rounding
        r -= 1
    return r


def _is_dense(rank: int, layout: MatrixLayout) -> bool:
    return rank * (layout.rows + layout.cols) >= layout.rows * layout.cols


def _bits(rank: int, layout: MatrixLayout) -> int:
    if _is_dense(rank, layout):
        return 16 * layout.numel + HEADER_BITS
    return 16 * rank * (layout.rows + layout.cols) + HEADER_BITS


def _known_rank(config: LowRankConfig, layout: MatrixLayout) -> int:
    """The rank of a config whose rank does not depend on the data, capped at min(O, J)."""
    if config.rank is not None:
        r = config.rank
    elif config.bits_per_weight is not None:
        r = max(1, _budget_rank(config.bits_per_weight, layout))
    else:
        raise Big2SmallError("lowrank: the rank chosen by energy depends on the data; encode to know its bits")
    return min(r, min(layout.rows, layout.cols))


def _energy_rank(s: torch.Tensor, energy: float) -> int:
    """The smallest r whose squared singular values reach `energy` of the total (1 if all are 0).

    Shares are compared with a slack of ENERGY_TOL, below what an fp32 SVD resolves, so that
    energy = 1 keeps the numerical rank rather than every round-off singular value."""
    cum = torch.cumsum(s.double() ** 2, 0)
    total = float(cum[-1])
    return min(int((cum < (energy - ENERGY_TOL) * total).sum()) + 1, s.numel())


def _svd(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The thin SVD in float64 with a fixed sign per singular pair (the largest entry of each left
    vector positive), so that the stored fp16 factors are the same bytes on any thread count: in
    fp32, LAPACK's blocking by threads moves results by more than fp16 rounding hides, and signs
    may flip."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    sign = torch.sign(u.gather(0, u.abs().argmax(0, keepdim=True))).clamp_min(0) * 2 - 1
    return u * sign, s, vh * sign.reshape(-1, 1)


@register
class LowRankGenerator(Generator):
    config_type = LowRankConfig

    def encode_matrix(self, matrix: torch.Tensor, layout: MatrixLayout, *, seed: int) -> Encoded:
        cfg: LowRankConfig = self.config
        if cfg.data_dependent:
            u, s, vh = _svd(matrix)
            rank = _energy_rank(s, DEFAULT_ENERGY if cfg.energy is None else cfg.energy)
        else:
            rank = _known_rank(cfg, layout)
            u = s = vh = None
        if _is_dense(rank, layout):
            dense = matrix.to(torch.float16)
            _check_fp16(dense)
            tensors = {"dense": dense.contiguous()}
            bits = {"dense": 16 * layout.numel, "header": HEADER_BITS}
            meta = {"rank": rank, "dense": 1}
        else:
            if s is None:
                u, s, vh = _svd(matrix)
            root = s[:rank].sqrt()
            left = (u[:, :rank] * root).to(torch.float16)
            right = (root.unsqueeze(1) * vh[:rank]).to(torch.float16)
            _check_fp16(left)
            _check_fp16(right)
            tensors = {"L": left.contiguous(), "R": right.contiguous()}
            bits = {"L": 16 * layout.rows * rank, "R": 16 * rank * layout.cols, "header": HEADER_BITS}
            meta = {"rank": rank, "dense": 0}
        return Encoded(self.config.method, cfg, layout, matrix.dtype, tensors, bits, meta)

    def decode_matrix(self, enc: Encoded) -> torch.Tensor:
        layout = enc.layout
        if enc.meta.get("dense"):
            return enc.tensors["dense"].float().reshape(layout.rows, layout.cols)
        return enc.tensors["L"].float() @ enc.tensors["R"].float()

    @classmethod
    def bits_for(cls, config: LowRankConfig, layout: MatrixLayout) -> int:
        """Exact bits for a set rank or budget; raises Big2SmallError for an energy-chosen rank."""
        return _bits(_known_rank(config, layout), layout)

    @classmethod
    def bits_bound(cls, config: LowRankConfig, layout: MatrixLayout) -> tuple[int, bool]:
        """A rank chosen by energy is known only after the SVD: at most full rank, stored dense."""
        if config.data_dependent:
            return _bits(min(layout.rows, layout.cols), layout), False
        return cls.bits_for(config, layout), True

    @classmethod
    def stored_bits(cls, enc: Encoded) -> int:
        return _bits(_stored_rank(enc), enc.layout)

    @classmethod
    def stored_form(cls, enc: Encoded) -> dict[str, ArrayForm]:
        rank, layout = _stored_rank(enc), enc.layout
        if _is_dense(rank, layout):
            return {"dense": (torch.float16, (layout.rows, layout.cols))}
        return {"L": (torch.float16, (layout.rows, rank)), "R": (torch.float16, (rank, layout.cols))}

    @classmethod
    def for_budget(cls, bits_per_weight: float, layout: MatrixLayout, fixed: dict[str, Any]) -> LowRankConfig:
        if fixed.get("energy") is not None:
            raise Big2SmallError("lowrank: energy picks the rank from the data; it cannot meet a size target")
        if fixed.get("rank") is not None:
            return cls.require_fit(LowRankConfig(rank=fixed["rank"]), layout, bits_per_weight, f"rank {fixed['rank']}")
        r = _budget_rank(bits_per_weight, layout)
        if r < 1:
            raise Big2SmallError(
                f"lowrank: even rank 1 does not fit {bits_per_weight:.3f} bits per weight on a "
                f"{list(layout.shape)} tensor"
            )
        return LowRankConfig(rank=min(r, min(layout.rows, layout.cols)))


def _stored_rank(enc: Encoded) -> int:
    """The rank of a stored record (meta), refused unless its config and shape allow it and its
    dense flag is the one that rank implies."""
    layout = enc.layout
    rank = meta_int(enc, "rank", 1, min(layout.rows, layout.cols))
    if not enc.config.data_dependent and rank != _known_rank(enc.config, layout):
        raise Big2SmallError(f"lowrank: meta rank {rank}, its config makes {_known_rank(enc.config, layout)}")
    if meta_int(enc, "dense", 0, 1) != _is_dense(rank, layout):
        raise Big2SmallError(f"lowrank: meta dense {enc.meta['dense']} does not match rank {rank}")
    return rank


def _check_fp16(t: torch.Tensor) -> None:
    if not torch.isfinite(t).all():
        raise Big2SmallError("lowrank: weights too large for fp16 storage")
