"""restore(): a runnable dense model from an artifact (or a CompressedModel in memory)."""

from __future__ import annotations

import ctypes
import os

from torch import nn

from big2small.artifact import ArtifactReader
from big2small.compress import CompressedModel
from big2small.errors import Big2SmallError
from big2small.fill import fill
from big2small.models.load import build_skeleton


def restore(artifact: str | os.PathLike | CompressedModel, skeleton: nn.Module | None = None, *,
            on_the_fly: bool = False, unpack: bool = False, fused: bool = False) -> nn.Module:
    """Decode the weights into a model and return it in eval mode.

    Hugging Face models and bundled models rebuild from the artifact alone, their parameters on
    the meta device (no memory) until each is decoded in its turn (big2small.fill): an artifact is
    read tensor by tensor (ArtifactReader, every array checked), so the peak is the restored model
    plus about one decoded tensor. Any other nn.Module needs `skeleton`, an instance of its class
    (its weights are overwritten; its parameters may be on the meta device too).
    on_the_fly: compressed layer weights stay compact and are decoded inside each forward
        (big2small.onthefly); `unpack` keeps their codes unpacked (faster, more memory); `fused`
        makes Linear layers of codecs with compiled kernels (uniform, trellis, hyper) multiply with
        their codes directly (big2small.compact.CompactLinear: batch-1 generation without decoding).
    """
    if isinstance(artifact, CompressedModel):
        cm = artifact
        source, records, read, aliases, transforms = cm.source, cm.tensors, cm.tensors.__getitem__, cm.aliases, cm.transforms
    else:
        reader = ArtifactReader(artifact)
        reader.check_size()
        m = reader.manifest
        source, records, read, aliases, transforms = reader.source(), reader.records(), reader.tensor, m.aliases, m.transforms
    if skeleton is None:
        if source is None:
            raise Big2SmallError("this artifact has no source model record: pass a skeleton")
        skeleton = build_skeleton(source)
    if fused and not on_the_fly:
        raise Big2SmallError("fused=True keeps the weights compact: it needs on_the_fly=True")
    model = fill(skeleton, records, read, aliases, transforms=transforms, on_the_fly=on_the_fly, unpack=unpack,
                 fused=fused).eval()
    _return_freed_memory()
    return model


def _return_freed_memory() -> None:
    """Give the memory freed while decoding back to the system (glibc's malloc_trim; elsewhere nothing).

    Each tensor's decode makes short-lived arrays several times its size. glibc serves them from
    its heap once its mmap threshold has grown, and keeps what they leave between the arrays that
    stay: a fused restore of SmolLM2 (161 MiB of resident codes) ended at 1.54 GiB of RSS, 0.74 GiB
    after the trim.
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
