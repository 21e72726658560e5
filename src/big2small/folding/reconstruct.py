"""Sequential reconstruction of a folded transformer on the teacher's own synthetic inputs (our
design, data-free; docs/folding.md#sequential-reconstruction).

The lsq repair (folding/lsq_repair.py) refits a merged MLP on Gaussian stand-ins for its input.
Here the inputs are real hidden states: the teacher's synthetic inputs (text it samples itself,
or text SmolLM2 samples for an encoder: big2small.distill.synthetic) are run through the model one
block at a time, teacher and student side by side. For each folded group, in forward order:

1. (selection "activation") each unit's score is sum over its consumer columns j of
   ||W[:, j]||_2 * rms(a_j), a_j the consumer's input on the student's hidden states so far: the
   size of what the unit writes into the residual stream (a structured Wanda-style score). The
   units with the largest scores are kept.
2. the group is merged or pruned to its width;
3. (norm_repair "sequential") the consumer (down_proj / o_proj / output.dense) is refit by ridge
   regression (lsq_repair.refit_output) so that residual_s + C'(a_s) matches the teacher's
   residual_t + C(a_t): inputs a_s and residual_s from the already-repaired student, targets from
   the teacher on its own hidden states, so each refit also absorbs the drift of the blocks before.

Padding tokens (attention_mask 0) are left out of both. Costs a few forwards of every block over
the inputs; no gradients.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from big2small.errors import Big2SmallError
from big2small.folding.lsq_repair import refit_output
from big2small.progress import progress_bar
from big2small.transforms import CouplingGroup
from big2small.transforms.graph import transformer_blocks

BATCH = 8  # sequences per block forward

# fold_group(group, k, scores) narrows the student's group to k units (scores: per unit, None
# unless selection is "activation") and returns the kept-unit mask when it pruned, None when it merged.
FoldOne = Callable[[CouplingGroup, int, "torch.Tensor | None"], "torch.Tensor | None"]


class _Stop(Exception):
    """Raised by the capture hook: the rest of the forward is not needed."""


def _first_input(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else next(iter(kwargs.values()))


def _output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def block_inputs(model: nn.Module, block: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[dict]]:
    """Per batch of BATCH sequences: the hidden states the first block reads and its other keyword
    arguments (attention mask, position embeddings), captured by a hook that stops the forward."""
    states, kwargs_list = [], []

    def hook(_module, args, kwargs):
        states.append(_first_input(args, kwargs))
        kwargs_list.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _Stop

    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    device = next(model.parameters()).device
    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        n = len(next(iter(inputs.values())))
        for start in range(0, n, BATCH):
            try:
                model(**{k: v[start:start + BATCH].to(device) for k, v in inputs.items()}, **extra)
            except _Stop:
                pass
            else:
                raise Big2SmallError(f"{type(model).__name__} never ran its first block: cannot reconstruct it")
    finally:
        handle.remove()
    return states, kwargs_list


@torch.no_grad()
def run_block(block: nn.Module, states: list[torch.Tensor], kwargs_list: list[dict],
              watch: dict[str, nn.Module] | None = None) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """The block's outputs per batch, and for each watched module (name -> module) its first input
    over every batch, concatenated as [batches x tokens, features]."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in watch or {}}
    handles = []
    for name, module in (watch or {}).items():
        def hook(_m, args, kwargs, name=name):
            x = _first_input(args, kwargs)
            seen[name].append(x.reshape(-1, x.shape[-1]).float())
        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        outs = [_output(block(h, **kw)) for h, kw in zip(states, kwargs_list)]
    finally:
        for h in handles:
            h.remove()
    return outs, {name: torch.cat(xs) for name, xs in seen.items()}


def unit_scores(consumer: nn.Linear, inputs: torch.Tensor, n: int) -> torch.Tensor:
    """[n]: per unit, sum over its consumer columns j of ||W[:, j]||_2 * rms(inputs[:, j])."""
    per_column = consumer.weight.detach().float().norm(dim=0) * inputs.pow(2).mean(0).sqrt()
    return per_column.reshape(n, -1).sum(1)


@torch.no_grad()
def sequential_fold(teacher: nn.Module, student: nn.Module, groups: list[CouplingGroup], keep: dict[str, int],
                    inputs: dict[str, torch.Tensor], fold_group: FoldOne, *, scores: bool, refit: bool,
                    progress: bool = True) -> None:
    """Fold `student` (a copy of `teacher`, changed in place) block by block on `inputs` (the
    teacher's synthetic inputs: {"input_ids", "attention_mask"}, [N, T]); module docstring."""
    missing = [g.name for g in groups if g.block is None or g.residual is None]
    if missing:
        raise Big2SmallError(f"activation selection and sequential repair need transformer blocks; {missing[0]} is not in one")
    t_modules, s_modules = dict(teacher.named_modules()), dict(student.named_modules())
    blocks = transformer_blocks(student)
    mask = inputs.get("attention_mask")
    tokens = mask.reshape(-1).bool() if mask is not None else None
    t_states, kwargs_list = block_inputs(teacher, t_modules[blocks[0]], inputs)
    s_states = list(t_states)
    order = {"heads": 0, "mlp": 1}  # attention before the MLP, as the forward runs them
    todo = {b: sorted((g for g in groups if g.block == b and keep[g.name] < g.size), key=lambda g: order.get(g.kind, 2))
            for b in blocks}
    with progress_bar("reconstructing blocks", len(blocks), enabled=progress, unit="blocks") as advance:
        for b in blocks:
            here = todo[b]
            consumers = {g.name: g.consumers()[0].param.rpartition(".")[0] for g in here}
            watch_t = {f"{g.name}:c": t_modules[consumers[g.name]] for g in here} | \
                {f"{g.name}:r": t_modules[g.residual] for g in here}
            t_next, t_seen = run_block(t_modules[b], t_states, kwargs_list, watch_t if refit else None)
            for g in here:
                consumer = s_modules[consumers[g.name]]
                n, k = g.size, keep[g.name]
                before = None
                if scores or refit:
                    _, seen = run_block(s_modules[b], s_states, kwargs_list,
                                        {"c": consumer, "r": s_modules[g.residual]})
                    before = {key: _tokens(v, tokens) for key, v in seen.items()}
                kept = fold_group(g, k, unit_scores(consumer, before["c"], n) if scores else None)
                if not refit:
                    continue
                if kept is not None:  # pruned: the kept units' inputs are unchanged
                    a = before["c"][:, kept.repeat_interleave(before["c"].shape[1] // n)]
                else:
                    _, seen = run_block(s_modules[b], s_states, kwargs_list, {"c": s_modules[consumers[g.name]]})
                    a = _tokens(seen["c"], tokens)
                teacher_consumer = t_modules[consumers[g.name]]
                a_t, r_t = _tokens(t_seen[f"{g.name}:c"], tokens), _tokens(t_seen[f"{g.name}:r"], tokens)
                target = teacher_consumer(a_t.to(teacher_consumer.weight.dtype)).float() + r_t - before["r"]
                refit_output(s_modules[consumers[g.name]], a, target)
            s_states = run_block(s_modules[b], s_states, kwargs_list)[0]
            t_states = t_next
            advance(1)


def _tokens(x: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
    """The rows of real (not padding) tokens."""
    return x if tokens is None else x[tokens.to(x.device)]
