"""Synthetic images from a CNN's BatchNorm statistics (DeepInversion, Yin et al., CVPR 2020;
docs/distillation.md#batchnorm-inversion).

Every BatchNorm layer stores the running mean and variance of its input over the training data.
Images x are optimised (Adam, from seeded Gaussian noise) so that each BatchNorm layer's batch
statistics on x match its running ones:

    loss = sum_l (|mu_l(x) - mean_l|_2 + |var_l(x) - var_l|_2)          (feature statistics)
         + tv * TV_2(x) + l2 * mean(x^2)                                  (image prior)
         + ce * cross_entropy(teacher(x), y)                              (teacher's class confidence)

with y a seeded, balanced assignment of target classes. The teacher's weights and statistics are
not changed (eval mode: BatchNorm normalises with its running statistics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from big2small.errors import Big2SmallError
from big2small.progress import progress_bar

TV_WEIGHT = 1e-4 * 28 * 28  # per-pixel total variation, scaled as in DeepInversion's CIFAR setting
L2_WEIGHT = 1e-5
CE_WEIGHT = 1.0


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers that hold running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and m.running_mean is not None]


def statistics_gap(norm: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """|batch mean - running mean|_2 + |batch var - running var|_2 of the BatchNorm's input x
    (statistics per channel, over the batch and spatial axes)."""
    dims = [0] + list(range(2, x.ndim))
    return torch.norm(x.mean(dims) - norm.running_mean, 2) + torch.norm(x.var(dims, unbiased=False) - norm.running_var, 2)


def invert_batchnorm(model: nn.Module, shape: tuple[int, ...], *, samples: int, steps: int = 200, lr: float = 0.1,
                     seed: int = 0, batch_size: int = 64, progress: bool = True) -> torch.Tensor:
    """float32 [samples, *shape] images whose BatchNorm statistics in `model` match its running
    ones (module docstring); `shape` is one input's (C, H, W)."""
    norms = batchnorm_layers(model)
    if not norms:
        raise Big2SmallError(f"{type(model).__name__} has no BatchNorm statistics to invert: "
                             "use random inputs (source random) or real data")
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters()]
    grads = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    terms: list[torch.Tensor] = []

    def hook(module, inputs, _output):
        terms.append(statistics_gap(module, inputs[0]))

    handles = [m.register_forward_hook(hook) for m in norms]
    batches = []
    try:
        with progress_bar("inverting BatchNorm statistics", samples * steps, enabled=progress, unit="image steps") as advance:
            for start in range(0, samples, batch_size):
                n = min(batch_size, samples - start)
                x = torch.randn((n, *shape), generator=generator).to(device).requires_grad_(True)
                classes = None
                optimizer = torch.optim.Adam([x], lr=lr)
                for _ in range(steps):
                    terms.clear()
                    logits = model(x)
                    if classes is None:  # balanced target classes, seeded
                        classes = (torch.arange(n) + int(torch.randint(logits.shape[1], (1,), generator=generator))) \
                            .remainder(logits.shape[1])[torch.randperm(n, generator=generator)].to(device)
                    tv = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean() + (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()
                    loss = torch.stack(terms).sum() + TV_WEIGHT * tv + L2_WEIGHT * x.pow(2).mean() + \
                        CE_WEIGHT * F.cross_entropy(logits, classes)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    advance(n)
                batches.append(x.detach().cpu())
    finally:
        for h in handles:
            h.remove()
        for p, g in zip(params, grads):
            p.requires_grad_(g)
        model.train(was_training)
    return torch.cat(batches)


@torch.no_grad()
def batchnorm_mismatch(model: nn.Module, images: torch.Tensor) -> float:
    """Sum over BatchNorm layers of |batch mean - running mean| + |batch var - running var| on
    `images`: the quantity inversion minimises (lower: closer to the training data's statistics)."""
    total = []

    def hook(module, inputs, _output):
        total.append(float(statistics_gap(module, inputs[0])))

    handles = [m.register_forward_hook(hook) for m in batchnorm_layers(model)]
    was_training = model.training
    model.eval()
    try:
        model(images)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sum(total)
