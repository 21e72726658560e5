"""Removing a self-compressed model's dead channels (docs/self-compression.md#removing-dead-channels)
with the coupling graph and the select step that folding and pruning use (big2small.transforms).

A unit of a coupling group goes when it is dead in every layer that writes it (all its weight rows
are 0: then each of those layers emits only its bias there) or when every consumer ignores it (all
its input columns are 0). What a dead unit still emits, a constant, is pushed through the group
(BatchNorm, activations, residual adds, gates) and folded into the consumers' biases first.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from big2small.transforms import CouplingGroup, constant_inputs, find_groups, named_tensor, select

log = logging.getLogger(__name__)


@torch.no_grad()
def remove_dead_channels(model: nn.Module, scales: dict[str, torch.Tensor]) -> dict[str, str]:
    """Narrow every coupling group of `model` (in eval mode, in place) by its dead and unused units;
    the per-channel `scales` [rows] of the quantised layers are sliced alike. Returns the groups
    that keep such units, with the reason (group name -> why; layer name -> why for a model
    without groups)."""
    report = find_groups(model)
    modules = dict(model.named_modules())
    if not report.groups:
        why = "; ".join(report.refused.values()) or "it has no coupling groups"
        return {n: why for n in scales if bool(_zero_rows(modules[n].weight, modules[n].weight.shape[0]).any())}
    unremovable = {}
    changed = True
    while changed:
        changed = False
        for group in report.groups:
            removable, why = _removable(modules, group)
            if why:
                unremovable[group.name] = why
            keep = ~removable
            if not bool(keep.any()):
                keep[0] = True  # a layer keeps one channel so that the network still has a shape
            if group.narrowable and not bool(keep.all()):
                _narrow(model, modules, group, keep, scales)
                changed = True
    return unremovable


def _removable(modules: dict[str, nn.Module], group: CouplingGroup) -> tuple[torch.Tensor, str | None]:
    """[size]: the units that can go (dead in every source, or unused by every consumer), and why
    units dead in some source stay (None when none do)."""
    n = group.size
    dead_in = {s: _zero_rows(modules[s].weight, n) for s in group.sources}
    dead = torch.stack(list(dead_in.values())).all(0)
    unused = torch.zeros_like(dead)
    if group.consumers():
        unused = torch.stack([_zero_columns(named_tensor(modules, m.param), n) for m in group.consumers()]).all(0)
    if not group.narrowable:
        return torch.zeros_like(dead), group.reason if bool(torch.stack([*dead_in.values(), unused]).any()) else None
    unknown_constant = group.trace is None and any(modules[s].bias is not None for s in group.sources)
    removable = unused if unknown_constant else unused | dead
    stuck = [s for s, d in dead_in.items() if bool((d & ~removable).any())]
    if not stuck:
        return removable, None
    if unknown_constant:  # a transformer unit emits its biases; only a consumer can ignore them
        return removable, "its dead units emit their layers' biases, and only a traced graph (torch.fx) says where they go"
    return removable, (f"its channels dead in {', '.join(stuck)} are live in another layer writing them "
                       f"({', '.join(group.sources)}); a channel goes only when it is dead in every layer that writes it")


def _narrow(model: nn.Module, modules: dict[str, nn.Module], group: CouplingGroup, keep: torch.Tensor,
            scales: dict[str, torch.Tensor]) -> None:
    """Select the `keep` [size] units, folding what the others emit into the consumers' biases."""
    constants = None  # a transformer unit without biases emits 0; an unused one is read by nobody
    if group.trace is not None:
        values = {s: (modules[s].bias if modules[s].bias is not None else modules[s].weight.new_zeros(group.size)).detach()
                  for s in group.sources}
        constants = constant_inputs(model, group, values)
        _warn_if_padded(modules, group, constants, ~keep)
    rows = {m.param.rpartition(".")[0]: keep.repeat_interleave(named_tensor(modules, m.param).shape[0] // group.size)
            for m in group.producers() if m.param.endswith(".weight")}
    select(model, group, keep, constants)
    for layer, kept_rows in rows.items():
        if layer in scales:
            scales[layer] = scales[layer][kept_rows.to(scales[layer].device)]


def _zero_rows(weight: torch.Tensor, units: int) -> torch.Tensor:
    """[units]: whether all of a unit's rows are 0."""
    return (weight.reshape(units, -1) == 0).all(1)


def _zero_columns(weight: torch.Tensor, units: int) -> torch.Tensor:
    """[units]: whether all of a unit's input columns are 0."""
    return (weight.reshape(weight.shape[0], units, -1) == 0).all(2).all(0)


def _warn_if_padded(modules: dict[str, nn.Module], group: CouplingGroup, constants: dict[str, torch.Tensor],
                    removed: torch.Tensor) -> None:
    """A constant that reaches a zero-padded conv (a consumer, or a depthwise conv on the way) is
    folded exactly only away from the image borders."""
    for layer, values in constants.items():
        module = modules[layer]
        padded = isinstance(module, nn.modules.conv._ConvNd) and (
            module.padding != "valid" if isinstance(module.padding, str) else any(p != 0 for p in module.padding))
        if padded and bool((values[removed].abs() > 1e-8).any()):
            log.warning("%s: removed channels of %s reach it as a constant; folded into the biases, exact away from "
                        "the zero-padded borders only", layer, group.name)
