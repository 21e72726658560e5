"""Training, in one place: a plain classifier loop and the one BatchNorm recalibration.

The loop trains with a task loss (cross-entropy against labels by default; self-compression's
data-free mode passes the distillation loss against a teacher's logits) plus, optionally, a `Regulariser` (self-compression's size
penalty is one: big2small.selfcompress.SizePenalty), whose own parameters get their own learning
rate. Users with their own loop need only selfcompress's `prepare`, `size_loss` and `convert`;
this loop is what the zoo's networks, the self-compression recipe and the tests run: Adam on
everything (docs/self-compression.md#training), per-epoch logs of the regulariser's bits per weight, dead
channels and validation accuracy, a progress bar with an ETA.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from big2small.config import Config
from big2small.errors import Big2SmallError
from big2small.evaluate.classification import accuracy
from big2small.progress import progress_bar


@dataclass
class TrainConfig(Config):
    """A versioned config (big2small.config). epochs, batch_size, lr: Adam's learning rate for the weights; quantizer_lr: for the
    regulariser's own parameters (self-compression's b and e; None: the same lr, as in the
    reference code); gamma: weight of the regulariser's loss (0 trains without it); seed: data order and initialisation; target_bits: if set, the model
    ends at its most accurate epoch (validation) whose Q is at most this many bits per weight
    (the last epoch if none is); steps: if set, a budget of optimiser steps that replaces `epochs`
    (as many passes over the data as it needs, the last one partial); max_seconds: stop after the
    epoch during which this much training wall time (seconds) has passed (None: no time budget)."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    quantizer_lr: float | None = None
    gamma: float = 0.015
    seed: int = 0
    target_bits: float | None = None
    steps: int | None = None
    max_seconds: float | None = None

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.gamma < 0 or (
                self.quantizer_lr is not None and self.quantizer_lr <= 0) or (
                self.target_bits is not None and self.target_bits <= 0) or (
                self.steps is not None and self.steps < 1) or (self.max_seconds is not None and self.max_seconds <= 0):
            raise Big2SmallError(f"bad training settings: {self}")


@dataclass
class EpochLog:
    """One epoch: mean training loss, Q (nominal bits per quantised weight), dead channels,
    validation top-1 accuracy (fraction; agreement with the teacher's top-1 on held-out synthetic
    inputs when training is data-free), wall time (seconds)."""

    epoch: int
    loss: float
    q_bits: float
    dead_channels: int
    val_accuracy: float
    seconds: float
    kept: bool = False  # the model returned is this epoch's

    def to_dict(self) -> dict:
        return asdict(self)


class Regulariser(Protocol):
    """An extra loss trained beside the task loss, with parameters of its own."""

    def parameters(self) -> list[nn.Parameter]:
        """Its own parameters, trained at TrainConfig.quantizer_lr."""

    def loss(self) -> torch.Tensor:
        """The differentiable penalty in bits per weight; the loop adds gamma times it."""

    def dead_channels(self) -> int:
        """Channels that no longer carry anything (logged per epoch)."""


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as a cumulative average
    over `batches` (no gradients); the model's mode and momenta are restored. Returns the number of
    BatchNorm layers recalibrated (0: nothing to do). Only the BatchNorm layers run in train mode:
    dropout and stochastic depth (drop-connect) stay in eval mode, so the statistics are those of
    the eval-mode forward they will normalise.

    Why: quantised weights jump between levels and channels die during self-compression, and
    folding merges channels, so the running averages no longer describe the layer's outputs (a
    dead channel keeps a decaying mean over a near-zero variance, which eval mode amplifies)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    for m in norms:
        m.train()
    try:
        seen = 0
        for batch in batches:
            model(batch)
            seen += 1
        if seen == 0:
            raise Big2SmallError("BatchNorm recalibration got no input batches")
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        for m, mode in modes:
            m.training = mode
    return len(norms)


def sample_batches(images: torch.Tensor, *, batches: int = 20, batch_size: int = 256, seed: int = 0) -> list[torch.Tensor]:
    """Up to `batches` batches of `batch_size` images drawn without replacement (seeded)."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n = min(batches, (len(images) + batch_size - 1) // batch_size)
    return [images[order[i * batch_size:(i + 1) * batch_size]] for i in range(n)]


TaskLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (model outputs, targets) -> scalar loss
# (batch images, batch targets) -> what the step trains on instead (e.g. augmented images with the
# teacher's logits on them: big2small.distill.augment.teacher_targets)
BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def train(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, config: TrainConfig, *,
          val: tuple[torch.Tensor, torch.Tensor], regulariser: Regulariser | None = None, progress: bool = True,
          description: str = "training", loss: TaskLoss = F.cross_entropy,
          batch_transform: BatchTransform | None = None) -> list[EpochLog]:
    """Train `model` on `images` with `loss`(outputs, targets of the batch) (default: cross-entropy
    against class labels), plus gamma * regulariser.loss() when a regulariser is given; each batch
    passes through `batch_transform` first when one is given (augmentation); after each
    epoch, re-estimate BatchNorm statistics on `images` (with a regulariser, whose quantised weights
    jump between levels) and measure top-1 accuracy on `val` (images, labels). Returns the epoch logs."""
    config.validate()
    task_loss = loss
    generator = torch.Generator().manual_seed(config.seed)
    own = {id(p) for p in regulariser.parameters()} if regulariser is not None else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in own], "lr": config.lr}]
    if own:
        groups.append({"params": [p for p in model.parameters() if id(p) in own],
                       "lr": config.quantizer_lr or config.lr})
    optimizer = torch.optim.Adam(groups)
    steps = (len(images) + config.batch_size - 1) // config.batch_size  # per epoch
    total_steps = config.steps if config.steps is not None else config.epochs * steps
    epochs = (total_steps + steps - 1) // steps
    logs: list[EpochLog] = []
    best: tuple[float, dict, int] | None = None  # validation accuracy, state, epoch: best within target_bits
    began = time.perf_counter()
    with progress_bar(description, total=total_steps, enabled=progress, unit="steps") as advance:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.train()
            order = torch.randperm(len(images), generator=generator)
            total = 0.0
            done = min(steps, total_steps - (epoch - 1) * steps)
            for i in range(done):
                idx = order[i * config.batch_size:(i + 1) * config.batch_size]
                x, y = images[idx], targets[idx]
                if batch_transform is not None:
                    x, y = batch_transform(x, y)
                loss = task_loss(model(x), y)
                if regulariser is not None and config.gamma > 0:
                    loss = loss + config.gamma * regulariser.loss()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                advance(1)
            if regulariser is not None:
                recalibrate_batchnorm(model, sample_batches(images, seed=config.seed + epoch))
            with torch.no_grad():
                q = float(regulariser.loss()) if regulariser is not None else 32.0
            logs.append(EpochLog(epoch, total / done, q, regulariser.dead_channels() if regulariser is not None else 0,
                                 accuracy(model, *val, batch_size=1000).top1, time.perf_counter() - start))
            if config.target_bits is not None and q <= config.target_bits and (best is None or logs[-1].val_accuracy > best[0]):
                best = (logs[-1].val_accuracy, copy.deepcopy(model.state_dict()), epoch)
            if config.max_seconds is not None and time.perf_counter() - began >= config.max_seconds:
                break
    if best is not None:
        model.load_state_dict(best[1])
    logs[best[2] - 1 if best is not None else -1].kept = True
    return logs
