"""Inputs the fold command needs beside the model: one example to count MACs, and, for the
non-data-free "data" repair only, a few real batches to re-estimate BatchNorm statistics."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from big2small.errors import Big2SmallError

TOKENS = 128  # sequence length of the transformer example input
CALIBRATION_SEED = 1  # photo crops for repair differ from the evaluation crops (seed 0)


def example_input(task: str, model: nn.Module) -> Any:
    """One input of the model's task (tensor, or dict of tensors for transformers); None if the
    task gives no shape to use."""
    if task == "image-classifier":
        return torch.zeros(1, 3, 224, 224)
    if task == "fashion-mnist-classifier":
        return torch.zeros(1, 1, 28, 28)
    if task in ("causal-lm", "encoder"):
        vocab = getattr(getattr(model, "config", None), "vocab_size", 1000)
        return {"input_ids": torch.arange(TOKENS).remainder(vocab).unsqueeze(0)}
    return None


def calibration_batches(task: str, images: int = 256, batch_size: int = 64) -> list[torch.Tensor]:
    """Real inputs for repair="data": seeded crops of the bundled photos (image classifiers) or the
    first Fashion-MNIST training images."""
    from big2small.evaluate import data

    if task == "image-classifier":
        x = data.photo_crops(images, seed=CALIBRATION_SEED)
    elif task == "fashion-mnist-classifier":
        x = data.fashion_mnist_normalised("train")[0][:images]
    else:
        raise Big2SmallError(f"repair 'data' has no built-in inputs for a {task} model "
                             "(use the Python API: fold(model, config, data=batches))")
    return list(x.split(batch_size))
