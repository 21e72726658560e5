"""DistillConfig: every knob of data-free distillation (docs/distillation.md), a typed, versioned
config (big2small.config) that round-trips through JSON and refuses unknown keys."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from big2small.config import Config
from big2small.errors import Big2SmallError

# Where a task's synthetic inputs come from (big2small.distill.synthetic):
# "auto": the task's own route (self-sampled text for causal LMs, text sampled from SmolLM2 and
# re-tokenised for encoders, BatchNorm inversion for CNNs); "self": the teacher samples its own
# text; "smollm2": text sampled by SmolLM2, re-tokenised for the teacher; "random": uniform random
# tokens; "inversion": images optimised to match the teacher's BatchNorm statistics.
SOURCES = ("auto", "self", "smollm2", "random", "inversion")
SCHEDULES = ("constant", "cosine")  # DistillConfig.schedule: the learning rate over the steps


@dataclass
class DistillConfig(Config):
    """How to distil a student from its teacher without data.

    steps: optimiser steps (AdamW); max_seconds: stop earlier once this wall time (seconds) of
        training has passed (None: no time budget).
    samples: synthetic inputs generated (and cached); held_out: how many of them are kept aside to
        measure the distillation loss before and after (never trained on).
    seq_len: tokens per synthetic text sequence (start token included).
    batch_size: inputs per step; lr: AdamW learning rate (its peak under a schedule); weight_decay: AdamW's.
    hidden_weight: text models only: this times the per-block hidden-state loss (normalised MSE
        of the student's residual stream after every block against the teacher's, averaged over
        blocks: distill.loss.hidden_state_loss) is added to the task's loss (0: output loss alone).
    seed: seeds the synthetic inputs and the batch order.
    source: where the inputs come from (SOURCES above).
    greedy_tokens: text sampling schedule: after a first token drawn from the model's own
        distribution, this many tokens are its top-1 choice, then the rest are sampled at
        `temperature` (LLM-QAT's schedule: varied starts, fluent continuations).
    temperature: softmax temperature of the sampled tokens (and of the logit KL loss: 1).
    inversion_steps, inversion_lr: BatchNorm inversion's optimisation of each batch of images.
    image_size: side of the synthetic images (pixels; None: the task's example input's).
    weight_loss: compress --distill only: this times the mean relative squared weight error
        (||W - W0||^2 / ||W0||^2 per trained tensor) is added to the distillation loss (0: none).
    train_vectors: compress --distill only: also train the one-dimensional floating tensors stored
        raw (normalisation gains, biases), rounded to their storage dtype as stored: no bits added.
    vector_lr: with train_vectors, the AdamW learning rate of those raw vectors (an absolute step on
        values near 1, where lr is a relative one on the scales: they need a smaller one; None: lr).
    schedule: the learning rate over the steps: "constant" (lr throughout) or "cosine" (lr times
        half a cosine, from 1 after the warm-up to 0 at the last of `steps`).
    warmup_steps: the first this many steps ramp the learning rate linearly up to lr (0: none).
    """

    version: ClassVar[int] = 1
    steps: int = 100
    max_seconds: float | None = None
    samples: int = 64
    held_out: int = 8
    seq_len: int = 128
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 0.0
    hidden_weight: float = 0.0
    seed: int = 0
    source: str = "auto"
    greedy_tokens: int = 4
    temperature: float = 1.0
    inversion_steps: int = 200
    inversion_lr: float = 0.1
    image_size: int | None = None
    weight_loss: float = 0.0
    train_vectors: bool = False
    vector_lr: float | None = None
    schedule: str = "constant"
    warmup_steps: int = 0

    def validate(self) -> None:
        if self.steps < 0 or self.samples < 1 or self.held_out < 0 or self.held_out >= self.samples:
            raise Big2SmallError(f"distillation needs steps >= 0 and 0 <= held_out < samples; got steps={self.steps}, "
                                 f"samples={self.samples}, held_out={self.held_out}")
        if self.seq_len < 2 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise Big2SmallError("distillation needs seq_len >= 2, batch_size >= 1, lr > 0 and weight_decay >= 0")
        if self.max_seconds is not None and self.max_seconds <= 0:
            raise Big2SmallError(f"max_seconds must be > 0, got {self.max_seconds}")
        if not (isinstance(self.hidden_weight, (int, float)) and 0 <= self.hidden_weight < float("inf")):
            raise Big2SmallError(f"hidden_weight must be a number >= 0, got {self.hidden_weight!r}")
        if self.source not in SOURCES:
            raise Big2SmallError(f"source must be one of {', '.join(SOURCES)}; got {self.source!r}")
        if self.greedy_tokens < 0 or self.temperature <= 0 or self.inversion_steps < 0 or self.inversion_lr <= 0:
            raise Big2SmallError("greedy_tokens and inversion_steps must be >= 0, temperature and inversion_lr > 0")
        if not (isinstance(self.weight_loss, (int, float)) and 0 <= self.weight_loss < float("inf")):
            raise Big2SmallError(f"weight_loss must be a number >= 0, got {self.weight_loss!r}")
        if not isinstance(self.train_vectors, bool):
            raise Big2SmallError(f"train_vectors must be true or false, got {self.train_vectors!r}")
        if self.vector_lr is not None and not self.vector_lr > 0:
            raise Big2SmallError(f"vector_lr must be > 0 (or None: lr), got {self.vector_lr}")
        if self.schedule not in SCHEDULES:
            raise Big2SmallError(f"schedule must be one of {', '.join(SCHEDULES)}; got {self.schedule!r}")
        if self.warmup_steps < 0:
            raise Big2SmallError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.image_size is not None and self.image_size < 1:
            raise Big2SmallError(f"image_size must be >= 1, got {self.image_size}")
