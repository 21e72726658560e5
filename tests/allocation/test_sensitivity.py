"""Output sensitivity: the Fisher-trace prediction matches the divergence that noise of the same
relative size causes, and a tensor the output ignores costs nothing."""

import pytest
import torch

from big2small.allocation.sensitivity import output_sensitivity
from big2small.models.tasks import get_task
from tiny_models import tiny_llama

NAMES = ["model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.v_proj.weight", "model.embed_tokens.weight"]


@torch.no_grad()
def _measured_divergence(model, task, name, relative, inputs, draws=6):
    """Mean KL(original || perturbed) per token when `name` gets Gaussian noise of relative MSE `relative`."""
    param = dict(model.named_parameters())[name]
    original = param.detach().clone()
    ids = torch.cat([x["input_ids"] for x in inputs])
    ref = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    generator = torch.Generator().manual_seed(1)
    total = 0.0
    for _ in range(draws):
        noise = torch.randn(param.shape, generator=generator) * (relative * original.pow(2).mean()).sqrt()
        param.copy_(original + noise)
        out = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
        total += float((ref.exp() * (ref - out)).sum(-1).mean())
        param.copy_(original)
    return total / draws


def test_prediction_matches_noise_injection():
    model = tiny_llama()
    task = get_task("causal-lm")
    predicted = output_sensitivity(model, task, NAMES, count=48, length=16, seed=0)
    inputs = task.probe_inputs(model, 16, 16, seed=5)
    for name in NAMES:
        measured = _measured_divergence(model, task, name, 1e-2, inputs) / 1e-2
        assert predicted[name] == pytest.approx(measured, rel=0.5), name


def test_a_tensor_the_output_ignores_costs_nothing():
    model = tiny_llama()
    with torch.no_grad():  # layer 1's MLP output is multiplied by zero: its input weights cannot matter
        model.model.layers[1].mlp.down_proj.weight.zero_()
    s = output_sensitivity(model, get_task("causal-lm"), ["model.layers.1.mlp.up_proj.weight", NAMES[0]], count=4, length=8)
    assert s["model.layers.1.mlp.up_proj.weight"] == 0.0
    assert s[NAMES[0]] > 0


def test_same_seed_same_sensitivities_and_the_model_is_left_as_it_was():
    model = tiny_llama()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    a = output_sensitivity(model, get_task("causal-lm"), NAMES, count=4, length=8, seed=3)
    b = output_sensitivity(model, get_task("causal-lm"), NAMES, count=4, length=8, seed=3)
    assert a == b
    assert all(p.grad is None and torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert not model.training


def test_the_caller_s_no_grad_mode_changes_nothing():
    model = tiny_llama()
    free = output_sensitivity(model, get_task("causal-lm"), NAMES, count=2, length=8, seed=3)
    with torch.no_grad():
        inside = output_sensitivity(model, get_task("causal-lm"), NAMES, count=2, length=8, seed=3)
    assert inside == free and all(v > 0 for v in inside.values())
