"""Quantisation-aware distillation: what a codec stores, trained against the original model on
synthetic inputs (docs/distillation.md#quantisation-aware-distillation).

After compress() has encoded a model, each tensor whose codec can be trained (`Generator.trains`)
becomes, in a copy of the model, a function of what its codec trains (`Generator.train_start`):
W = train_weight(the original weights, the record, the trained values, and what training does not
change, decoded once before the first step: `Generator.train_cache`), with every rounding to the
stored form passing gradients straight through (LSQ, Esser et al. 2020). Uniform, hyper and trellis
train their scales (s = s0 * exp(g), one gain g per group, so that the learning rate is
relative; the codes re-chosen with them, trellis's kept); the INR trains its SIRENs' parameters,
its mean and spread and its outlier values (generators.inr). Everything is trained by the
distillation loop (big2small.distill.loop) against the original model on its synthetic inputs,
optionally with the weight error as a regulariser (`DistillConfig.weight_loss`). At the end each
tensor is stored with what was trained (`Generator.train_encode`): the same codec, config and stored
bits, and what it decodes to is what the trained student computed: exactly, except for a rotated
trellis, whose cached table values have the rotation undone before the scaling (up to fp32 rounding,
a relative 1e-7; generators.trellis `train_weight`).

With `DistillConfig.train_vectors`, the one-dimensional tensors stored raw (normalisation gains,
biases) are trained too, by the same path: the raw codec trains its values, rounded to their storage
dtype (generators.raw), so the stored bits stay the same.

Tensors tied to another (an embedding shared with the LM head) are not trained.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from big2small.distill.config import DistillConfig
from big2small.distill.datafree import distill_student
from big2small.distill.loop import DistillReport, distill
from big2small.distill.loss import loss_for
from big2small.errors import Big2SmallError
from big2small.generators import Encoded, decode, generator_for


class TrainedCodec(nn.Module):
    """A parametrisation of one weight by what its codec trains: forward() is the weight the
    record stored with the current values decodes to (the weight's own value is not read)."""

    def __init__(self, enc: Encoded, weight: torch.Tensor):
        super().__init__()
        self.generator, self.enc, self.dtype = generator_for(enc.config), enc, weight.dtype
        self.register_buffer("matrix", self.generator.codec_input(weight, enc))  # the original, in the codec's domain
        self.params = nn.ParameterDict({k: nn.Parameter(v) for k, v in self.generator.train_start(self.matrix, enc).items()})
        self.cached = list(self.generator.train_cache(self.matrix, enc).items())  # what the steps share (Generator.train_cache)
        for key, value in self.cached:
            self.register_buffer(f"cache_{key}", value, persistent=False)
        self.original: torch.Tensor | None = None  # the original's matrix view, for weight_error (made when first asked)

    def forward(self, _weight: torch.Tensor) -> torch.Tensor:
        cache = {key: getattr(self, f"cache_{key}") for key, _ in self.cached}
        matrix = self.generator.train_weight(self.matrix, self.enc, dict(self.params), cache)
        self.last = matrix  # for weight_error: the weight loss reads what this step computed
        return self.enc.layout.from_matrix(matrix).to(self.dtype)

    def weight_error(self) -> torch.Tensor:
        """||W - W0||^2 / ||W0||^2 of the weight the last forward() computed, against the original
        (matrix views; the codec's domain has the same norms: its transforms, rotations, keep them)."""
        if self.original is None:
            self.original = self.generator.weight_domain(self.matrix, self.enc)
        return (self.last - self.original).pow(2).sum() / self.matrix.pow(2).sum().clamp_min(1e-30)

    @torch.no_grad()
    def retrained(self) -> Encoded:
        """The tensor stored with the trained values; refused if its stored bits changed."""
        enc = self.generator.train_encode(self.matrix, self.enc, dict(self.params))
        type(self.generator).check_stored(enc)
        if enc.total_bits != self.enc.total_bits:
            raise Big2SmallError(f"internal: re-encoding changed {enc.method}'s stored bits; please report")
        return enc


def nothing_to_train(methods: list[str]) -> Big2SmallError:
    """The error for a model whose compressed tensors (stored by `methods`) have nothing to train."""
    return Big2SmallError("distillation trains the scales of uniform, hyper or trellis codes or the INR's SIRENs "
                          f"(not shared between layers); this model's compressed tensors use "
                          f"{', '.join(sorted(set(methods))) or 'none'}")


def trainable(tensors: dict[str, Encoded], aliases: dict[str, str], *, vectors: bool = False) -> list[str]:
    """The stored tensors distillation can train: a codec that trains their config, not tied; the
    compressed tensors, and with `vectors` the one-dimensional floating tensors stored raw too
    (normalisation gains, biases: DistillConfig.train_vectors)."""
    tied = set(aliases.values())

    def wanted(enc: Encoded) -> bool:
        return enc.compressed or (vectors and len(enc.layout.shape) == 1 and enc.dtype.is_floating_point)

    return [name for name, enc in tensors.items()
            if wanted(enc) and type(generator_for(enc.config)).trains(enc.config) and name not in tied]


def student_of(model: nn.Module, tensors: dict[str, Encoded], names: list[str]) -> tuple[nn.Module, dict[str, TrainedCodec]]:
    """A copy of `model` (whose weights `tensors` encode) holding the decoded tensors, with the
    tensors `names` parametrised by what their codecs train, the only parameters that require gradients."""
    student = copy.deepcopy(model)
    student.requires_grad_(False)
    own = student.state_dict()
    with torch.no_grad():
        for name, enc in tensors.items():
            if name not in names and name in own:
                own[name].copy_(decode(enc).to(own[name].dtype))
    modules = dict(student.named_modules())
    trained: dict[str, TrainedCodec] = {}
    for name in names:
        module_name, _, attr = name.rpartition(".")
        module = modules.get(module_name)
        weight = getattr(module, attr, None) if module is not None else None
        if not isinstance(weight, torch.Tensor):
            raise Big2SmallError(f"{name}: not a tensor of the model being distilled")
        trained[name] = TrainedCodec(tensors[name], weight.detach())
        with torch.no_grad():
            getattr(module, attr).data = torch.empty(0, dtype=weight.dtype)  # never read: free it
        parametrize.register_parametrization(module, attr, trained[name], unsafe=True)
    return student, trained


def distill_codecs(teacher: nn.Module, model: nn.Module, tensors: dict[str, Encoded], aliases: dict[str, str], *,
                   task: str, tokenizer: Any = None, config: DistillConfig, example_input: Any = None,
                   use_cache: bool = True, progress: bool = True, inputs: dict[str, torch.Tensor] | None = None,
                   ) -> tuple[dict[str, Encoded], DistillReport]:
    """Train what the codecs of the trainable tensors of `tensors` (the encoded weights of `model`)
    store against `teacher` on its synthetic inputs (or on `inputs`, shaped like them: e.g. real
    text, which is then not data-free), with `config.weight_loss` times the mean relative weight
    error added to the loss; returns the tensors stored with what was trained (the others
    unchanged) and what distillation did."""
    names = trainable(tensors, aliases, vectors=config.train_vectors)
    if not any(tensors[name].compressed for name in names):
        raise nothing_to_train([enc.method for enc in tensors.values() if enc.compressed])
    student, trained = student_of(model, tensors, names)

    def weight_loss() -> torch.Tensor:
        return torch.stack([codec.weight_error() for codec in trained.values()]).mean()

    regulariser = weight_loss if config.weight_loss else None
    groups = None
    if config.vector_lr is not None:  # the raw vectors (train_vectors) at their own learning rate
        vectors = [p for codec in trained.values() if not codec.enc.compressed for p in codec.params.values()]
        own = {id(p) for p in vectors}
        groups = [{"params": [p for p in student.parameters() if p.requires_grad and id(p) not in own]},
                  *([{"params": vectors, "lr": config.vector_lr}] if vectors else [])]
    if inputs is None:
        report = distill_student(teacher, student, task=task, tokenizer=tokenizer, config=config,
                                 example_input=example_input, use_cache=use_cache, progress=progress,
                                 regulariser=regulariser, groups=groups)
    else:
        report = distill(teacher, student, inputs, loss_for(task), config, progress=progress, regulariser=regulariser,
                         groups=groups)
    kinds: dict[str, int] = {}
    for codec in trained.values():
        kinds[codec.generator.trainable] = kinds.get(codec.generator.trainable, 0) + 1
    report.trained = "; ".join(f"{kind} of {n} tensors" for kind, n in kinds.items())
    return {name: trained[name].retrained() if name in trained else enc for name, enc in tensors.items()}, report
