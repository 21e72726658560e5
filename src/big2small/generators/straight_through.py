"""Straight-through gradients: the value of a quantised tensor, the gradient of the tensor it was
quantised from (Bengio et al., 2013). Quantisation-aware distillation (big2small.distill.qat)
trains a codec's scales through its rounding with these.

`straight_through(x, q)` returns q exactly (not x + (q - x), which floating point need not round
back to q), so a codec's differentiable decode gives bit for bit what its decoder computes from
the codes it stores.
"""

from __future__ import annotations

import torch

FP16_MAX = 65504.0  # the largest finite float16


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, quantised: torch.Tensor) -> torch.Tensor:  # noqa: ARG004
        return quantised.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ARG004
        return grad, None


def straight_through(x: torch.Tensor, quantised: torch.Tensor) -> torch.Tensor:
    """`quantised` (computed from x without gradients), with x's gradient passed through unchanged."""
    if not x.requires_grad:
        return quantised
    return _StraightThrough.apply(x, quantised.detach())


def round_st(x: torch.Tensor) -> torch.Tensor:
    """round(x), with the gradient of x."""
    return straight_through(x, torch.round(x.detach()))


def fp16_st(x: torch.Tensor) -> torch.Tensor:
    """x rounded to float16 (returned as float32), with the gradient of x: a scale as stored."""
    return straight_through(x, x.detach().to(torch.float16).float())
