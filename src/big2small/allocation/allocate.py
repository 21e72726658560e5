"""Bit allocation: given a budget of stored bits, choose each tensor's configuration so that the
predicted output error is smallest.

Each tensor i gets candidate configurations (a recipe's list, or its method's own ladder of
sizes), each with its exact stored bits and its relative squared error r (curves.py, measured on
a row sample). The predicted cost is a_i * r, with a_i from one of two objectives:

- "output": the tensor's output sensitivity (sensitivity.py; data-free probes), in nats per output;
- "weights": the tensor's squared norm, so the cost is its squared weight error (no forward pass).

A multiple-choice knapsack (knapsack.py) then picks one candidate per tensor under the budget.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from big2small.allocation.curves import method_candidates, relative_errors
from big2small.allocation.knapsack import Option, choose
from big2small.allocation.sensitivity import output_sensitivity
from big2small.allocation.config import AllocationConfig
from big2small.errors import Big2SmallError
from big2small.generators import REGISTRY, GeneratorConfig, RawConfig
from big2small.layout import MatrixLayout
from big2small.models.tasks import Task
from big2small.progress import progress_bar

@dataclass
class Allotment:
    """One tensor to allocate bits to: its name, layout, and `load`, which returns its weights
    (read when measured, one tensor at a time, so a streamed checkpoint is never held whole)."""

    name: str
    layout: MatrixLayout
    load: Callable[[], torch.Tensor]


@dataclass
class AllocationResult:
    """What the allocator chose and why: one config per tensor, the objective used, the predicted
    cost of each choice (objective's unit) and the seconds spent measuring and choosing."""

    configs: dict[str, GeneratorConfig]
    costs: dict[str, float]
    objective: str
    probe: str
    bits: int
    seconds: float


def allocate(items: list[Allotment], budget_bits: int, config: AllocationConfig, *, method: str | None,
             fixed: dict, raw_dtype: str, model: Any, task: Task, seed: int = 0,
             progress: bool = False) -> AllocationResult:
    """Choose a config for every item so that their stored bits sum to at most `budget_bits` and
    the predicted output error is smallest. `method`, `fixed`: the recipe's method and pinned
    options, whose ladder of sizes gives the candidates when config.candidates is empty. `model`:
    the model to probe for output error (a module, or a callable that loads it), or None."""
    start = time.perf_counter()
    objective = _objective(config.objective, model, task)
    options, candidates, energy = [], [], {}
    with progress_bar("error curves", total=sum(i.layout.numel for i in items), enabled=progress) as advance:
        for item in items:
            configs = _candidates(item, config, method, fixed, raw_dtype)
            matrix = item.layout.to_matrix(item.load().detach())
            errors = relative_errors(matrix, configs, max_weights=config.sample_weights, seed=seed)
            energy[item.name] = float(matrix.double().pow(2).sum())
            candidates.append(configs)
            options.append([(REGISTRY[c.method].bits_for(c, item.layout), r) for c, r in zip(configs, errors)])
            advance(item.layout.numel)
            del matrix
    if objective == "output":
        module = model if isinstance(model, nn.Module) else model()
        weight = output_sensitivity(module, task, [i.name for i in items], count=config.probe_count,
                                    length=config.probe_tokens, seed=seed, progress=progress)
    else:
        weight = energy
    knapsack = [[Option(bits, weight[i.name] * r) for bits, r in opts] for i, opts in zip(items, options)]
    picked = choose(knapsack, budget_bits)
    configs = {i.name: candidates[n][j] for n, (i, j) in enumerate(zip(items, picked))}
    costs = {i.name: knapsack[n][j].cost for n, (i, j) in enumerate(zip(items, picked))}
    bits = sum(knapsack[n][j].bits for n, j in enumerate(picked))
    probe = task.probe_source if objective == "output" else "none (weight error)"
    return AllocationResult(configs, costs, objective, probe, bits, time.perf_counter() - start)


def smallest_bits(items: list[Allotment], config: AllocationConfig, *, method: str | None, fixed: dict,
                  raw_dtype: str) -> int:
    """The fewest bits the items can take (each at its smallest candidate), without measuring."""
    return sum(min(REGISTRY[c.method].bits_for(c, i.layout) for c in _candidates(i, config, method, fixed, raw_dtype))
               for i in items)


def _objective(asked: str, model: Any, task: Task) -> str:
    """The objective used: "auto" is output error only for a model already in memory whose task
    has a data-free probe (a streamed checkpoint would have to be loaded whole for it)."""
    if asked == "auto":
        return "output" if isinstance(model, nn.Module) and task.probe_source else "weights"
    if asked == "output":
        if not callable(model):  # a module, or a loader of one
            why = "a bare state_dict has no forward pass"
        elif not task.probe_source:
            why = f"a {task.name} model has no data-free probe"
        else:
            return asked
        raise Big2SmallError(f"allocation by output error is impossible here ({why}); use --allocate weights")
    return asked


def _candidates(item: Allotment, config: AllocationConfig, method: str | None, fixed: dict,
                raw_dtype: str) -> list[GeneratorConfig]:
    if config.candidates:
        found = list(config.candidates)
    elif method is not None:
        found = method_candidates(method, item.layout, fixed)
    else:
        raise Big2SmallError("allocation needs candidates or a method")
    if config.keep_candidate and raw_dtype != "same":
        found.append(RawConfig(dtype=raw_dtype))
    if not found:
        raise Big2SmallError(f"{item.name}: no configuration of {method} fits any budget")
    return found


def describe(config: GeneratorConfig) -> str:
    """A short label: 'trellis 3 bits', 'uniform 4 bits g64', 'kept float16'."""
    if isinstance(config, RawConfig):
        return f"kept {config.dtype}"
    label = config.method
    if config.bits_option == "bits":
        label += f" {getattr(config, 'bits')} bits"
    group = getattr(config, "group_size", None)
    if group is not None:
        label += f" g{group}" if group else " per row"
    return label
