"""How much each tensor's weight error costs at the model's output, measured without data.

For a small isotropic perturbation of tensor i with variance v per weight, the expected divergence
of the output is (1/2) v tr(F_i), where F_i is the block of the output's Fisher information
(Gauss-Newton for real-valued outputs) that belongs to tensor i. tr(F_i) is estimated from the
squared gradients of a loss whose labels the model samples itself (Task.probe_loss), on inputs the
model's task makes without data (Task.probe_inputs: for causal LMs, text the model writes). A
codec whose relative squared error on tensor i is r then costs about

    a_i * r,   a_i = (1/2) mean(W_i^2) tr(F_i) / outputs      (nats per output for likelihoods)

which is the additive error model that bit allocation minimises (HIGGS's linearity).
"""

from __future__ import annotations

import torch
from torch import nn

from big2small.models.tasks import Task
from big2small.progress import progress_bar


def output_sensitivity(model: nn.Module, task: Task, names: list[str], *, count: int, length: int,
                       seed: int = 0, progress: bool = False) -> dict[str, float]:
    """a_i for each parameter in `names` (state_dict names; tied ones share a parameter): the
    expected output divergence per unit of relative squared weight error, per output (for LMs, in
    nats per token), averaged over `count` probe inputs of `length` tokens."""
    params = dict(model.named_parameters(remove_duplicate=False))
    targets = {name: params[name] for name in names}
    generator = torch.Generator().manual_seed(seed + 1)  # the labels and projections the loss draws
    was_training = model.training
    requires = {id(p): p.requires_grad for p in model.parameters()}
    model.eval()
    try:
        inputs = task.probe_inputs(model, count, length, seed)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in targets.values():
            p.requires_grad_(True)
        unique = list({id(p): p for p in targets.values()}.values())
        squared = {id(p): torch.zeros((), dtype=torch.float64) for p in unique}
        outputs = 0
        # The gradients are the measurement, whatever grad mode the caller runs in.
        with progress_bar("sensitivity", total=len(inputs), enabled=progress) as advance, torch.enable_grad():
            for example in inputs:
                for p in unique:
                    p.grad = None
                loss, n = task.probe_loss(model, example, generator)
                loss.backward()
                outputs += n
                for p in unique:  # a tied parameter once: its gradient already sums both uses
                    if p.grad is not None:
                        squared[id(p)] += p.grad.double().pow(2).sum().cpu()
                advance(1)
    finally:
        for p in model.parameters():
            p.grad = None
            p.requires_grad_(requires[id(p)])
        model.train(was_training)
    return {name: float(0.5 * p.detach().double().pow(2).mean() * squared[id(p)] / max(outputs, 1))
            for name, p in targets.items()}
