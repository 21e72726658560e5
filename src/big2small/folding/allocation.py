"""How many units each group keeps, from a global target (fraction of parameters to remove).

- "uniform": one fold ratio r for every group, the smallest that meets the target (docs/folding.md#widths).
- "cost" (our design, data-free): groups differ in how much redundancy they hold. For each group,
  Ward agglomerative clustering of its (robust-scaled) features gives the share of the features'
  variance lost at every k at once; units are then removed greedily where that loss per parameter
  saved is smallest, until the target is met. The merge itself is still k-means at those k.

Parameters are counted exactly: a tensor indexed by groups g and h keeps k_g/n_g * k_h/n_h of its
elements. Groups given a fixed ratio (FoldConfig.ratios) keep it in both modes.
"""

from __future__ import annotations

import heapq
import math
import re

import numpy as np
import torch
from torch import nn

from big2small.errors import Big2SmallError
from big2small.folding.config import FoldConfig
from big2small.transforms import CouplingGroup


def keep_count(n: int, ratio: float, multiple_of: int = 1) -> int:
    """Units kept of n at fold ratio r: floor(n (1 - r)), rounded down to a multiple of
    `multiple_of` (when n allows it), at least 1."""
    k = math.floor(n * (1.0 - ratio) + 1e-9)
    if multiple_of > 1 and n >= multiple_of:
        k = max(multiple_of, k - k % multiple_of)
    return max(1, min(n, k))


def parameter_axes(model: nn.Module, groups: list[CouplingGroup]) -> list[tuple[int, list[str]]]:
    """Each parameter's element count (tied tensors once) and the groups indexing its axes."""
    index: dict[str, list[str]] = {}
    for g in groups:
        for m in g.members:
            if m.role != "statistic":
                index.setdefault(m.param, []).append(g.name)
    seen: set[int] = set()
    out = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) not in seen:
            seen.add(id(p))
            out.append((p.numel(), index.get(name, [])))
    return out


def widths(model: nn.Module, groups: list[CouplingGroup], config: FoldConfig, params_before: int,
           features) -> tuple[dict[str, int], float | None]:
    """Units kept per group (name -> k) and the uniform ratio used (None for "cost" allocation).
    `features(group)` returns the group's [n, d] clustering features (for "cost")."""
    fixed = {}
    for g in groups:
        for pattern, r in config.ratios.items():
            if re.search(pattern, g.name):
                fixed[g.name] = keep_count(g.size, r, config.multiple_of)
                break
    if config.sparsity is None:
        return {g.name: fixed.get(g.name, keep_count(g.size, config.ratio, config.multiple_of)) for g in groups}, config.ratio
    axes = parameter_axes(model, groups)
    sizes = {g.name: g.size for g in groups}

    def params_with(keep: dict[str, int]) -> float:
        return sum(numel * math.prod(keep[n] / sizes[n] for n in names) for numel, names in axes)

    target = (1.0 - config.sparsity) * params_before + 0.5
    lowest = params_with({g.name: fixed.get(g.name, 1) for g in groups})
    if lowest > target:
        raise Big2SmallError(
            f"sparsity {config.sparsity:.0%} is impossible: folding every group to one unit removes only "
            f"{1 - lowest / params_before:.1%} of the parameters (the rest are not in foldable groups)")
    if config.allocation == "uniform":
        return _uniform(groups, config, fixed, params_with, target)
    return _by_cost(groups, config, fixed, params_with, target, axes, features), None


def _uniform(groups, config, fixed, params_with, target) -> tuple[dict[str, int], float]:
    def keep_at(r: float) -> dict[str, int]:
        return {g.name: fixed.get(g.name, keep_count(g.size, r, config.multiple_of)) for g in groups}

    lo, hi = 0.0, 0.999999
    for _ in range(60):  # the smallest r whose parameter count meets the target
        mid = (lo + hi) / 2
        if params_with(keep_at(mid)) <= target:
            hi = mid
        else:
            lo = mid
    return keep_at(hi), hi


def merge_cost_curve(x: torch.Tensor) -> np.ndarray:
    """Share of the rows' total variance lost after each successive Ward merge: [n - 1],
    non-decreasing; entry j is the loss at n - 1 - j clusters."""
    from scipy.cluster.hierarchy import linkage

    x = x.double().cpu()
    x = x - x.mean(0)
    total = float((x ** 2).sum())
    if x.shape[0] < 2 or total <= 0:
        return np.zeros(max(x.shape[0] - 1, 0))
    heights = linkage(x.numpy(), method="ward")[:, 2]
    return np.cumsum(heights ** 2 / 2) / total


def _by_cost(groups, config, fixed, params_with, target, axes, features) -> dict[str, int]:
    keep = {g.name: fixed.get(g.name, g.size) for g in groups}
    free = [g for g in groups if g.name not in fixed]
    sizes = {g.name: g.size for g in groups}
    per_unit = {g.name: 0.0 for g in free}  # parameters one unit carries (at full width elsewhere)
    for numel, names in axes:
        for name in names:
            if name in per_unit:
                per_unit[name] += numel / sizes[name]
    heap = []
    curves = {}
    for g in free:
        if g.size > 1 and per_unit[g.name] > 0:
            curves[g.name] = np.concatenate([[0.0], merge_cost_curve(features(g))])
            heapq.heappush(heap, (curves[g.name][1] / per_unit[g.name], g.name))
    estimate = params_with(keep)
    while heap:
        _, name = heapq.heappop(heap)
        keep[name] -= 1
        estimate -= per_unit[name]
        if estimate <= target and params_with(keep) <= target:
            break
        removed = sizes[name] - keep[name]
        if keep[name] > 1:
            curve = curves[name]
            heapq.heappush(heap, ((curve[removed + 1] - curve[removed]) / per_unit[name], name))
    if config.multiple_of > 1:
        keep = {n: keep_count(sizes[n], 1 - k / sizes[n], config.multiple_of) for n, k in keep.items()}
    return keep
