"""How a Hugging Face config follows the structural transforms an artifact stores, so that a dense
export (`decompress` to a directory, `export --to hf`) reloads with `from_pretrained`.

- Dropped blocks (LayerDropRecord): the block count and per-block lists (transforms.layers).
- Folded units (FoldRecord): the widths the stored tensors have. A LLaMA- or BERT-style config
  holds one MLP width (intermediate_size) and one head count for every block, so a fold that left
  different widths in different blocks cannot be described, and is refused with the reason.
Whatever the fields say is then checked against a model built from the config on the meta
device: a shape the config cannot describe (e.g. BERT's head size, which follows the head count)
is refused too, never written as a directory that fails to load.
"""

from __future__ import annotations

import re
from typing import Any

from big2small.errors import Big2SmallError
from big2small.transforms.layers import kept_config_fields
from big2small.transforms.records import FoldRecord, LayerDropRecord, TransformRecord

Shapes = dict[str, tuple[int, ...]]

# Rows of a block's MLP input layers (its width) and of its query and key projections (its heads),
# LLaMA-style (model.layers.N.mlp / self_attn) and BERT-style (encoder.layer.N.intermediate / attention).
_MLP_ROWS = re.compile(r".*layers?\.\d+\.(?:mlp\.(?:gate_proj|up_proj)|intermediate\.dense)\.weight")
_QUERY_ROWS = re.compile(r".*layers?\.\d+\.(?:self_attn\.q_proj|attention\.self\.query)\.weight")
_KEY_ROWS = re.compile(r".*layers?\.\d+\.(?:self_attn\.k_proj|attention\.self\.key)\.weight")


def _rows(shapes: Shapes, pattern: re.Pattern[str]) -> list[int]:
    return sorted({shape[0] for name, shape in shapes.items() if pattern.fullmatch(name) and shape})


def folded_fields(config: dict[str, Any], shapes: Shapes) -> dict[str, Any]:
    """The config fields the (folded) tensor `shapes` imply: intermediate_size, and the query and
    KV head counts with an explicit head_dim (folding merges whole heads; their size is kept).
    Refuses widths or head counts that differ per block."""
    fields: dict[str, Any] = {}
    widths = _rows(shapes, _MLP_ROWS)
    if len(widths) > 1:
        raise Big2SmallError(f"this folded model has MLP widths {widths} that differ per layer; transformers' "
                             "config holds one intermediate_size, so it cannot be exported as a Hugging Face model "
                             "(GGUF can: --to gguf; decompress without a shard size writes the tensors alone)")
    if widths and config.get("intermediate_size") not in (None, widths[0]):
        fields["intermediate_size"] = widths[0]
    heads, hidden = config.get("num_attention_heads"), config.get("hidden_size")
    head_dim = config.get("head_dim") or (hidden // heads if heads and hidden else None)
    query, key = _rows(shapes, _QUERY_ROWS), _rows(shapes, _KEY_ROWS)
    if len(query) > 1 or len(key) > 1:
        raise Big2SmallError(f"this folded model has attention heads that differ per layer (query rows {query}, key "
                             f"rows {key}); transformers' config holds one head count, so it cannot be exported as "
                             "a Hugging Face model")
    if head_dim:
        if query and query[0] != heads * head_dim:
            fields.update(num_attention_heads=query[0] // head_dim, head_dim=head_dim)
        kv_heads = config.get("num_key_value_heads")
        if key and kv_heads and key[0] != kv_heads * head_dim:
            fields.update(num_key_value_heads=key[0] // head_dim, head_dim=head_dim)
    return fields


def check_described(config: Any, model_class: type, shapes: Shapes) -> None:
    """Refuse `shapes` that a `model_class` (a transformers model class) built from `config` (its
    config) would not have: such a directory would fail in from_pretrained."""
    import torch

    with torch.device("meta"):
        fresh = model_class(config).state_dict()
    for name, shape in shapes.items():
        if name in fresh and tuple(fresh[name].shape) != tuple(shape):
            raise Big2SmallError(f"this folded model's {name} is {list(shape)}, which its config cannot describe "
                                 f"({list(fresh[name].shape)}), so it cannot be exported as a Hugging Face model")


def stored_config(config: dict[str, Any], records: list[TransformRecord], shapes: Shapes) -> dict[str, Any]:
    """The original's config.json (a dict) as the model an artifact stores has it, after the blocks
    its LayerDropRecords dropped and the units its FoldRecords merged (a copy; unchanged without
    either). `shapes`: the stored tensors' shapes, by name."""
    config = dict(config)
    for record in records:
        if isinstance(record, LayerDropRecord):
            n_blocks = config.get("num_hidden_layers")
            if n_blocks != record.layers_before:
                raise Big2SmallError(f"the artifact keeps {len(record.kept)} of {record.layers_before} layers; "
                                     f"its source config.json has {n_blocks}")
            config.update(kept_config_fields(config.get, record.kept, record.layers_before))
    if any(isinstance(record, FoldRecord) for record in records):
        config.update(folded_fields(config, shapes))
        architectures = config.get("architectures") or []
        if architectures:
            from big2small.models.loaders import hf_class

            cls = hf_class(architectures[0])
            check_described(cls.config_class.from_dict(config), cls, shapes)
    return config
