"""The evaluation protocol's knobs and the figures it reports.

Which metrics a model gets is its task's business (big2small.models.tasks); every figure carries
the protocol it was measured with.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from big2small.config import Config


@dataclass
class EvalSettings(Config):
    """Protocol knobs, a versioned config (big2small.config). Defaults follow the project's reference figures (see README)."""

    context: int = 512  # tokens per perplexity window
    windows: int = 20  # first n non-overlapping windows
    bos: int | str | None = None  # start token prepended to each window: None = the model's own, an id, or "none"
    documents: int = 300  # lee_background documents for embedding fidelity
    photos: int = 256  # seeded photo crops for classifier agreement
    seed: int = 0
    progress: bool = True


@dataclass
class MetricRow:
    """One figure: its name, value, whether higher is better, and how it was measured."""

    metric: str
    value: float
    higher_is_better: bool
    protocol: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
