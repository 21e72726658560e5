"""A data-free repair for folded transformer MLPs (our design): refit the output columns.

Merging MLP units (averaging gate/up or fc1 rows) changes the hidden activations; summing the
output columns is exact only for identical units. Without data, we still know what the MLP's
input looks like up to its direction: the preceding RMSNorm/LayerNorm emits vectors of unit RMS
scaled by the norm's own weight (plus its bias). So we draw synthetic inputs x = g * z (+ b) with
z ~ N(0, I) and refit the merged MLP's output matrix W' by ridge regression so that
W' h'(x) matches the original W h(x) on them. The hidden units themselves are not changed.
"""

from __future__ import annotations

import torch
from torch import nn

SAMPLES_PER_UNIT = 4  # synthetic inputs per original hidden unit (the fit has k unknowns per row)
MIN_SAMPLES = 4096  # small MLPs still get enough samples not to overfit the fit
RIDGE = 1e-3  # relative to the mean diagonal of H'^T H'


def sample_count(units: int) -> int:
    """Synthetic inputs drawn to refit an MLP of `units` hidden units."""
    return max(SAMPLES_PER_UNIT * units, MIN_SAMPLES)


def synthetic_inputs(norm: nn.Module, n: int, seed: int) -> torch.Tensor:
    """[n, D]: unit-variance Gaussian vectors through the norm's own scale and shift."""
    weight = norm.weight.detach().float()
    z = torch.randn(n, weight.numel(), generator=torch.Generator().manual_seed(seed)).to(weight.device)
    x = z * weight
    bias = getattr(norm, "bias", None)
    return x + bias.detach().float() if bias is not None else x


@torch.no_grad()
def mlp_hidden(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The MLP's hidden activations: act(gate x) * (up x) for SwiGLU, act(fc1 x) otherwise."""
    if hasattr(module, "gate_proj"):
        return module.act_fn(module.gate_proj(x)) * module.up_proj(x)
    return module(x)


@torch.no_grad()
def refit_output(consumer: nn.Linear, hidden_after: torch.Tensor, target: torch.Tensor) -> None:
    """Set consumer.weight (and bias) to the ridge fit of `target` [N, O] from `hidden_after` [N, k]."""
    h = hidden_after.double()
    if consumer.bias is not None:
        h = torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype, device=h.device)], 1)
    gram = h.T @ h
    gram += RIDGE * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=h.dtype, device=h.device)
    solution = torch.linalg.solve(gram, h.T @ target.double())  # [k (+1), O]
    k = hidden_after.shape[1]
    consumer.weight.copy_(solution[:k].T.to(consumer.weight.dtype))
    if consumer.bias is not None:
        consumer.bias.copy_(solution[k].to(consumer.bias.dtype))
