"""The distillation loop: train a student to reproduce its teacher's outputs on synthetic inputs
(docs/distillation.md#the-loop).

AdamW on the student's trainable parameters (its learning rate on the config's schedule:
`lr_factor`), batches drawn in a seeded order from all but the last `held_out` inputs, the task's
loss (big2small.distill.loss) against the teacher's output (computed once per training input and
kept when they fit in memory: TeacherTargets); both models stay in eval mode (no dropout,
BatchNorm statistics untouched: synthetic inputs must not overwrite them). It stops after `steps`
steps or once `max_seconds` of training have passed, whichever comes first, with a progress bar and
its ETA. The held-out inputs measure the loss before and after: the report says whether
distillation helped on inputs it never saw.

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


# The teacher's outputs on the training inputs are kept after their first computation when they all
# fit in this many bytes (fp32; SmolLM2's logits on 128 sequences of 64 tokens: 1.6 GB), so that
# later passes over the inputs skip the teacher's forward pass.
TEACHER_CACHE_BYTES = 2 * 2**30


class TeacherTargets:
    """The teacher's output on each training input (by index), computed with the batch that first
    needs it and kept when all of them fit in `limit` bytes: its main tensor (logits, or last hidden
    state: a model output's first field, what every distillation loss reads), as the teacher computed
    it in that batch. Otherwise (or if `limit` is 0) every batch is computed again, as it is with
    `hidden_states` (forward's flag: the outputs carry the residual stream after every block, which
    the kept main tensor would lose)."""

    def __init__(self, teacher: nn.Module, n: int, limit: int, hidden_states: bool = False):
        self.teacher, self.n, self.limit, self.hidden_states = teacher, n, limit, hidden_states
        self.values: torch.Tensor | None = None
        self.known = torch.zeros(n, dtype=torch.bool)
        self.enabled = limit > 0 and not hidden_states

    @torch.no_grad()
    def __call__(self, index: torch.Tensor, batch: dict[str, torch.Tensor]) -> Any:
        if self.values is not None and bool(self.known[index].all()):
            return self.values[index.to(self.values.device)]
        output = forward(self.teacher, batch, self.hidden_states)
        if self.enabled:
            main = output if isinstance(output, torch.Tensor) else output[0]
            if self.values is None:
                if self.n * main[0].numel() * 4 > self.limit:
                    self.enabled = False
                    return output
                self.values = torch.empty((self.n, *main.shape[1:]), dtype=torch.float32, device=main.device)
            self.values[index.to(self.values.device)] = main.float()
            self.known[index] = True
        return output


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


def lr_factor(step: int, config: DistillConfig) -> float:
    """The learning rate of step `step` (0-based) relative to config.lr: a linear warm-up over
    config.warmup_steps steps, then 1 (schedule "constant") or half a cosine down to 0 at the last
    of config.steps ("cosine")."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    if config.schedule == "constant":
        return 1.0
    decay = max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - config.warmup_steps) / decay)))


def distill(teacher: nn.Module, student: nn.Module, inputs: dict[str, torch.Tensor], loss_fn: LossFn,
            config: DistillConfig, *, progress: bool = True,
            regulariser: Callable[[], torch.Tensor] | None = None,
            groups: list[dict[str, Any]] | None = None) -> DistillReport:
    """Train `student` (in place) to match `teacher` on `inputs` (tensors with one leading axis of
    examples: {"input_ids", "attention_mask"} or {"images"}); the teacher is not changed.

    With `regulariser` (a scalar computed after the student's forward pass, e.g. its weight error:
    big2small.distill.qat), each step minimises loss + config.weight_loss * regulariser(); the
    losses reported (training and held out) are the task's loss alone. With config.hidden_weight,
    `loss_fn` gains the hidden-state loss (with_hidden_states), in the reported losses too. `groups`:
    AdamW's parameter groups ({"params": [...], "lr": ...}; None: every trainable parameter of the
    student at config.lr); every group's learning rate follows lr_factor over the steps."""
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
    optimizer = torch.optim.AdamW(groups or params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    losses: list[float] = []
    stopped_by = "steps"
    try:
        before = mean_loss(teacher, student, held_out, loss_fn, config.batch_size, hidden) if config.held_out else None
        start = time.perf_counter()
        order = torch.empty(0, dtype=torch.long)
        targets = TeacherTargets(teacher, train_n, TEACHER_CACHE_BYTES, hidden)
        with progress_bar("distilling", config.steps, enabled=progress, unit="steps") as advance:
            for _ in range(config.steps):
                if config.max_seconds is not None and time.perf_counter() - start >= config.max_seconds:
                    stopped_by = "time"
                    break
                if len(order) < config.batch_size:  # a fresh seeded permutation per pass over the inputs
                    order = torch.cat([order, torch.randperm(train_n, generator=generator)])
                index, order = order[:config.batch_size], order[config.batch_size:]
                batch = _subset(inputs, index, device)
                target = targets(index, batch)
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
