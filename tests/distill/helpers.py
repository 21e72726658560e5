"""Tiny teachers with peaked outputs for the distillation tests: a random tiny LLaMA predicts
almost uniform distributions, whose KL to anything is near 0; a larger output scale gives the
student something to learn."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tiny_models import tiny_llama  # noqa: E402


def peaked_llama():
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    return model
