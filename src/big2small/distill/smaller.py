"""Distillation into a smaller architecture: a transformer with fewer blocks, initialised from its
teacher's blocks (big2small.transforms.layers) and distilled on the teacher's synthetic inputs
(docs/distillation.md#a-smaller-architecture-fewer-layers)."""

from __future__ import annotations

from typing import Any

from torch import nn

from big2small.distill.config import DistillConfig
from big2small.distill.loop import DistillReport, distill, forward
from big2small.distill.loss import loss_for
from big2small.distill.synthetic import synthetic_inputs
from big2small.errors import Big2SmallError
from big2small.transforms.layers import CRITERIA, block_influence, block_list, drop_layers, even_keep, influence_keep
from big2small.transforms.records import LayerDropRecord

INFLUENCE_BATCHES = 4  # batches of synthetic inputs the influence of each block is averaged over


def fewer_layers(teacher: nn.Module, drop: int, *, criterion: str = "influence", task: str, tokenizer: Any = None,
                 config: DistillConfig | None = None, use_cache: bool = True,
                 progress: bool = True) -> tuple[nn.Module, LayerDropRecord, DistillReport | None]:
    """A copy of `teacher` with `drop` blocks fewer, chosen by `criterion` ("even" or
    "influence": measured on the synthetic inputs), then distilled from the teacher on them for
    `config.steps` steps (0: not distilled). Returns the student, what was dropped, and what
    distillation did (None when it did not run). The teacher is not changed."""
    config = config or DistillConfig()
    if criterion not in CRITERIA:
        raise Big2SmallError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    n = len(block_list(teacher)[2])
    even_keep(n, drop)  # refuses a count outside 0..n-1 before inputs are made
    inputs = None
    if criterion == "influence" or config.steps:
        inputs = synthetic_inputs(teacher, task, tokenizer, config, use_cache=use_cache, progress=progress)
    influence = None
    if criterion == "influence":
        size = config.batch_size
        batches = [{k: v[i:i + size] for k, v in inputs.items()}
                   for i in range(0, min(len(next(iter(inputs.values()))), INFLUENCE_BATCHES * size), size)]
        influence = block_influence(teacher, batches, forward)
        keep = influence_keep(influence, drop)
    else:
        keep = even_keep(n, drop)
    student = drop_layers(teacher, keep)
    record = LayerDropRecord(n, keep, criterion, influence, _parameters(teacher), _parameters(student))
    report = distill(teacher, student, inputs, loss_for(task), config, progress=progress) if config.steps else None
    return student, record, report


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
