"""The distillation loss of each task: what the student must reproduce of the teacher's output
(docs/distillation.md#losses). Every loss is 0 when the student's output equals the teacher's.

- causal LMs and classifiers: KL(teacher || student) of the next-token or class distributions,
  in nats, averaged over real tokens (or inputs);
- encoders: 1 - cosine of the mean-pooled sentence embeddings (what the encoder is used for) plus
  the mean squared error of every token's last hidden state relative to the teacher's mean square
  (so that the token-level geometry, not only the mean, is kept).

Beside the output loss, DistillConfig.hidden_weight adds `hidden_state_loss`: the residual stream
after every block, student against teacher (outputs of a forward with output_hidden_states=True),
so that each block is pulled back towards its teacher, not only the last one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from big2small.errors import Big2SmallError

LossFn = Callable[[Any, Any, dict[str, torch.Tensor]], torch.Tensor]


def _tensor(output: Any, attribute: str) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return getattr(output, attribute) if hasattr(output, attribute) else output[0]


def logit_kl(teacher_out: Any, student_out: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """KL(teacher || student) in nats per position (per token where an attention mask is given)."""
    t = F.log_softmax(_tensor(teacher_out, "logits").float(), -1)
    s = F.log_softmax(_tensor(student_out, "logits").float(), -1)
    per_position = (t.exp() * (t - s)).sum(-1)
    mask = inputs.get("attention_mask")
    if mask is None or per_position.ndim != mask.ndim:
        return per_position.mean()
    mask = mask.to(per_position.dtype)
    return (per_position * mask).sum() / mask.sum().clamp_min(1)


def embedding_loss(teacher_out: Any, student_out: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """1 - cosine of mean-pooled embeddings + hidden-state MSE / the teacher's mean square."""
    t = _tensor(teacher_out, "last_hidden_state").float()
    s = _tensor(student_out, "last_hidden_state").float()
    mask = inputs.get("attention_mask", torch.ones(t.shape[:2], device=t.device)).unsqueeze(-1).to(t.dtype)
    count = mask.sum(1).clamp_min(1e-9)
    cosine = F.cosine_similarity((t * mask).sum(1) / count, (s * mask).sum(1) / count, dim=-1)
    tokens = mask.sum().clamp_min(1) * t.shape[-1]
    mse = ((s - t).pow(2) * mask).sum() / tokens
    return (1 - cosine).mean() + mse / ((t.pow(2) * mask).sum() / tokens).clamp_min(1e-12)


def hidden_state_loss(teacher_out: Any, student_out: Any, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per block after the embeddings: the squared error of the student's hidden states (over real
    tokens) relative to the teacher's mean square, averaged over blocks (dimensionless; 0 when
    they are equal). Both outputs need `hidden_states` (a forward with output_hidden_states=True)."""
    t_states, s_states = getattr(teacher_out, "hidden_states", None), getattr(student_out, "hidden_states", None)
    if t_states is None or s_states is None:
        raise Big2SmallError("the hidden-state loss needs the models' hidden states (output_hidden_states=True)")
    if len(t_states) != len(s_states) or t_states[-1].shape != s_states[-1].shape:
        raise Big2SmallError(f"the hidden-state loss needs as many blocks of the same width in student and teacher; "
                             f"got {len(s_states) - 1} and {len(t_states) - 1}")
    t = torch.stack(t_states[1:]).float()  # [blocks, B, T, D]
    s = torch.stack(s_states[1:]).float()
    mask = inputs.get("attention_mask", torch.ones(t.shape[1:3], device=t.device)).to(t.dtype)[None, :, :, None]
    error = ((s - t).pow(2) * mask).sum((1, 2, 3))
    scale = (t.pow(2) * mask).sum((1, 2, 3)).clamp_min(1e-12)
    return (error / scale).mean()


LOSSES: dict[str, LossFn] = {"causal-lm": logit_kl, "encoder": embedding_loss, "image-classifier": logit_kl,
                             "fashion-mnist-classifier": logit_kl, "text-classifier": logit_kl}


def loss_for(task: str) -> LossFn:
    """The distillation loss of a task name (big2small.models.tasks)."""
    if task not in LOSSES:
        raise Big2SmallError(f"no distillation loss for task {task!r} (known: {', '.join(sorted(LOSSES))})")
    return LOSSES[task]
