"""The distillation loop: train a student to reproduce its teacher's outputs on synthetic inputs
(docs/distillation.md#the-loop).

AdamW on the student's trainable parameters, batches drawn in a seeded order from all but the
last `held_out` inputs, the task's loss (big2small.distill.loss) against the teacher's output
computed on the fly; both models stay in eval mode (no dropout, BatchNorm statistics untouched:
synthetic inputs must not overwrite them). It stops after `steps` steps or once `max_seconds` of
training have passed, whichever comes first, with a progress bar and its ETA. The held-out inputs
measure the loss before and after: the report says whether distillation helped on inputs it never
saw.

(big2small.training's loop trains a classifier on labelled data with cross-entropy, by epochs; this
one has no labels, a second model and a step or time budget, so it is its own loop.)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from big2small.distill.config import DistillConfig
from big2small.distill.loss import LossFn, hidden_state_loss
from big2small.errors import Big2SmallError
from big2small.progress import progress_bar
from big2small.transforms.records import DistillRecord

IMAGES = "images"  # the key of image inputs, passed positionally (text inputs are keyword arguments)


# What distillation did is what the manifest records about it: one dataclass for both (steps,
# why it stopped, seconds, first/last-tenth training loss, held-out loss before and after, inputs,
# the config as a dict).
DistillReport = DistillRecord


def forward(model: nn.Module, batch: dict[str, torch.Tensor], hidden_states: bool = False) -> Any:
    """The model's output on a batch of synthetic inputs (images positionally, text by keyword;
    `hidden_states`: text models' residual stream after every block too)."""
    if IMAGES in batch:
        return model(batch[IMAGES])
    return model(**batch, output_hidden_states=True) if hidden_states else model(**batch)


def with_hidden_states(loss_fn: LossFn, weight: float) -> LossFn:
    """`loss_fn` plus `weight` times the hidden-state loss (distill.loss.hidden_state_loss); the
    outputs it reads come from forward(..., hidden_states=True)."""
    def loss(teacher_out: Any, student_out: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return loss_fn(teacher_out, student_out, batch) + weight * hidden_state_loss(teacher_out, student_out, batch)
    return loss


def learning_rate_factor(schedule: str, steps: int) -> Callable[[int], float]:
    """The learning rate at step i (from 0) as a factor of the peak: 1 ("constant"), or
    (1 + cos(pi i / steps)) / 2 ("cosine": from 1 at the first step towards 0 at the last)."""
    if schedule == "cosine":
        return lambda i: 0.5 * (1.0 + math.cos(math.pi * min(i, steps) / max(steps, 1)))
    return lambda i: 1.0


def _subset(inputs: dict[str, torch.Tensor], index: torch.Tensor, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v[index].to(device) for k, v in inputs.items()}


@torch.no_grad()
def mean_loss(teacher: nn.Module, student: nn.Module, inputs: dict[str, torch.Tensor], loss_fn: LossFn,
              batch_size: int, hidden_states: bool = False) -> float:
    """The loss averaged over `inputs` (weighted by batch size), without gradients."""
    device = next(student.parameters()).device
    n = len(next(iter(inputs.values())))
    total = 0.0
    for start in range(0, n, batch_size):
        batch = _subset(inputs, torch.arange(start, min(n, start + batch_size)), device)
        outputs = forward(teacher, batch, hidden_states), forward(student, batch, hidden_states)
        total += float(loss_fn(*outputs, batch)) * len(batch[next(iter(batch))])
    return total / n


def distill(teacher: nn.Module, student: nn.Module, inputs: dict[str, torch.Tensor], loss_fn: LossFn,
            config: DistillConfig, *, progress: bool = True,
            regulariser: Callable[[], torch.Tensor] | None = None) -> DistillReport:
    """Train `student` (in place) to match `teacher` on `inputs` (tensors with one leading axis of
    examples: {"input_ids", "attention_mask"} or {"images"}); the teacher is not changed.

    With `regulariser` (a scalar computed after the student's forward pass, e.g. its weight error:
    big2small.distill.qat), each step minimises loss + config.weight_loss * regulariser(); the
    losses reported (training and held out) are the task's loss alone. With config.hidden_weight,
    `loss_fn` gains the hidden-state loss (with_hidden_states), in the reported losses too; the
    learning rate follows config.lr_schedule over config.steps."""
    config.validate()
    if config.weight_loss and regulariser is None:
        raise Big2SmallError("weight_loss weighs a compressed student's weight error: only compress --distill has one")
    n = len(next(iter(inputs.values())))
    if n != config.samples:
        raise Big2SmallError(f"distillation got {n} inputs, its config says samples={config.samples}")
    hidden = config.hidden_weight > 0
    if hidden:
        loss_fn = with_hidden_states(loss_fn, config.hidden_weight)
    train_n = n - config.held_out
    held_out = {k: v[train_n:] for k, v in inputs.items()}
    params = [p for p in student.parameters() if p.requires_grad]
    if not params:
        raise Big2SmallError("the student has no trainable parameters")
    device = params[0].device
    teacher_grads = [(p, p.requires_grad) for p in teacher.parameters()]
    was_training = (teacher.training, student.training)
    teacher.eval()
    student.eval()
    for p, _ in teacher_grads:
        p.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor(config.lr_schedule, config.steps))
    losses: list[float] = []
    stopped_by = "steps"
    try:
        before = mean_loss(teacher, student, held_out, loss_fn, config.batch_size, hidden) if config.held_out else None
        start = time.perf_counter()
        order = torch.empty(0, dtype=torch.long)
        with progress_bar("distilling", config.steps, enabled=progress, unit="steps") as advance:
            for _ in range(config.steps):
                if config.max_seconds is not None and time.perf_counter() - start >= config.max_seconds:
                    stopped_by = "time"
                    break
                if len(order) < config.batch_size:  # a fresh seeded permutation per pass over the inputs
                    order = torch.cat([order, torch.randperm(train_n, generator=generator)])
                batch, order = _subset(inputs, order[:config.batch_size], device), order[config.batch_size:]
                with torch.no_grad():
                    target = forward(teacher, batch, hidden)
                loss = loss_fn(target, forward(student, batch, hidden), batch)
                total = loss + config.weight_loss * regulariser() if config.weight_loss else loss
                if not torch.isfinite(total):
                    raise Big2SmallError(f"distillation diverged at step {len(losses) + 1} (loss {float(total)}): lower the learning rate")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
                advance(1)
        seconds = time.perf_counter() - start
        after = mean_loss(teacher, student, held_out, loss_fn, config.batch_size, hidden) if config.held_out else None
    finally:
        for p, g in teacher_grads:
            p.requires_grad_(g)
        teacher.train(was_training[0])
        student.train(was_training[1])
    tenth = max(1, math.ceil(len(losses) / 10))
    return DistillReport(len(losses), stopped_by, seconds,
                         sum(losses[:tenth]) / tenth if losses else None, sum(losses[-tenth:]) / tenth if losses else None,
                         before, after, n, config.to_dict())
