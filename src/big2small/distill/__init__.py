"""Data-free distillation (docs/distillation.md): the teacher makes its own inputs (text it samples,
text another model samples, or images inverted from its BatchNorm statistics), cached on disk, and
a compressed student is trained to reproduce the teacher's outputs on them."""

from big2small.distill.config import DistillConfig
from big2small.distill.datafree import distill_student
from big2small.distill.loop import DistillReport, distill
from big2small.distill.loss import loss_for
from big2small.distill.synthetic import resolve_source, synthetic_inputs

__all__ = ["DistillConfig", "DistillReport", "distill", "distill_student", "loss_for", "resolve_source",
           "synthetic_inputs"]
