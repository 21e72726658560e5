"""restore(): a runnable dense model from an artifact (or a CompressedModel in memory)."""

from __future__ import annotations

import os

from torch import nn

from big2small.artifact import load
from big2small.compress import CompressedModel
from big2small.errors import Big2SmallError
from big2small.models.load import build_skeleton
from big2small.onthefly import attach


def restore(artifact: str | os.PathLike | CompressedModel, skeleton: nn.Module | None = None, *,
            on_the_fly: bool = False, unpack: bool = False) -> nn.Module:
    """Decode the weights into a model and return it in eval mode.

    Hugging Face models and bundled models rebuild from the artifact alone; any other nn.Module
    needs `skeleton`, an instance of its class (its weights are overwritten).
    on_the_fly: compressed layer weights stay compact and are decoded inside each forward
        (big2small.onthefly); `unpack` keeps their codes unpacked (faster, more memory).
    """
    cm = artifact if isinstance(artifact, CompressedModel) else load(artifact)
    if skeleton is None:
        if cm.source is None:
            raise Big2SmallError("this artifact has no source model record: pass a skeleton")
        skeleton = build_skeleton(cm.source)
    if on_the_fly:
        return attach(skeleton, cm, unpack=unpack).eval()
    return cm.apply_to(skeleton).eval()
