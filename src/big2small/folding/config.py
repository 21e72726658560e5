"""FoldConfig: every knob of model folding, a typed, versioned config (big2small.config); a recipe
may list it as a transform: {"transform": "fold", ...}."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from big2small.config import TransformConfig
from big2small.errors import Big2SmallError

SELECTIONS = ("fold", "l1", "l2", "activation")
REPAIRS = ("ar", "naive", "data")
SCALINGS = ("robust", "none")
NORM_REPAIRS = ("none", "scale_rows", "lsq", "sequential")


@dataclass
class FoldConfig(TransformConfig):
    """How to fold a model (docs/folding.md).

    sparsity: fraction of all parameters to remove, turned into per-group widths by `allocation`
        (per-group `ratios` stay fixed). None: use `ratio`.
    allocation: "cost" (units removed where Ward merging loses the least feature variance per
        parameter saved; data-free) or "uniform" (one fold ratio r for every group, docs/folding.md#widths).
    ratio: the fold ratio r of every foldable group (k = floor(n * (1 - r)) units kept).
    ratios: group-name regex -> r, overriding the above for matching groups (first match wins).
    skip: group-name regexes never folded.
    selection: "fold" (k-means, merge) or "l1"/"l2" (structured magnitude pruning of the same
        groups: the baseline), or "activation" (transformers: pruning that keeps the units writing
        the most into the residual stream on the teacher's synthetic inputs, folding/reconstruct.py).
    repair: "ar" (data-free variance repair, BatchNorm fused first), "naive" (none) or "data"
        (BatchNorm statistics re-estimated on real inputs: not data-free).
    feature_scaling: "robust" (per-feature median/IQR) or "none"; None picks robust for "ar".
    norm_repair: for groups without BatchNorm (transformer MLPs): "scale_rows" multiplies each
        merged producer row by the AR factor from that matrix's own row cosines (docs/folding.md#repair-without-batchnorm);
        "lsq" refits the merged MLP's output columns by least squares on synthetic inputs drawn
        through the preceding norm's own weights (our design; data-free; see folding/lsq_repair.py);
        "sequential" refits every folded group's consumer (MLP output, attention output) block by
        block on the teacher's own hidden states for its synthetic inputs (folding/reconstruct.py).
        "activation" and "sequential" need those inputs (fold(..., calibration=)).
    ar_features: which unscaled, BatchNorm-fused features give Fold-AR's mean cosine per cluster:
        "producers" (the rows that make each channel: the quantity the variance argument needs) or
        "all" (producers and consumer columns: the clustering features; docs/folding.md#fold-ar).
    fold_mlp, fold_attention: which transformer groups to fold; gqa_mode: "kv" (a unit is a KV
        head and its query heads).
    multiple_of: keep a multiple of this many units (when a group has at least that many).
    n_init, max_iter, seed: k-means restarts, Lloyd iterations, and the seed.
    """

    transform: ClassVar[str] = "fold"
    sparsity: float | None = 0.3
    allocation: str = "cost"
    ratio: float | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)
    selection: str = "fold"
    repair: str = "ar"
    feature_scaling: str | None = None
    norm_repair: str = "none"
    ar_features: str = "all"
    fold_mlp: bool = True
    fold_attention: bool = True
    gqa_mode: str = "kv"
    multiple_of: int = 1
    n_init: int = 10
    max_iter: int = 100
    seed: int = 0

    def validate(self) -> None:
        if (self.sparsity is None) == (self.ratio is None):
            raise Big2SmallError("give exactly one of sparsity (fraction of parameters) and ratio (fold ratio)")
        if self.sparsity is not None and not 0 < self.sparsity < 1:
            raise Big2SmallError(f"sparsity must be in (0, 1), got {self.sparsity}")
        for name, r in [("ratio", self.ratio)] + [(f"ratios[{p!r}]", v) for p, v in self.ratios.items()]:
            if r is not None and not 0 <= r < 1:
                raise Big2SmallError(f"{name} must be in [0, 1) (r = 1 would keep no unit), got {r}")
        for name, value, allowed in (("selection", self.selection, SELECTIONS), ("repair", self.repair, REPAIRS),
                                     ("norm_repair", self.norm_repair, NORM_REPAIRS),
                                     ("allocation", self.allocation, ("cost", "uniform")),
                                     ("ar_features", self.ar_features, ("producers", "all")),
                                     ("feature_scaling", self.feature_scaling, SCALINGS + (None,)),
                                     ("gqa_mode", self.gqa_mode, ("kv",))):
            if value not in allowed:
                raise Big2SmallError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")
        if self.multiple_of < 1 or self.n_init < 1 or self.max_iter < 1:
            raise Big2SmallError("multiple_of, n_init and max_iter must be >= 1")
        for pattern in list(self.ratios) + self.skip:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise Big2SmallError(f"bad group pattern {pattern!r}: {exc}") from None

    @property
    def needs_calibration(self) -> bool:
        """Whether folding runs the model on the teacher's synthetic inputs (folding/reconstruct.py)."""
        return self.selection == "activation" or self.norm_repair == "sequential"

    @property
    def scaling(self) -> str:
        if self.feature_scaling is not None:
            return self.feature_scaling
        return "robust" if self.repair == "ar" else "none"
