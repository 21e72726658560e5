"""A plain classifier training loop with the size penalty, used by the built-in recipe.

Users with their own loop need only `prepare`, `size_loss` and `convert`; this module is what the
recipe and the tests run: Adam on weights, b and e alike (docs/self-compression.md#training), per-epoch logs of Q,
dead channels and validation accuracy, a progress bar with an ETA.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from big2small.errors import Big2SmallError
from big2small.evaluate.classification import accuracy
from big2small.progress import progress_bar
from big2small.selfcompress.quantizer import quantized_layers, quantizer_parameters, size_loss


@dataclass
class TrainConfig:
    """epochs, batch_size, lr: Adam's learning rate for the weights; quantizer_lr: for b and e
    (None: the same lr, as in the reference code); gamma: weight of the size loss (bits per weight;
    0 trains without it); seed: data order and initialisation; target_bits: if set, the model
    ends at its most accurate epoch (validation) whose Q is at most this many bits per weight
    (docs/self-compression.md#training; the last epoch if none is)."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    quantizer_lr: float | None = None
    gamma: float = 0.015
    seed: int = 0
    target_bits: float | None = None

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.gamma < 0 or (
                self.quantizer_lr is not None and self.quantizer_lr <= 0) or (
                self.target_bits is not None and self.target_bits <= 0):
            raise Big2SmallError(f"bad training settings: {self}")


@dataclass
class EpochLog:
    """One epoch: mean training loss, Q (nominal bits per quantised weight), dead channels,
    validation top-1 accuracy (fraction), wall time (seconds)."""

    epoch: int
    loss: float
    q_bits: float
    dead_channels: int
    val_accuracy: float
    seconds: float
    kept: bool = False  # the model returned is this epoch's

    def to_dict(self) -> dict:
        return asdict(self)


def dead_channels(model: nn.Module) -> int:
    """Channels whose bit depth is 0 (they output exactly zero)."""
    with torch.no_grad():
        return sum(int((q.channel_bits() <= 0).sum()) for _, _, q in quantized_layers(model))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, *, batches: int = 20, batch_size: int = 256,
                          seed: int = 0) -> None:
    """Re-estimate every BatchNorm's running statistics for the current (quantised) weights.

    Quantised weights jump between levels and channels die during training, so the running
    averages lag behind: a dead channel keeps a decaying mean over a near-zero variance, which eval
    mode amplifies. A few batches of training images in train mode, averaged (momentum None),
    fix it; the method uses training data anyway."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    for i in range(min(batches, (len(images) + batch_size - 1) // batch_size)):
        model(images[order[i * batch_size:(i + 1) * batch_size]])
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.train(was_training)


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig, *,
          val: tuple[torch.Tensor, torch.Tensor], progress: bool = True, description: str = "training") -> list[EpochLog]:
    """Train `model` (prepared or plain fp32) on (images, labels) with cross-entropy plus
    gamma * size_loss when it is prepared; after each epoch, re-estimate BatchNorm statistics (if
    prepared) and validate. Returns the epoch logs."""
    config.validate()
    generator = torch.Generator().manual_seed(config.seed)
    prepared = any(True for _ in quantized_layers(model))
    quantizer = {id(p) for p in quantizer_parameters(model)}
    groups = [{"params": [p for p in model.parameters() if id(p) not in quantizer], "lr": config.lr}]
    if quantizer:
        groups.append({"params": [p for p in model.parameters() if id(p) in quantizer],
                       "lr": config.quantizer_lr or config.lr})
    optimizer = torch.optim.Adam(groups)
    steps = (len(images) + config.batch_size - 1) // config.batch_size
    logs: list[EpochLog] = []
    best: tuple[float, dict, int] | None = None  # validation accuracy, state, epoch: best within target_bits
    with progress_bar(description, total=config.epochs * steps, enabled=progress) as advance:
        for epoch in range(1, config.epochs + 1):
            start = time.perf_counter()
            model.train()
            order = torch.randperm(len(images), generator=generator)
            total = 0.0
            for i in range(steps):
                idx = order[i * config.batch_size:(i + 1) * config.batch_size]
                loss = F.cross_entropy(model(images[idx]), labels[idx])
                if prepared and config.gamma > 0:
                    loss = loss + config.gamma * size_loss(model)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach())
                advance(1)
            if prepared:
                recalibrate_batchnorm(model, images, seed=config.seed + epoch)
            with torch.no_grad():
                q = float(size_loss(model)) if prepared else 32.0
            logs.append(EpochLog(epoch, total / steps, q, dead_channels(model) if prepared else 0,
                                 accuracy(model, *val, batch_size=1000).top1, time.perf_counter() - start))
            if config.target_bits is not None and q <= config.target_bits and (best is None or logs[-1].val_accuracy > best[0]):
                best = (logs[-1].val_accuracy, copy.deepcopy(model.state_dict()), epoch)
    if best is not None:
        model.load_state_dict(best[1])
    logs[best[2] - 1 if best is not None else -1].kept = True
    return logs
