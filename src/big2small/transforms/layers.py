"""Layer dropping: a transformer with fewer blocks, made from its teacher's own blocks
(docs/distillation.md#a-smaller-architecture-fewer-layers).

A Hugging Face decoder (LLaMA-style: `model.layers`) or encoder (BERT-style: `encoder.layer`) is
one stack of identical blocks on a residual stream, so removing blocks leaves a working network
of the same width. Which blocks go:

- "even": evenly spaced through the stack (the first and last are kept unless all must go);
- "influence" (data-free): the blocks that change the residual stream least on synthetic inputs,
  by ShortGPT's block influence (Men et al., 2024), 1 - cos(h_in, h_out) averaged over tokens.

The student's architecture is recorded (`LayerDropRecord`: the kept indices, in the teacher's
numbering), so `restore` rebuilds it from the original's skeleton (`restructure`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from big2small.errors import Big2SmallError
from big2small.transforms.records import LayerDropRecord, TransformRecord

CRITERIA = ("even", "influence")
BLOCK_LIST_NAMES = ("layers", "layer")  # LLaMA-style decoders, BERT-style encoders


def block_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList]:
    """The model's stack of transformer blocks: (its parent module, its attribute, the list).
    Refused in one line for a model without exactly one such stack and a config to go with it."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and name.rpartition(".")[2] in BLOCK_LIST_NAMES and len(m) > 0
             and len({type(b) for b in m}) == 1]
    config = getattr(model, "config", None)
    if len(found) != 1 or getattr(config, "num_hidden_layers", None) != len(found[0][1]):
        raise Big2SmallError(f"{type(model).__name__}: layer dropping supports Hugging Face decoder and encoder "
                             "transformers (one stack of blocks, model.layers or encoder.layer, and a config)")
    name, blocks = found[0]
    parent_name, _, attr = name.rpartition(".")
    return model.get_submodule(parent_name), attr, blocks


def even_keep(n: int, drop: int) -> list[int]:
    """The blocks kept when `drop` of `n` go evenly through the stack (first and last kept)."""
    _check_counts(n, drop)
    if drop == 0:
        return list(range(n))
    inner = n - 2 if n - drop >= 2 else n  # keep the ends while at least two blocks are left
    first = 1 if inner == n - 2 else 0
    dropped = {first + int((j + 0.5) * inner / drop) for j in range(drop)}
    return [i for i in range(n) if i not in dropped]


def influence_keep(scores: list[float], drop: int) -> list[int]:
    """The blocks kept when the `drop` of least influence go."""
    _check_counts(len(scores), drop)
    order = sorted(range(len(scores)), key=lambda i: (scores[i], i))
    return sorted(set(range(len(scores))) - set(order[:drop]))


def _check_counts(n: int, drop: int) -> None:
    if not 0 <= drop < n:
        raise Big2SmallError(f"can drop 0 to {n - 1} of the model's {n} layers, not {drop}")


@torch.no_grad()
def block_influence(model: nn.Module, batches: list[dict[str, torch.Tensor]],
                    forward: Callable[[nn.Module, dict[str, torch.Tensor]], Any]) -> list[float]:
    """Each block's influence on the residual stream: 1 - cos(its input, its output), averaged
    over the real tokens (attention mask) of `batches`, run through `forward(model, batch)`."""
    _, _, blocks = block_list(model)
    totals = [0.0] * len(blocks)
    count = 0.0
    mask: list[torch.Tensor] = []

    def hook(index: int):
        def record(_module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, (tuple, list)) else output
            cos = F.cosine_similarity(h_in.float(), h_out.float(), dim=-1)
            totals[index] += float(((1 - cos) * mask[0]).sum())
        return record

    handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            ids = batch["input_ids"]
            mask[:] = [batch.get("attention_mask", torch.ones_like(ids)).float()]
            count += float(mask[0].sum())
            forward(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [t / max(count, 1.0) for t in totals]


def drop_layers(model: nn.Module, keep: list[int]) -> nn.Module:
    """A copy of `model` with only the blocks `keep` (indices into its stack, ascending), renumbered
    0..len(keep)-1 as the config and each block's `layer_idx` (the KV cache's slot) say."""
    student = copy.deepcopy(model)
    _keep_blocks(student, keep)
    return student


def _keep_blocks(model: nn.Module, keep: list[int]) -> None:
    parent, attr, blocks = block_list(model)
    if not keep or sorted(set(keep)) != list(keep) or keep[-1] >= len(blocks) or keep[0] < 0:
        raise Big2SmallError(f"kept layers must be distinct ascending indices below {len(blocks)}, got {keep}")
    setattr(parent, attr, nn.ModuleList([blocks[i] for i in keep]))
    config = model.config
    for key, value in kept_config_fields(lambda k: getattr(config, k, None), keep, len(blocks)).items():
        setattr(config, key, value)
    for new_index, block in enumerate(getattr(parent, attr)):
        for module in block.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index


# Per-block lists of a transformers config (one entry per block, in order): what kind of attention
# each block has (Gemma, Qwen: "full_attention", "sliding_attention"), whether it skips RoPE (SmolLM3).
PER_LAYER_LISTS = ("layer_types", "no_rope_layers")


def kept_config_fields(get: Callable[[str], Any], keep: list[int], n_blocks: int) -> dict[str, Any]:
    """The config fields that change when only the blocks `keep` (ascending indices) of `n_blocks`
    stay: the block count, and each per-block list cut to the kept blocks' entries. `get(key)`:
    a field of the config (a transformers config's attribute, or config.json's value; None when it
    has none). The one place that says how a config follows dropped blocks: for a model in memory
    (_keep_blocks, and so restore and export --to hf) and for config.json (models.hf_config)."""
    fields: dict[str, Any] = {"num_hidden_layers": len(keep)}
    for key in PER_LAYER_LISTS:
        values = get(key)
        if isinstance(values, list) and len(values) == n_blocks:
            fields[key] = [values[i] for i in keep]
    return fields


def restructure(model: nn.Module, records: list[TransformRecord]) -> nn.Module:
    """Give a skeleton of the original architecture the blocks a LayerDropRecord kept (in place);
    a model that already has them is left as it is."""
    for record in records:
        if isinstance(record, LayerDropRecord):
            _, _, blocks = block_list(model)
            if len(blocks) == record.layers_before:
                _keep_blocks(model, record.kept)
            elif len(blocks) != len(record.kept):
                raise Big2SmallError(f"the artifact keeps {len(record.kept)} of {record.layers_before} layers; "
                                     f"the model given has {len(blocks)}")
    return model
