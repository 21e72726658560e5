"""Cheap image augmentation for distillation on a small set of images (docs/self-compression.md#data-free-self-compression).

A few hundred synthetic images trained on for hundreds of steps are seen dozens of times each: the
student learns the teacher on those images only. Each training batch is therefore drawn again as
random variants: mirrored left-right with probability 1/2 (`flip`) and translated by a whole
number of pixels drawn uniformly in [-max_shift, max_shift] on each axis (edges replicated). The
teacher's logits are recomputed on the augmented batch (`teacher_targets`), so the targets stay the
teacher's outputs on exactly the inputs the student sees: no label is assumed to be invariant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from big2small.config import Config
from big2small.errors import Big2SmallError


@dataclass
class AugmentConfig(Config):
    """flip: mirror each image left-right with probability 1/2; max_shift: largest translation
    (pixels, on each axis, edges replicated; 0: none)."""

    flip: bool = True
    max_shift: int = 2

    def validate(self) -> None:
        if not isinstance(self.flip, bool):
            raise Big2SmallError(f"augment flip must be true or false, got {self.flip!r}")
        if not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise Big2SmallError(f"augment max_shift must be an integer >= 0 (pixels), got {self.max_shift!r}")


def augment_images(images: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A random variant of every image of `images` [N, C, H, W] (module docstring), same shape and
    dtype; the draws come from `generator` (CPU), so a seeded generator gives the same batch."""
    config.validate()
    if images.ndim != 4:
        raise Big2SmallError(f"augmentation takes image batches [N, C, H, W], got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    out = images
    if config.flip:
        mirrored = torch.rand(n, generator=generator) < 0.5
        out = torch.where(mirrored.to(images.device)[:, None, None, None], out.flip(-1), out)
    s = config.max_shift
    if s > 0:
        dy, dx = (torch.randint(-s, s + 1, (2, n), generator=generator) + s).to(images.device)
        padded = F.pad(out, (s, s, s, s), mode="replicate")
        rows = torch.arange(h, device=images.device)[None, :] + dy[:, None]  # [N, H]
        cols = torch.arange(w, device=images.device)[None, :] + dx[:, None]  # [N, W]
        batch = torch.arange(n, device=images.device)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    return out.contiguous()


def teacher_targets(teacher: nn.Module, config: AugmentConfig, seed: int
                    ) -> Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """A batch transform for training.train: (images, targets) -> (augmented images, the teacher's
    logits on them); the given targets are dropped. Draws are seeded by `seed`, in call order."""
    config.validate()
    generator = torch.Generator().manual_seed(seed)

    def transform(images: torch.Tensor, _targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = augment_images(images, config, generator)
        was_training = teacher.training
        teacher.eval()
        try:
            with torch.no_grad():
                logits = teacher(x)
        finally:
            teacher.train(was_training)
        return x, logits

    return transform
