"""What an export did, as records: per tensor its target type and whether it was re-quantised
(with the weight SQNR that cost), and the bytes written against the artifact's."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from big2small.evaluate.weights import WeightErrorRow, weight_error

SHOWN = 8  # re-quantised tensors named on the terminal (JSON has them all)


def requantisation_error(ours: torch.Tensor, exported: torch.Tensor) -> WeightErrorRow:
    """The error of `exported` (what the engine dequantises) against `ours` (our decoded weights):
    a WeightErrorRow (SQNR in dB, +inf when exact; squared norms for totals)."""
    return weight_error({"w": ours}, {"w": exported}).rows[0]


@dataclass(frozen=True)
class ExportedTensor:
    """One tensor of an export: our name, the target's name and type, and, for a re-quantised
    tensor, its error against our decoded weights (None when written exactly)."""

    name: str
    target: str
    type: str
    exact: bool
    error: WeightErrorRow | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "target": self.target, "type": self.type, "exact": self.exact,
                "sqnr_db": None if self.error is None else _finite(self.error.sqnr_db)}


@dataclass
class ExportReport:
    """An export: where it went, its bytes on disk against the artifact's, and every tensor.

    artifact_bytes: the artifact's tensor file + manifest (its weights, as `inspect` counts them);
    bytes: every file written (weights, config, tokenizer metadata)."""

    format: str
    path: Path
    bytes: int
    artifact_bytes: int
    tensors: list[ExportedTensor] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def requantised(self) -> list[ExportedTensor]:
        return [t for t in self.tensors if not t.exact]

    @property
    def requantised_sqnr_db(self) -> float | None:
        """SQNR (dB) over all re-quantised tensors together (energy-weighted), None when none was."""
        rows = [t.error for t in self.requantised if t.error is not None]
        if not rows:
            return None
        noise = sum(r.noise for r in rows)
        return math.inf if noise == 0 else 10 * math.log10(sum(r.signal for r in rows) / noise)

    def describe(self) -> list[str]:
        """Lines for the terminal: what was written, what was re-quantised and at what cost."""
        types = ", ".join(f"{n} {t}" for t, n in sorted(Counter(t.type for t in self.tensors).items()))
        lines = [f"wrote {self.path} ({self.format}): {self.bytes / 1e6:.2f} MB "
                 f"(artifact weights: {self.artifact_bytes / 1e6:.2f} MB); tensors: {types}"]
        req = self.requantised
        if req:
            lines.append(f"re-quantised {len(req)} tensor(s) ({', '.join(sorted({t.type for t in req}))}): "
                         f"weight SQNR {self.requantised_sqnr_db:.2f} dB against our decoded weights; worst first:")
            worst = sorted(req, key=lambda t: t.error.sqnr_db if t.error else math.inf)
            lines += [f"  {t.name} -> {t.target} {t.type}: {t.error.sqnr_db:.2f} dB" for t in worst[:SHOWN]]
            if len(worst) > SHOWN:
                lines.append(f"  ... and {len(worst) - SHOWN} more (--json lists every tensor)")
        else:
            lines.append("every tensor written exactly (no re-quantisation)")
        return lines + self.notes

    def to_dict(self) -> dict[str, Any]:
        sq = self.requantised_sqnr_db
        return {"format": self.format, "path": str(self.path), "bytes": self.bytes,
                "artifact_bytes": self.artifact_bytes, "requantised": len(self.requantised),
                "requantised_sqnr_db": None if sq is None else _finite(sq),
                "tensors": [t.to_dict() for t in self.tensors], "notes": self.notes}


def _finite(x: float) -> float | str:
    """JSON has no infinity: an exact tensor's SQNR is the string "inf"."""
    return x if math.isfinite(x) else "inf"
