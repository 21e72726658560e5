"""fold(): make a model really narrower by merging similar units (docs/folding.md), or, as the
baseline, by structured magnitude pruning of the same units.

For each foldable coupling group (big2small.transforms.graph) of n units with k kept:
1. features: every member's slice per unit, flattened and concatenated ([n, d]);
2. labels: k-means over the features (folding), or the k largest producer norms (pruning);
3. merge with the coupling graph's apply step (big2small.transforms.apply): producers and
   statistics become A @ P, consumers W @ B^T, with A the k x n cluster-mean matrix and B the
   cluster-membership matrix; pruning selects the kept units (`select`);
4. repair: Fold-AR fuses BatchNorm statistics into the producers first and afterwards rescales each
   merged channel by sqrt(n_c / (1 + (n_c - 1) rho_c)), rho_c the mean cosine between the merged
   units' features; "data" re-estimates BatchNorm statistics on real inputs instead.
Every module is then resized to its new tensors: the result is an ordinary dense nn.Module.
"""

from __future__ import annotations

import copy
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn

from big2small.errors import Big2SmallError
from big2small.folding.allocation import widths
from big2small.folding.config import FoldConfig
from big2small.folding.kmeans import kmeans
from big2small.folding.lsq_repair import mlp_hidden, refit_output, sample_count, synthetic_inputs
from big2small.folding.reconstruct import sequential_fold
from big2small.progress import progress_bar
from big2small.training import recalibrate_batchnorm
from big2small.transforms import CouplingGroup, Member, apply, find_groups, named_tensor, select


@dataclass
class GroupResult:
    """One folded group: units before and after."""

    name: str
    kind: str
    units_before: int
    units_after: int

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class FoldResult:
    """The folded model and what folding did to it. MACs are per example input (None when no
    example input was given); seconds is the wall time of fold() itself."""

    model: nn.Module
    config: FoldConfig
    groups: list[GroupResult]
    unfolded: dict[str, str]
    parameters_before: int
    parameters_after: int
    macs_before: int | None
    macs_after: int | None
    seconds: float
    ratio: float | None = None  # the uniform fold ratio used (None when allocated by merge cost)
    data_free: bool = True

    @property
    def sparsity(self) -> float:
        """Fraction of all parameters removed."""
        return 1.0 - self.parameters_after / self.parameters_before

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(), "ratio": self.ratio, "sparsity": self.sparsity,
            "parameters_before": self.parameters_before, "parameters_after": self.parameters_after,
            "macs_before": self.macs_before, "macs_after": self.macs_after, "seconds": self.seconds,
            "data_free": self.data_free, "groups": [g.to_dict() for g in self.groups], "unfolded": self.unfolded,
        }


def fold(model: nn.Module, config: FoldConfig | None = None, *, data: Iterable[torch.Tensor] | None = None,
         example_input: Any = None, calibration: dict[str, torch.Tensor] | None = None,
         progress: bool = True) -> FoldResult:
    """Fold (or prune) a copy of `model`; the input model is left untouched.

    data: input batches for repair="data" (BatchNorm statistics re-estimated on them).
    calibration: the teacher's synthetic inputs ({"input_ids", "attention_mask"} [N, T], e.g.
        big2small.distill.synthetic_inputs) for selection "activation" and norm_repair "sequential".
    example_input: one input (tensor or dict of tensors) to count MACs before and after.
    Raises Big2SmallError when nothing can be folded, the target cannot be met, or options clash.
    """
    config = config or FoldConfig()
    config.validate()
    if config.repair == "data" and data is None:
        raise Big2SmallError("repair 'data' re-estimates BatchNorm statistics: it needs input batches")
    if config.needs_calibration and calibration is None:
        raise Big2SmallError("selection 'activation' and norm_repair 'sequential' run the model on its synthetic "
                             "inputs: use `big2small fold`, or pass fold(..., calibration=synthetic inputs)")
    teacher = model
    start = time.perf_counter()
    model = copy.deepcopy(model).eval()
    _check_finite(model)
    report = find_groups(model, gqa_mode=config.gqa_mode, mlp=config.fold_mlp, attention=config.fold_attention)
    unfolded = dict(report.unfolded)
    groups = [g for g in report.foldable if not any(re.search(p, g.name) for p in config.skip)]
    for g in report.foldable:
        if g not in groups:
            unfolded[g.name] = "skipped by the configuration"
    if not groups:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(unfolded.items())[:3])
        raise Big2SmallError(f"nothing to fold in {type(model).__name__} ({reasons or 'no Conv/Linear layers'})")
    params_before = count_parameters(model)
    macs_before = count_macs(model, example_input) if example_input is not None else None
    modules = dict(model.named_modules())

    def scaled_features(group: CouplingGroup) -> torch.Tensor:  # what clustering sees, before any fusion
        return robust_scale(features(modules, group))

    keep, uniform = widths(model, groups, config, params_before, scaled_features)
    if config.repair == "ar" and config.selection == "fold":
        # (For pruning, AR changes nothing: a kept unit is a cluster of one, with factor 1.)
        for g in groups:
            if keep[g.name] < g.size:
                _fuse_batchnorm(modules, g)
    results = [GroupResult(g.name, g.kind, g.size, keep[g.name]) for g in groups]
    if config.needs_calibration:
        sequential_fold(teacher, model, groups, keep, calibration,
                        lambda g, k, scores: _fold_group(model, modules, g, k, config, scores),
                        scores=config.selection == "activation", refit=config.norm_repair == "sequential",
                        progress=progress)
    else:
        with progress_bar("folding" if config.selection == "fold" else f"pruning ({config.selection})",
                          total=len(groups), enabled=progress) as advance:
            for g in groups:
                if keep[g.name] < g.size:
                    _fold_group(model, modules, g, keep[g.name], config)
                advance(1)
    if config.repair == "data":
        if recalibrate_batchnorm(model, data) == 0:
            raise Big2SmallError("repair 'data' re-estimates BatchNorm statistics, and this model has none")
    return FoldResult(model.eval(), config, results, unfolded, params_before, count_parameters(model), macs_before,
                      count_macs(model, example_input) if example_input is not None else None,
                      time.perf_counter() - start, uniform, config.repair != "data")


def count_parameters(model: nn.Module) -> int:
    """Parameters, tied tensors counted once."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example_input: Any) -> int:
    """Multiply-accumulates of the Conv/Linear layers for one forward of `example_input`."""
    total = 0

    def hook(module, _inputs, output):
        nonlocal total
        if isinstance(module, nn.Linear):
            total += output.numel() // output.shape[-1] * module.in_features * module.out_features
        else:
            per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
            total += output.numel() * per_output

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        if isinstance(example_input, dict):
            model(**example_input)
        else:
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return total


# --- one group -------------------------------------------------------------------------------

def unit_rows(tensor: torch.Tensor, member: Member, n: int) -> torch.Tensor:
    """The member's slice per unit as rows: [n, -1] (docs/folding.md#features)."""
    t = tensor.detach().float()
    if member.axis == 0:
        return t.reshape(n, -1)
    return t.reshape(t.shape[0], n, -1).transpose(0, 1).reshape(n, -1)


def features(modules: dict[str, nn.Module], group: CouplingGroup, roles: tuple[str, ...] = ("producer", "consumer")) -> torch.Tensor:
    """[n, d]: the members' slices of every unit (producers and consumers by default), side by side."""
    return torch.cat([unit_rows(named_tensor(modules, m.param), m, group.size)
                      for m in group.members if m.role in roles], dim=1)


def robust_scale(x: torch.Tensor) -> torch.Tensor:
    """Per column: subtract the median, divide by the interquartile range (1 where it is 0)."""
    q = torch.quantile(x, torch.tensor([0.25, 0.5, 0.75], dtype=x.dtype, device=x.device), dim=0) \
        if x.numel() <= 16_000_000 else _chunked_quantiles(x)
    iqr = q[2] - q[0]
    return (x - q[1]) / torch.where(iqr > 0, iqr, torch.ones_like(iqr))


def _chunked_quantiles(x: torch.Tensor) -> torch.Tensor:
    probs = torch.tensor([0.25, 0.5, 0.75], dtype=x.dtype, device=x.device)
    step = max(1, 16_000_000 // x.shape[0])
    return torch.cat([torch.quantile(x[:, i:i + step], probs, dim=0) for i in range(0, x.shape[1], step)], dim=1)


def _largest_units(modules: dict[str, nn.Module], group: CouplingGroup, k: int, config: FoldConfig) -> torch.Tensor:
    """keep [n] (bool): the k units whose producer weights have the largest L1 or L2 norm (pruning)."""
    p = 1 if config.selection == "l1" else 2
    weights = [m for m in group.producers() if m.param.endswith(".weight") and m.param.rpartition(".")[0] not in group.norms]
    return _top_units(sum(unit_rows(named_tensor(modules, m.param), m, group.size).norm(p=p, dim=1) for m in weights), k)


def _top_units(score: torch.Tensor, k: int) -> torch.Tensor:
    """keep [n] (bool): the k units with the largest scores."""
    keep = torch.zeros(score.numel(), dtype=torch.bool, device=score.device)
    keep[torch.topk(score, k).indices] = True
    return keep


@torch.no_grad()
def _fold_group(model: nn.Module, modules: dict[str, nn.Module], group: CouplingGroup, k: int, config: FoldConfig,
                scores: torch.Tensor | None = None) -> torch.Tensor | None:
    """Merge (folding) or select (pruning) the group's units down to k, with the configured repairs;
    returns the kept-unit mask when it pruned, None when it merged. `scores`: per unit, for
    selection "activation" (the k largest are kept)."""
    refit = None
    if config.norm_repair == "lsq" and group.mlp_module is not None:
        # Applies to pruning too: it refits the output from whichever units are kept.
        x = synthetic_inputs(modules[group.input_norm], sample_count(group.size), config.seed)
        consumer = modules[group.consumers()[0].param.rpartition(".")[0]]
        x = x.to(consumer.weight.device, consumer.weight.dtype)
        refit = (x, consumer, consumer(mlp_hidden(modules[group.mlp_module], x)))
    kept = None
    if config.selection == "fold":
        _merge(model, modules, group, k, config)
    else:
        kept = _top_units(scores, k) if config.selection == "activation" else _largest_units(modules, group, k, config)
        select(model, group, kept)
    if refit is not None:
        x, consumer, target = refit
        refit_output(consumer, mlp_hidden(modules[group.mlp_module], x), target)
    return kept


def _merge(model: nn.Module, modules: dict[str, nn.Module], group: CouplingGroup, k: int, config: FoldConfig) -> None:
    """Cluster the units, merge each cluster into one, and repair the merged units' variance."""
    n = group.size
    x = features(modules, group)
    if config.scaling == "robust":
        x = robust_scale(x)
    labels = kmeans(x, k, n_init=config.n_init, max_iter=config.max_iter, seed=config.seed)
    membership = torch.zeros(k, n, device=labels.device)
    membership[labels, torch.arange(n, device=labels.device)] = 1.0
    mean = membership / membership.sum(1).clamp_min(1).unsqueeze(1)
    factor = None
    if config.repair == "ar" and group.fused:
        roles = ("producer",) if config.ar_features == "producers" else ("producer", "consumer")
        factor = ar_factor(features(modules, group, roles), labels, k)
    row_factors = {}
    if config.norm_repair == "scale_rows" and not group.norms:
        for m in group.producers():
            if m.param.endswith(".weight"):
                row_factors[m.param.rpartition(".")[0]] = ar_factor(unit_rows(named_tensor(modules, m.param), m, n), labels, k)
    apply(model, group, mean, membership)
    for m in group.producers():
        layer_factor = row_factors.get(m.param.rpartition(".")[0])
        if layer_factor is not None:  # each merged row times its layer's own AR factor
            t = named_tensor(modules, m.param)
            t.copy_((t.float().reshape(k, -1) * layer_factor.unsqueeze(1)).reshape(t.shape).to(t.dtype))
    if factor is not None:
        fused = {bn for _, bn in group.fused}
        for name in group.norms:
            if name in fused:
                norm = modules[name]
                norm.running_var.copy_((1.0 / factor.to(norm.running_var.dtype) ** 2) - norm.eps)


def ar_factor(x: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Per cluster: sqrt(n_c / (1 + (n_c - 1) rho_c)), rho_c the mean cosine between distinct
    members' rows of `x` (clamped to [0, 1]); 1 for a cluster of one."""
    kept = labels >= 0
    u = torch.nn.functional.normalize(x[kept].float(), dim=1)
    sums = torch.zeros(k, u.shape[1], device=u.device).index_add_(0, labels[kept], u)
    n_c = torch.bincount(labels[kept], minlength=k).to(u.dtype)
    pairs = n_c * (n_c - 1)
    rho = torch.where(pairs > 0, (sums.pow(2).sum(1) - n_c) / pairs.clamp_min(1), torch.ones_like(n_c)).clamp(0, 1)
    return torch.sqrt(n_c.clamp_min(1) / (1 + (n_c - 1) * rho))


@torch.no_grad()
def _fuse_batchnorm(modules: dict[str, nn.Module], group: CouplingGroup) -> None:
    """Divide each producer's rows by its BatchNorm's sqrt(var + eps) and move the statistics to
    mean/sqrt(var + eps) and variance 1 - eps: the same function, with unit-variance channels that
    Fold-AR can reason about (docs/folding.md#fold-ar, step 1)."""
    for layer_name, norm_name in group.fused:
        layer, norm = modules[layer_name], modules[norm_name]
        if not norm.track_running_stats or norm.running_var is None:
            continue
        sigma = torch.sqrt(norm.running_var.float() + norm.eps)
        shape = (-1,) + (1,) * (layer.weight.ndim - 1)
        layer.weight.copy_((layer.weight.float() / sigma.reshape(shape)).to(layer.weight.dtype))
        mean = norm.running_mean.float()
        if layer.bias is not None:
            mean = mean - layer.bias.float()
            layer.bias.zero_()
        norm.running_mean.copy_((mean / sigma).to(norm.running_mean.dtype))
        norm.running_var.fill_(1.0 - norm.eps)


def _check_finite(model: nn.Module) -> None:
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise Big2SmallError(f"{name} holds NaN or Inf values: refusing to fold")
