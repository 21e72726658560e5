"""restore(): a runnable dense model from an artifact (or a CompressedModel in memory)."""

from __future__ import annotations

import os

from torch import nn

from big2small.artifact import load
from big2small.compress import CompressedModel
from big2small.errors import Big2SmallError
from big2small.models.load import build_skeleton
from big2small.onthefly import attach
from big2small.transforms.layers import restructure


def restore(artifact: str | os.PathLike | CompressedModel, skeleton: nn.Module | None = None, *,
            on_the_fly: bool = False, unpack: bool = False, fused: bool = False) -> nn.Module:
    """Decode the weights into a model and return it in eval mode.

    Hugging Face models and bundled models rebuild from the artifact alone; any other nn.Module
    needs `skeleton`, an instance of its class (its weights are overwritten).
    on_the_fly: compressed layer weights stay compact and are decoded inside each forward
        (big2small.onthefly); `unpack` keeps their codes unpacked (faster, more memory); `fused`
        makes Linear layers of codecs with compiled kernels (uniform, trellis, hyper) multiply with
        their codes directly (big2small.compact.CompactLinear: batch-1 generation without decoding).
    """
    cm = artifact if isinstance(artifact, CompressedModel) else load(artifact)
    if skeleton is None:
        if cm.source is None:
            raise Big2SmallError("this artifact has no source model record: pass a skeleton")
        skeleton = build_skeleton(cm.source)
    if fused and not on_the_fly:
        raise Big2SmallError("fused=True keeps the weights compact: it needs on_the_fly=True")
    if on_the_fly:
        return attach(restructure(skeleton, cm.transforms), cm, unpack=unpack, fused=fused).eval()
    return cm.apply_to(skeleton).eval()
