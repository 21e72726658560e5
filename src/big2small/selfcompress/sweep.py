"""The built-in recipe: the zoo's Fashion-MNIST CNN (big2small.models.zoo.fashion.FashionCNN)
trained with the size penalty for several gamma values, each exported as a packed artifact and
evaluated after reload (docs/self-compression.md#the-fashion-mnist-recipe).

The last 5,000 training images are held out for validation; the 10,000 test images are used only
for the reported accuracy.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from big2small.artifact import DEFAULT_MAX_SHARD_SIZE, save
from big2small.errors import Big2SmallError
from big2small.evaluate.classification import accuracy
from big2small.evaluate.data import FashionSplits, fashion_mnist_splits
from big2small.models.zoo.fashion import FashionCNN, fashion_cnn, fashion_cnn_source
from big2small.restore import restore
from big2small.selfcompress.export import SelfCompressed, convert, state_dict_bits
from big2small.selfcompress.quantizer import SelfCompressConfig, SizePenalty, prepare
from big2small.training import EpochLog, TrainConfig, train

@dataclass
class SweepPoint:
    """One trained network: its test accuracy after export and reload, and its size."""

    gamma: float | None  # None: the fp32 reference
    test_accuracy: float
    bits_share: float  # stored bits / the fp32 network's state_dict bits
    weights_share: float  # weights left in the quantised layers / original
    nominal_bits: float
    stored_bits: int
    bytes_on_disk: int  # the artifact's tensor file; 0 when nothing was written
    train_seconds: float
    history: list[EpochLog] = field(default_factory=list)
    artifact: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "history"}
        d["history"] = [h.to_dict() for h in self.history]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SweepPoint":
        return cls(**{**data, "history": [EpochLog(**h) for h in data.get("history", [])]})


def train_fp32(data: FashionSplits, train_config: TrainConfig, *, progress: bool = True) -> tuple[FashionCNN, SweepPoint]:
    """The floating-point reference: the same network and schedule, no quantiser."""
    torch.manual_seed(train_config.seed)
    model = fashion_cnn()
    start = time.perf_counter()
    history = train(model, *data.train, TrainConfig(**{**train_config.__dict__, "gamma": 0.0}), val=data.val,
                    progress=progress, description="fp32 reference")
    seconds = time.perf_counter() - start
    n = sum(p.numel() for p in model.parameters())
    bits = state_dict_bits(model.state_dict())
    point = SweepPoint(None, accuracy(model, *data.test).top1, 1.0, 1.0, 32.0 * n, bits, 0, seconds, history)
    return model.eval(), point


def train_selfcompressed(data: FashionSplits, train_config: TrainConfig, config: SelfCompressConfig | None = None, *,
                         init: nn.Module | None = None, out: Path | None = None, raw_dtype: str = "float16",
                         progress: bool = True, max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
                         ) -> tuple[SelfCompressed, SweepPoint]:
    """Train one self-compressing network at train_config.gamma, export it, save it (if `out`;
    tensor files of at most `max_shard_size`, as for save), reload the artifact and measure its
    test accuracy. `init`: start from these weights (e.g. the fp32 reference) instead of a fresh
    initialisation."""
    torch.manual_seed(train_config.seed)
    model = copy.deepcopy(init) if init is not None else fashion_cnn()
    prepare(model, config or SelfCompressConfig())
    penalty = SizePenalty(model)
    start = time.perf_counter()
    history = train(model, *data.train, train_config, val=data.val, regulariser=penalty, progress=progress,
                    description=f"gamma {train_config.gamma:g}")
    seconds = time.perf_counter() - start
    result = convert(model, raw_dtype=raw_dtype, source=fashion_cnn_source())
    if out is not None:
        info = save(result.compressed, out, overwrite=True, max_shard_size=max_shard_size)
        restored = restore(out)
        on_disk = info.tensor_file_bytes
    else:
        restored = result.compressed.apply_to(fashion_cnn()).eval()
        on_disk = 0
    point = SweepPoint(
        train_config.gamma, accuracy(restored, *data.test).top1, result.bits_share, result.weights_share,
        result.nominal_bits, result.bits_total, on_disk, seconds, history, str(out) if out else None,
    )
    return result, point


def run_recipe(gammas: list[float], train_config: TrainConfig, *, out_dir: Path | None = None, fp32: bool = True,
               init: str = "scratch", config: SelfCompressConfig | None = None, limit: int | None = None,
               progress: bool = True, max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
               ) -> tuple[list[SweepPoint], FashionCNN | None]:
    """The whole recipe: optionally the fp32 reference, then one self-compressed network per gamma
    (artifacts under `out_dir` as gamma-<g>.b2s). init: "scratch" (b0 = 2, exponents fitted to
    the initial weights) or "fp32" (fine-tune the fp32 reference from b0 = 8, near-lossless).
    Returns the points (the fp32 reference first, if trained) and the fp32 model."""
    if not gammas or any(g < 0 for g in gammas):
        raise Big2SmallError(f"gamma values must be >= 0, got {gammas}")
    if init not in ("scratch", "fp32"):
        raise Big2SmallError(f"init must be 'scratch' or 'fp32', got {init!r}")
    if init == "fp32" and not fp32:
        raise Big2SmallError("init 'fp32' fine-tunes the fp32 reference: do not turn the reference off")
    data = fashion_mnist_splits(limit=limit)
    points: list[SweepPoint] = []
    reference = None
    if fp32:
        reference, point = train_fp32(data, train_config, progress=progress)
        points.append(point)
    if config is None:
        config = SelfCompressConfig(init_bits=2.0 if init == "scratch" else 8.0, init_exponent=None)
    for gamma in gammas:
        out = out_dir / f"gamma-{gamma:g}.b2s" if out_dir is not None else None
        _, point = train_selfcompressed(data, TrainConfig(**{**train_config.__dict__, "gamma": gamma}), config,
                                        init=reference if init == "fp32" else None, out=out, progress=progress,
                                        max_shard_size=max_shard_size)
        points.append(point)
    return points, reference
