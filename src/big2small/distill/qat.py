"""Quantisation-aware distillation: the codec's scales trained against the original model on
synthetic inputs, the codes re-chosen with them (docs/distillation.md#quantisation-aware-distillation).

After compress() has encoded a model, each tensor whose codec has trainable scales (uniform,
hyper, trellis: `Generator.trainable_scales`) becomes, in a copy of the model, a function of its
scales: W = decode(codes the scales choose for the original weights, the scales), with the scales
rounded to fp16 as stored and straight-through gradients through every rounding (LSQ, Esser et
al. 2020). The scales are trained, as s = s0 * exp(g) with one gain g per group (so that the
learning rate is relative), by the distillation loop (big2small.distill.loop) against the original
model on its synthetic inputs; weights, codes, zero-points and every other array stay as the codec
chose them. At the end each tensor is re-encoded with its trained scales (`Generator.requantize`):
the same codec, config and stored bits, and what it decodes to is exactly what the trained
student computed. Trellis codes come from a Viterbi search, not a rounding: its scales are trained
with its codes kept.

Tensors tied to another (an embedding shared with the LM head) keep their scales.
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
from big2small.generators.straight_through import fp16_st

FP16_MAX = 65504.0


class TrainedScales(nn.Module):
    """A parametrisation of one weight by its codec's scales: forward() is the weight the codes
    chosen by the current scales decode to (the weight's own value is not read)."""

    def __init__(self, enc: Encoded, weight: torch.Tensor):
        super().__init__()
        self.generator, self.enc, self.dtype = generator_for(enc.config), enc, weight.dtype
        self.register_buffer("matrix", self.generator.codec_input(weight, enc))  # what the codes approximate
        self.register_buffer("initial", enc.tensors["scales"].float())
        self.log_gain = nn.Parameter(torch.zeros_like(self.initial))

    def scales(self) -> torch.Tensor:
        """The current scales, as they would be stored (fp16 values in fp32)."""
        return fp16_st((self.initial * self.log_gain.exp()).clamp(max=FP16_MAX))

    def forward(self, _weight: torch.Tensor) -> torch.Tensor:
        matrix = self.generator.fake_quantize(self.matrix, self.enc, self.scales())
        return self.enc.layout.from_matrix(self.generator.weight_domain(matrix, self.enc)).to(self.dtype)

    @torch.no_grad()
    def requantized(self) -> Encoded:
        """The tensor re-encoded with the trained scales; refused if its stored bits changed."""
        enc = self.generator.requantize(self.matrix, self.enc, self.scales())
        type(self.generator).check_stored(enc)
        if enc.total_bits != self.enc.total_bits:
            raise Big2SmallError(f"internal: re-encoding changed {enc.method}'s stored bits; please report")
        return enc


def no_scales(methods: list[str]) -> Big2SmallError:
    """The error for a model whose compressed tensors (stored by `methods`) have no scales to train."""
    return Big2SmallError("distillation trains the scales of uniform, hyper or trellis codes; this model's "
                          f"compressed tensors use {', '.join(sorted(set(methods))) or 'none'}")


def trainable(tensors: dict[str, Encoded], aliases: dict[str, str]) -> list[str]:
    """The stored tensors whose scales can be trained: a codec with trainable scales, not tied."""
    tied = set(aliases.values())
    return [name for name, enc in tensors.items()
            if enc.compressed and generator_for(enc.config).trainable_scales and name not in tied]


def student_of(model: nn.Module, tensors: dict[str, Encoded], names: list[str]) -> tuple[nn.Module, dict[str, TrainedScales]]:
    """A copy of `model` (whose weights `tensors` encode) holding the decoded tensors, with the
    tensors `names` parametrised by their scales, the only parameters that require gradients."""
    student = copy.deepcopy(model)
    student.requires_grad_(False)
    own = student.state_dict()
    with torch.no_grad():
        for name, enc in tensors.items():
            if name not in names and name in own:
                own[name].copy_(decode(enc).to(own[name].dtype))
    modules = dict(student.named_modules())
    trained: dict[str, TrainedScales] = {}
    for name in names:
        module_name, _, attr = name.rpartition(".")
        module = modules.get(module_name)
        weight = getattr(module, attr, None) if module is not None else None
        if not isinstance(weight, torch.Tensor):
            raise Big2SmallError(f"{name}: not a tensor of the model being distilled")
        trained[name] = TrainedScales(tensors[name], weight.detach())
        with torch.no_grad():
            getattr(module, attr).data = torch.empty(0, dtype=weight.dtype)  # never read: free it
        parametrize.register_parametrization(module, attr, trained[name], unsafe=True)
    return student, trained


def distill_scales(teacher: nn.Module, model: nn.Module, tensors: dict[str, Encoded], aliases: dict[str, str], *,
                   task: str, tokenizer: Any = None, config: DistillConfig, example_input: Any = None,
                   use_cache: bool = True, progress: bool = True, inputs: dict[str, torch.Tensor] | None = None,
                   ) -> tuple[dict[str, Encoded], DistillReport]:
    """Train the scales of the trainable tensors of `tensors` (the encoded weights of `model`)
    against `teacher` on its synthetic inputs (or on `inputs`, shaped like them: e.g. real text,
    which is then not data-free); returns the tensors re-encoded with them (the others unchanged)
    and what distillation did."""
    names = trainable(tensors, aliases)
    if not names:
        raise no_scales([enc.method for enc in tensors.values() if enc.compressed])
    student, trained = student_of(model, tensors, names)
    if inputs is None:
        report = distill_student(teacher, student, task=task, tokenizer=tokenizer, config=config,
                                 example_input=example_input, use_cache=use_cache, progress=progress)
    else:
        report = distill(teacher, student, inputs, loss_for(task), config, progress=progress)
    report.trained = f"scales of {len(names)} tensors"
    return {name: trained[name].requantized() if name in trained else enc for name, enc in tensors.items()}, report
