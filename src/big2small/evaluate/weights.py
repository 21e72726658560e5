"""Weight-space reconstruction error: relative Frobenius error and SQNR, per tensor and in total."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from big2small.errors import Big2SmallError

__all__ = ["WeightErrorReport", "WeightErrorRow", "error_row", "report_of", "weight_error"]


def _rel_and_sqnr(signal: float, noise: float) -> tuple[float, float]:
    """Relative error ||W - What||/||W|| and SQNR dB from squared norms (exact -> 0, +inf)."""
    if noise == 0.0:
        return 0.0, math.inf
    if signal == 0.0:
        return math.inf, -math.inf
    return math.sqrt(noise / signal), 10.0 * math.log10(signal / noise)


@dataclass(frozen=True)
class WeightErrorRow:
    """Reconstruction error of one tensor (or the total, named ``"TOTAL"``).

    rel_error: ||W - What||_F / ||W||_F (unitless). sqnr_db: 10 log10(||W||^2 / ||W - What||^2)
    in decibels, +inf when the reconstruction is exact. signal / noise: the squared norms.
    """

    name: str
    numel: int
    rel_error: float
    sqnr_db: float
    signal: float
    noise: float


@dataclass(frozen=True)
class WeightErrorReport:
    """Per-tensor rows (in the original's key order) and an energy-weighted total.

    The total is computed from the summed squared norms over all tensors, so large tensors
    weigh in proportion to their energy, not their count.
    """

    rows: tuple[WeightErrorRow, ...]
    total: WeightErrorRow
    protocol: dict[str, Any] = field(default_factory=dict)

    def table(self) -> list[dict[str, Any]]:
        """Rows for printing: one dict per tensor, then the total, with keys
        ``name``, ``numel``, ``rel_error``, ``sqnr_db``."""
        return [
            {"name": r.name, "numel": r.numel, "rel_error": r.rel_error, "sqnr_db": r.sqnr_db}
            for r in (*self.rows, self.total)
        ]

    def describe(self) -> str:
        """One line: the total figures and how they were computed."""
        return (
            f"weight error over {len(self.rows)} tensors ({self.total.numel} weights): "
            f"relative {self.total.rel_error:.4g}, SQNR {self.total.sqnr_db:.2f} dB "
            f"(Frobenius, energy-weighted total, float64)"
        )


def weight_error(
    original: Mapping[str, Tensor], reconstructed: Mapping[str, Tensor]
) -> WeightErrorReport:
    """Compare reconstructed weights with the originals, tensor by tensor.

    Args:
        original: name -> tensor (e.g. a ``state_dict``).
        reconstructed: name -> tensor with the same names and shapes.

    Returns:
        :class:`WeightErrorReport`; relative errors are unitless, SQNR is in dB. Squared norms
        are accumulated in float64.

    Raises:
        Big2SmallError: if a name is missing from either side or shapes differ.
    """
    missing = [k for k in original if k not in reconstructed]
    extra = [k for k in reconstructed if k not in original]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing from reconstructed: {', '.join(missing[:5])}")
        if extra:
            parts.append(f"missing from original: {', '.join(extra[:5])}")
        raise Big2SmallError("weight_error: tensor names differ (" + "; ".join(parts) + ")")
    if not original:
        raise Big2SmallError("weight_error: no tensors given")

    return report_of([error_row(name, w, reconstructed[name]) for name, w in original.items()])


def error_row(name: str, w: Tensor, w_hat: Tensor) -> WeightErrorRow:
    """The error of one tensor `w` reconstructed as `w_hat` (same shape; squared norms in float64).
    weight_error's rows; a caller that reads tensors one at a time (verify) builds them itself."""
    if w.shape != w_hat.shape:
        raise Big2SmallError(
            f"weight_error: {name} has shape {tuple(w.shape)} but its reconstruction {tuple(w_hat.shape)}"
        )
    w64 = w.detach().to(torch.float64)
    signal = float(w64.square().sum())
    w_hat64 = w_hat.detach().to(device=w.device, dtype=torch.float64)
    noise = float((w64 - w_hat64).square().sum())
    rel, sqnr = _rel_and_sqnr(signal, noise)
    return WeightErrorRow(name, w.numel(), rel, sqnr, signal, noise)


def report_of(rows: list[WeightErrorRow]) -> WeightErrorReport:
    """The report of rows (error_row's, in order), with their energy-weighted total."""
    signal_total = sum(r.signal for r in rows)
    noise_total = sum(r.noise for r in rows)
    numel_total = sum(r.numel for r in rows)
    rel, sqnr = _rel_and_sqnr(signal_total, noise_total)
    total = WeightErrorRow("TOTAL", numel_total, rel, sqnr, signal_total, noise_total)
    protocol = {
        "metric": "weight_error",
        "tensors": len(rows),
        "numel": numel_total,
        "rel_error": "||W - What||_F / ||W||_F",
        "sqnr_db": "10 log10(||W||^2 / ||W - What||^2), inf when exact",
        "total": "energy-weighted: from squared norms summed over all tensors",
        "accumulation": "float64",
    }
    return WeightErrorReport(rows=tuple(rows), total=total, protocol=protocol)
