"""Data-free distillation in one call: synthetic inputs from the teacher (distill.synthetic), the
task's loss (distill.loss), the loop (distill.loop). It repairs a student made from the teacher by
any transform that keeps its interface (folding, structured pruning, a narrower copy)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from torch import nn

from big2small.distill.config import DistillConfig
from big2small.distill.loop import DistillReport, distill
from big2small.distill.loss import loss_for
from big2small.distill.synthetic import synthetic_inputs
from big2small.errors import Big2SmallError


def distill_student(teacher: nn.Module, student: nn.Module, *, task: str, tokenizer: Any = None,
                    config: DistillConfig | None = None, example_input: Any = None, use_cache: bool = True,
                    progress: bool = True, regulariser: Callable[[], torch.Tensor] | None = None,
                    groups: list[dict[str, Any]] | None = None) -> DistillReport:
    """Train `student` in place to reproduce `teacher` (unchanged) on the teacher's synthetic
    inputs for `task` (a big2small.models.tasks name); returns what it did, with the loss on
    held-out synthetic inputs before and after. `regulariser`, `groups`: see distill.loop.distill."""
    config = config or DistillConfig()
    if teacher is student:
        raise Big2SmallError("the student must be a separate model from its teacher (e.g. a folded copy)")
    loss_fn = loss_for(task)
    inputs = synthetic_inputs(teacher, task, tokenizer, config, example_input=example_input, use_cache=use_cache,
                              progress=progress)
    return distill(teacher, student, inputs, loss_fn, config, progress=progress, regulariser=regulariser, groups=groups)
