"""What a structural transform did to a model, as stored in an artifact's manifest.

A record says that the stored tensors have other shapes than the original model's (so restoring
into an original-width skeleton resizes it first) and what the transform reported. Each kind is
a typed dataclass; the manifest holds `{"transform": kind, **fields}`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from big2small.errors import Big2SmallError


@dataclass
class TransformRecord:
    """Base of every record; subclasses set `kind` and declare their fields."""

    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"transform": self.kind, **dataclasses.asdict(self)}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "TransformRecord":
        """The record of a manifest entry; unknown kinds and fields are refused."""
        if not isinstance(data, dict) or data.get("transform") not in RECORDS:
            kind = data.get("transform") if isinstance(data, dict) else data
            raise Big2SmallError(f"unknown transform record {kind!r} (known: {', '.join(RECORDS)})")
        cls = RECORDS[data["transform"]]
        fields = {f.name for f in dataclasses.fields(cls)}
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        given = {k: v for k, v in data.items() if k != "transform"}
        if not fields - optional <= set(given) <= fields:
            raise Big2SmallError(f"transform record {cls.kind!r} has fields {sorted(given)}, expected {sorted(fields)}")
        return cls(**given)


@dataclass
class FoldRecord(TransformRecord):
    """Folding or structured pruning (big2small.folding): units merged or removed per group.
    Parameter and MAC counts are per example input; seconds is fold()'s wall time."""

    kind: ClassVar[str] = "fold"
    config: dict[str, Any]
    ratio: float | None
    sparsity: float
    parameters_before: int
    parameters_after: int
    macs_before: int | None
    macs_after: int | None
    seconds: float
    data_free: bool
    groups: list[dict[str, Any]]

    @classmethod
    def of(cls, report: dict[str, Any]) -> "FoldRecord":
        """The record of fold()'s report (FoldResult.to_dict()), without the reasons groups were
        left unfolded."""
        return cls(**{k: v for k, v in report.items() if k != "unfolded"})


@dataclass
class ChannelRemovalRecord(TransformRecord):
    """Self-compression's export: channels whose bit depth reached 0 removed, per producer layer."""

    kind: ClassVar[str] = "selfcompress_channel_removal"
    removed_channels: dict[str, int]


@dataclass
class DistillRecord(TransformRecord):
    """Data-free distillation of the stored weights from the original (big2small.distill): shapes
    unchanged. big2small.distill's DistillReport is this class. Steps taken, why it stopped, training wall time
    (seconds), mean loss of the first and last tenth of the steps, loss on held-out synthetic
    inputs before and after, inputs made, the DistillConfig as a dict, and what was trained:
    "weights" (repair after folding) or "scales of N tensors" (quantisation-aware distillation:
    the codec's scales, codes re-chosen with them). Manifests written before `trained` existed
    read as "weights"."""

    kind: ClassVar[str] = "distill"
    steps: int
    stopped_by: str
    seconds: float
    train_loss_first: float | None
    train_loss_last: float | None
    held_out_before: float | None
    held_out_after: float | None
    inputs: int
    config: dict[str, Any]
    trained: str = "weights"


@dataclass
class LayerDropRecord(TransformRecord):
    """Transformer blocks removed (big2small.transforms.layers): `kept`, the indices (in the
    original's numbering) of the blocks the stored model has, renumbered 0..len(kept)-1; how
    they were chosen ("even" or "influence") with each original block's influence when measured;
    parameter counts of the original and the smaller model."""

    kind: ClassVar[str] = "drop_layers"
    layers_before: int
    kept: list[int]
    criterion: str
    influence: list[float] | None
    parameters_before: int
    parameters_after: int


RECORDS: dict[str, type[TransformRecord]] = {cls.kind: cls for cls in (FoldRecord, ChannelRemovalRecord, DistillRecord,
                                                                          LayerDropRecord)}
