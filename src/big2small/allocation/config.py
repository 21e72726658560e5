"""AllocationConfig: how a recipe's size target is shared out among tensors (a recipe field, so
kept apart from the allocator, which needs the models' tasks)."""

from __future__ import annotations

from dataclasses import dataclass, field

from big2small.config import Config
from big2small.errors import Big2SmallError
from big2small.generators import GeneratorConfig

OBJECTIVES = ("auto", "output", "weights")


@dataclass
class AllocationConfig(Config):
    """How a size target is shared out among tensors.

    objective: "output" (data-free output sensitivity), "weights" (squared weight error), or
        "auto" (output where the model's task has a data-free probe, else weights).
    candidates: the configurations each tensor may get; empty: the recipe's method's own sizes.
    keep_candidate: a tensor may also be kept uncompressed (at the recipe's raw dtype).
    probe_count, probe_tokens: probe inputs for "output" (sequences, tokens each; images: count).
    sample_weights: weights per tensor (whole rows) encoded to measure each candidate's error.
    """

    objective: str = "auto"
    candidates: list[GeneratorConfig] = field(default_factory=list)
    keep_candidate: bool = False
    probe_count: int = 16
    probe_tokens: int = 128
    sample_weights: int = 4096

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise Big2SmallError(f"allocation objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        for name in ("probe_count", "probe_tokens", "sample_weights"):
            if getattr(self, name) < 1:
                raise Big2SmallError(f"allocation: {name} must be >= 1, got {getattr(self, name)}")
        if self.probe_tokens < 2:
            raise Big2SmallError("allocation: probe_tokens must be >= 2")


