"""Classifier evaluation: logits, top-1 accuracy, and label-free agreement (docs/evaluation.md#classifiers).

Models run in eval mode (BatchNorm uses running statistics) under ``torch.inference_mode``, with
no test-time augmentation; inputs must already carry the checkpoint's own preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from big2small.errors import Big2SmallError

__all__ = ["AccuracyResult", "AgreementResult", "accuracy", "agreement", "logits_of"]


@dataclass(frozen=True)
class AccuracyResult:
    """Top-1 accuracy as a fraction in [0, 1] over ``n`` labelled inputs."""

    top1: float
    n: int
    protocol: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: the figure and its protocol."""
        return (
            f"top-1 accuracy {100 * self.top1:.2f}% on {self.n} inputs "
            f"(data {self.protocol.get('data')}, {self.protocol.get('mode')})"
        )


@dataclass(frozen=True)
class AgreementResult:
    """Label-free fidelity of a candidate classifier to a reference one.

    top1_agreement: fraction of inputs, in [0, 1], whose argmax classes match.
    kl_mean: KL(reference || candidate) of the softmax distributions in nats, averaged over
    inputs.
    """

    top1_agreement: float
    kl_mean: float
    n: int
    protocol: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: the figure and its protocol."""
        return (
            f"top-1 agreement {100 * self.top1_agreement:.2f}%, KL(ref||cand) "
            f"{self.kl_mean:.5f} nats over {self.n} inputs (data {self.protocol.get('data')})"
        )


def logits_of(model: torch.nn.Module, inputs: Tensor, batch_size: int = 256) -> Tensor:
    """Run ``model`` over ``inputs`` in batches and return its outputs.

    Args:
        model: a classifier mapping ``[B, ...]`` to logits ``[B, C]`` (a tensor, a tuple, or an
            object with ``.logits``). Run in eval mode on its own device; its training flag is
            restored afterwards.
        inputs: ``[N, ...]`` preprocessed inputs (any device; moved batch by batch).
        batch_size: inputs per forward pass.

    Returns:
        float32 logits ``[N, C]`` on the CPU.
    """
    if inputs.shape[0] == 0:
        raise Big2SmallError("logits_of: no inputs given")
    try:
        device = next(model.parameters()).device
    except StopIteration:  # a parameter-free model: run where the inputs are
        device = inputs.device
    chunks = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, inputs.shape[0], batch_size):
                out = model(inputs[start : start + batch_size].to(device))
                if not isinstance(out, Tensor):
                    out = out.logits if hasattr(out, "logits") else out[0]
                chunks.append(out.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def accuracy(
    model: torch.nn.Module,
    inputs: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 256,
    data: str | dict | None = None,
) -> AccuracyResult:
    """Top-1 accuracy of ``model`` on labelled inputs.

    Args:
        model: the classifier (see :func:`logits_of`).
        inputs: ``[N, ...]`` preprocessed inputs.
        labels: int ``[N]`` class ids.
        batch_size: inputs per forward pass.
        data: a description of the inputs (name, split, preprocessing) stored in the protocol.

    Returns:
        :class:`AccuracyResult` with ``top1`` as a fraction in [0, 1].
    """
    if labels.shape != inputs.shape[:1]:
        raise Big2SmallError(
            f"accuracy: {inputs.shape[0]} inputs but labels of shape {tuple(labels.shape)}"
        )
    logits = logits_of(model, inputs, batch_size)
    correct = (logits.argmax(dim=1) == labels.cpu()).sum()
    n = int(labels.shape[0])
    protocol = {
        "metric": "top1_accuracy",
        "data": data if data is not None else "unspecified",
        "n": n,
        "mode": "eval mode, no test-time augmentation",
        "batch_size": batch_size,
    }
    return AccuracyResult(top1=float(correct) / n, n=n, protocol=protocol)


def agreement(
    reference_logits: Tensor, logits: Tensor, *, data: str | dict | None = None
) -> AgreementResult:
    """Top-1 agreement and KL divergence of candidate logits from reference logits.

    Args:
        reference_logits: ``[N, C]`` logits of the uncompressed model.
        logits: ``[N, C]`` logits of the candidate on the same inputs.
        data: a description of the inputs, stored in the protocol (e.g.
            :func:`big2small.evaluate.data.photo_crops_protocol`).

    Returns:
        :class:`AgreementResult`: ``top1_agreement`` in [0, 1] and ``kl_mean`` =
        mean over inputs of KL(softmax(ref) || softmax(cand)) in nats, computed in float64.
    """
    if reference_logits.shape != logits.shape or logits.ndim != 2:
        raise Big2SmallError(
            f"agreement needs two [N, C] logit tensors of the same shape, got "
            f"{tuple(reference_logits.shape)} and {tuple(logits.shape)}"
        )
    ref_logp = F.log_softmax(reference_logits.double(), dim=1)
    cand_logp = F.log_softmax(logits.double(), dim=1)
    # KL(ref || cand) = sum_c p_ref (log p_ref - log p_cand); kl_div takes (input=cand, target=ref).
    kl = F.kl_div(cand_logp, ref_logp, log_target=True, reduction="none").sum(dim=1)
    agree = (reference_logits.argmax(dim=1) == logits.argmax(dim=1)).double().mean()
    n = int(logits.shape[0])
    protocol = {
        "metric": "agreement",
        "data": data if data is not None else "unspecified",
        "n": n,
        "classes": int(logits.shape[1]),
        "kl": "KL(reference || candidate) of softmax, nats, float64, mean over inputs",
    }
    return AgreementResult(
        top1_agreement=float(agree), kl_mean=float(kl.mean()), n=n, protocol=protocol
    )
