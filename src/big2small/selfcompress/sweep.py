"""The built-in recipe: the zoo's Fashion-MNIST CNN (big2small.models.zoo.fashion.FashionCNN)
trained with the size penalty for several gamma values, each exported as a packed artifact and
evaluated after reload (docs/self-compression.md#the-fashion-mnist-recipe).

The last 5,000 training images are held out for validation; the 10,000 test images are used only
for the reported accuracy.

Data-free (docs/self-compression.md#data-free-self-compression): the networks start from a trained
teacher (the user's fp32 model) at b0 = 8 and learn from images synthesised from its BatchNorm
statistics (big2small.distill.synthetic, cached on disk), with the distillation loss against the
teacher's logits (big2small.distill.loss) in place of the labelled loss. The training loop is the
same (big2small.training.train): only the training set and its loss change (`TrainingSet`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from big2small.artifact import DEFAULT_MAX_SHARD_SIZE, save
from big2small.errors import Big2SmallError
from big2small.distill.augment import AugmentConfig, teacher_targets
from big2small.distill.config import DistillConfig
from big2small.distill.loss import logit_kl
from big2small.evaluate.classification import accuracy, logits_of
from big2small.evaluate.data import FashionSplits, fashion_mnist_normalised, fashion_mnist_splits
from big2small.models.zoo.fashion import FashionCNN, fashion_cnn, fashion_cnn_source
from big2small.restore import restore
from big2small.selfcompress.export import SelfCompressed, convert, state_dict_bits
from big2small.selfcompress.quantizer import SelfCompressConfig, SizePenalty, prepare
from big2small.training import EpochLog, TaskLoss, TrainConfig, train

TASK = "fashion-mnist-classifier"  # the zoo CNN's task (big2small.models.tasks): its synthetic source and loss
LABELLED = "real images, labels"


@dataclass
class TrainingSet:
    """What a network is trained on: `images` with `targets` for `loss`(outputs, targets), and
    `val` (images, labels) for the per-epoch validation accuracy. `inputs` names the data source
    (recorded in each SweepPoint); `seconds`: time spent making the inputs (synthesis, teacher
    logits), not counting training. `augment` (with its `teacher`): every training batch is a random
    variant of its images with the teacher's logits on it as targets (distill.augment, draws seeded
    by the run's seed); None: the batches as they are."""

    images: torch.Tensor
    targets: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor]
    loss: TaskLoss
    inputs: str
    seconds: float = 0.0
    augment: AugmentConfig | None = None
    teacher: nn.Module | None = None

    @classmethod
    def labelled(cls, data: FashionSplits) -> "TrainingSet":
        """The real training images with their labels and cross-entropy (the recipe's default)."""
        return cls(*data.train, data.val, F.cross_entropy, LABELLED)

    @classmethod
    def distilled(cls, teacher: nn.Module, images: torch.Tensor, val_images: torch.Tensor, inputs: str,
                  seconds: float = 0.0, augment: AugmentConfig | None = None) -> "TrainingSet":
        """`images` with the teacher's logits as targets and the distillation loss (KL(teacher ||
        student) of the class distributions, in nats per image); validation: agreement with the
        teacher's top-1 on `val_images`. `augment`: train on random variants of the images, the
        teacher's logits recomputed on each (the class docstring)."""
        start = time.perf_counter()
        targets = logits_of(teacher, images)
        val_labels = logits_of(teacher, val_images).argmax(1)
        if augment is not None:
            augment.validate()
            inputs += f", augmented (flip {str(augment.flip).lower()}, shift {augment.max_shift} px)"
        return cls(images, targets, (val_images, val_labels), distillation_loss, inputs,
                   seconds + time.perf_counter() - start, augment, teacher if augment is not None else None)


def distillation_loss(outputs: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The classifier's distillation loss (big2small.distill.loss.logit_kl) as a training loss."""
    return logit_kl(teacher_logits, outputs, {})


def datafree_source(teacher: nn.Module, config: DistillConfig) -> str:
    """The synthetic source that applies to `teacher` (config.source, "auto" resolved), or a
    Big2SmallError: a source that cannot apply, or no held-out images to validate on."""
    from big2small.distill.synthetic import resolve_source

    config.validate()
    if config.held_out < 1:
        raise Big2SmallError("data-free self-compression validates on held-out synthetic images: it needs at least "
                             f"2 samples (1 held out), got samples={config.samples}, held_out={config.held_out}")
    return resolve_source(teacher, TASK, config.source)


def synthetic_set(teacher: nn.Module, config: DistillConfig, *, use_cache: bool = True,
                  progress: bool = True, augment: AugmentConfig | None = None) -> TrainingSet:
    """Data-free training set: `config.samples` images synthesised from the teacher (source
    "auto": inversion of its BatchNorm statistics; "random": Gaussian images), read from the cache
    when made before; the last `config.held_out` of them validate (agreement with the teacher).
    A teacher without BatchNorm is refused in one line naming the source that applies. `augment`:
    see TrainingSet."""
    from big2small.distill.synthetic import synthetic_inputs
    from big2small.models.tasks import get_task

    source = datafree_source(teacher, config)
    start = time.perf_counter()
    images = synthetic_inputs(teacher, TASK, None, config, example_input=get_task(TASK).example_input(teacher),
                              use_cache=use_cache, progress=progress)["images"]
    train_n = len(images) - config.held_out
    return TrainingSet.distilled(teacher, images[:train_n], images[train_n:], f"synthetic images ({source})",
                                 time.perf_counter() - start, augment)


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
    inputs: str = LABELLED  # what it was trained on (TrainingSet.inputs)
    inputs_seconds: float = 0.0  # time spent making those inputs (synthesis, teacher logits)

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


def train_selfcompressed(training: TrainingSet, test: tuple[torch.Tensor, torch.Tensor], train_config: TrainConfig,
                         config: SelfCompressConfig | None = None, *, init: nn.Module | None = None,
                         out: Path | None = None, raw_dtype: str = "float16", progress: bool = True,
                         max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE) -> tuple[SelfCompressed, SweepPoint]:
    """Train one self-compressing network at train_config.gamma on `training` (TrainingSet.labelled
    for the real labelled images, synthetic_set for data-free), export it, save it (if `out`;
    tensor files of at most `max_shard_size`, as for save), reload the artifact and measure its
    accuracy on `test` (images, labels). `init`: start from these weights (e.g. the fp32
    reference, the teacher) instead of a fresh initialisation."""
    torch.manual_seed(train_config.seed)
    model = copy.deepcopy(init) if init is not None else fashion_cnn()
    prepare(model, config or SelfCompressConfig())
    penalty = SizePenalty(model)
    transform = teacher_targets(training.teacher, training.augment, train_config.seed) \
        if training.augment is not None else None
    start = time.perf_counter()
    history = train(model, training.images, training.targets, train_config, val=training.val, regulariser=penalty,
                    progress=progress, description=f"gamma {train_config.gamma:g}", loss=training.loss,
                    batch_transform=transform)
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
        train_config.gamma, accuracy(restored, *test).top1, result.bits_share, result.weights_share,
        result.nominal_bits, result.bits_total, on_disk, seconds, history, str(out) if out else None,
        training.inputs, training.seconds,
    )
    return result, point


def run_recipe(gammas: list[float], train_config: TrainConfig, *, out_dir: Path | None = None, fp32: bool = True,
               init: str = "scratch", config: SelfCompressConfig | None = None, limit: int | None = None,
               progress: bool = True, max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
               distill: DistillConfig | None = None, teacher: nn.Module | None = None,
               augment: AugmentConfig | None = None) -> tuple[list[SweepPoint], FashionCNN | None]:
    """The whole recipe: optionally the fp32 reference, then one self-compressed network per gamma
    (artifacts under `out_dir` as gamma-<g>.b2s). init: "scratch" (b0 = 2, exponents fitted to
    the initial weights) or "fp32" (fine-tune the fp32 reference from b0 = 8, near-lossless).

    distill: data-free: every network fine-tunes the teacher (init "fp32") on synthetic images
    only (synthetic_set: `distill`'s samples, held_out, seed, source and inversion settings), with
    the distillation loss, for `distill.steps` optimiser steps at learning rate `distill.lr`
    (stopping early after `distill.max_seconds`); batch size, quantizer_lr, seed and target_bits
    stay train_config's (DistillConfig.batch_size is the distillation loop's, not used here). The teacher is
    `teacher` (a trained FashionCNN: then no training image is read, only the test set for the
    reported accuracy) or, if None, the fp32 reference trained here on the real images (the
    "user's model"). augment (with distill): every training batch is a random variant of the
    synthetic images, the teacher's logits recomputed on it (distill.augment).
    Returns the points (the fp32 reference or the teacher first, if any) and that fp32 model."""
    if not gammas or any(g < 0 for g in gammas):
        raise Big2SmallError(f"gamma values must be >= 0, got {gammas}")
    if init not in ("scratch", "fp32"):
        raise Big2SmallError(f"init must be 'scratch' or 'fp32', got {init!r}")
    if distill is not None and init != "fp32":
        raise Big2SmallError("data-free self-compression fine-tunes the teacher: it needs init 'fp32'")
    if augment is not None and distill is None:
        raise Big2SmallError("augmentation applies to data-free self-compression: it needs a distillation config")
    if augment is not None:
        augment.validate()
    if teacher is not None and distill is None:
        raise Big2SmallError("a given teacher is distilled on synthetic images: it needs a distillation config")
    if init == "fp32" and not fp32 and teacher is None:
        raise Big2SmallError("init 'fp32' fine-tunes the fp32 reference: do not turn the reference off")
    if distill is not None:  # refused before any training: a source that cannot apply, a bad schedule
        datafree_source(teacher if teacher is not None else fashion_cnn(), distill)
        distill_schedule(train_config, distill).validate()
    points: list[SweepPoint] = []
    reference = None
    if teacher is not None:
        test = fashion_mnist_normalised("test")
        reference = teacher.eval()
        points.append(SweepPoint(None, accuracy(reference, *test).top1, 1.0, 1.0,
                                 32.0 * sum(p.numel() for p in reference.parameters()),
                                 state_dict_bits(reference.state_dict()), 0, 0.0, inputs="given teacher"))
    else:
        data = fashion_mnist_splits(limit=limit)
        test = data.test
        if fp32:
            reference, point = train_fp32(data, train_config, progress=progress)
            points.append(point)
    if config is None:
        config = SelfCompressConfig(init_bits=2.0 if init == "scratch" else 8.0, init_exponent=None)
    if distill is None:
        training, schedule = TrainingSet.labelled(data), train_config
    else:
        training = synthetic_set(reference, distill, progress=progress, augment=augment)
        schedule = distill_schedule(train_config, distill)
    for gamma in gammas:
        out = out_dir / f"gamma-{gamma:g}.b2s" if out_dir is not None else None
        _, point = train_selfcompressed(training, test, TrainConfig(**{**schedule.__dict__, "gamma": gamma}), config,
                                        init=reference if init == "fp32" else None, out=out, progress=progress,
                                        max_shard_size=max_shard_size)
        points.append(point)
    return points, reference


def distill_schedule(train_config: TrainConfig, distill: DistillConfig) -> TrainConfig:
    """train_config with the distillation's step budget, learning rate and time budget."""
    return TrainConfig(**{**train_config.__dict__, "steps": distill.steps, "lr": distill.lr,
                          "max_seconds": distill.max_seconds})


def load_teacher(path: Path) -> FashionCNN:
    """The recipe's CNN with the trained weights of the safetensors state dict at `path` (as
    `safetensors.torch.save_file(model.state_dict(), path)` writes it), in eval mode."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise Big2SmallError(f"{path}: no such teacher file")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise Big2SmallError(f"{path}: not a safetensors state dict ({exc})") from None
    model = fashion_cnn()
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise Big2SmallError(f"{path}: not a state dict of the recipe's FashionCNN (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}, wrong shapes {wrong[:3]})")
    model.load_state_dict(state)
    return model.eval()
