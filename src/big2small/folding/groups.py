"""Channel coupling groups for folding (docs/folding.md#coupling-groups, #transformers): every tensor axis one hidden
dimension indexes, so that merging units changes all of them consistently.

Two sources:
- **Any torch.fx-traceable CNN/MLP** (`traced_groups`): the graph is walked once, giving each
  tensor a channel space. A Conv/Linear layer starts a new space and consumes its input's space;
  BatchNorm, depthwise convs and channel-wise ops keep it; a residual add or an elementwise
  product (squeeze-and-excitation) joins the spaces of its operands into one group. Spaces that
  reach the network input or output, a concatenation, or an operation we do not understand are
  reported as unfoldable, with the reason.
- **Hugging Face transformers** (`transformer_groups`): LLaMA-style (SwiGLU MLP units; attention
  heads by KV group, so grouped-query attention works) and BERT-style (GELU MLP units; attention
  heads). The residual stream is not folded.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import fx, nn

from big2small.transforms.coupling import (
    CHANNELWISE_METHODS, CHANNELWISE_MODULES, LAYER_TYPES, NORM_TYPES, _is_channelwise_call, _is_flatten, _LayerTracer,
)

Role = Literal["producer", "consumer", "statistic"]


@dataclass
class Member:
    """One tensor axis indexed by a group's units.

    param: parameter or buffer name; axis 0 = producer rows, 1 = consumer columns.
    role: producers are averaged and consumers summed when units merge; statistics (BatchNorm
        running mean/var) are averaged too but are not clustering features.
    block: rows (or columns) per unit (head_dim x heads for attention units, else 1).
    spatial: input columns per unit per block for a conv flattened into a Linear layer.
    """

    param: str
    axis: int
    role: Role
    block: int = 1
    spatial: int = 1


@dataclass
class FoldGroup:
    """One hidden dimension of `size` units and every member tensor axis.

    kind: "channels" (one producer), "stream" (a residual stream or gated product: several
        producers), "mlp", "heads".
    norms: BatchNorm modules whose entries belong to the units (for Fold-AR).
    fused: (layer, BatchNorm) pairs where the BatchNorm reads the layer's output directly.
    depthwise: depthwise convs inside the group (their `groups` follow the width).
    reason: why the group cannot be folded, or None.
    """

    name: str
    size: int
    members: list[Member] = field(default_factory=list)
    kind: str = "channels"
    norms: list[str] = field(default_factory=list)
    fused: list[tuple[str, str]] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    reason: str | None = None
    input_norm: str | None = None  # transformer MLPs: the norm whose output the MLP reads
    mlp_module: str | None = None  # ... and the module that computes its hidden units

    @property
    def foldable(self) -> bool:
        return self.reason is None

    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == "producer"]

    def consumers(self) -> list[Member]:
        return [m for m in self.members if m.role == "consumer"]


@dataclass
class GroupReport:
    """The groups of a model; `unfolded` names structures left alone and why."""

    groups: list[FoldGroup]
    unfolded: dict[str, str] = field(default_factory=dict)

    @property
    def foldable(self) -> list[FoldGroup]:
        return [g for g in self.groups if g.foldable]


def find_groups(model: nn.Module, *, gqa_mode: str = "kv", mlp: bool = True, attention: bool = True) -> GroupReport:
    """The coupling groups of `model`: per-architecture builders for Hugging Face transformers,
    torch.fx tracing for everything else."""
    if getattr(getattr(model, "config", None), "model_type", None) is not None:
        return transformer_groups(model, gqa_mode=gqa_mode, mlp=mlp, attention=attention)
    return traced_groups(model)


# --- traced models ---------------------------------------------------------------------------

class _Space:
    """A channel space being built: union-find node with the members found so far."""

    def __init__(self, name: str):
        self.name = name
        self.parent: _Space = self
        self.members: list[Member] = []
        self.flat_consumers: list[tuple[str, int]] = []  # (Linear weight, in_features): spatial set later
        self.norms: list[str] = []
        self.fused: list[tuple[str, str]] = []
        self.depthwise: list[str] = []
        self.producer_modules: list[str] = []
        self.reasons: list[str] = []
        self.width: int | None = None

    def root(self) -> "_Space":
        node = self
        while node.parent is not node:
            node = node.parent
        return node


def _union(a: _Space, b: _Space) -> _Space:
    a, b = a.root(), b.root()
    if a is b:
        return a
    b.parent = a
    a.members += b.members
    a.flat_consumers += b.flat_consumers
    a.norms += b.norms
    a.fused += b.fused
    a.depthwise += b.depthwise
    a.producer_modules += b.producer_modules
    a.reasons += b.reasons
    if a.width is None:
        a.width = b.width
    elif b.width is not None and b.width != a.width:
        a.reasons.append(f"joins {a.width} and {b.width} channels")
    return a


_JOIN_FUNCTIONS = {operator.add, operator.iadd, torch.add, operator.sub, torch.sub, operator.mul, operator.imul, torch.mul}
_META_METHODS = {"size", "dim"}


def traced_groups(model: nn.Module) -> GroupReport:
    """Trace `model` with torch.fx and return its channel coupling groups."""
    try:
        graph = _LayerTracer().trace(model)
    except Exception as exc:  # fx raises many types for untraceable Python; report, never crash
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return GroupReport([], {type(model).__name__: f"torch.fx cannot trace it: {first}"})
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    space: dict[fx.Node, _Space] = {}
    flat: set[fx.Node] = set()  # nodes whose channels were flattened with the spatial axes
    meta: set[fx.Node] = set()  # nodes holding sizes, not tensors
    spaces: list[_Space] = []

    def new_space(name: str) -> _Space:
        s = _Space(name)
        spaces.append(s)
        return s

    def refuse(node: fx.Node, reason: str) -> None:
        if node in space:
            space[node].root().reasons.append(reason)

    for node in graph.nodes:
        tensor_args = [a for a in _node_args(node) if a not in meta]
        if node.op == "placeholder":
            s = new_space("input")
            s.reasons.append("it carries the network input")
            space[node] = s
        elif node.op == "output":
            for a in tensor_args:
                refuse(a, "it reaches the model's output")
        elif _is_meta(node, meta):
            meta.add(node)
        elif node.op == "call_module":
            module = modules[node.target]
            src = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
            shared = calls[node.target] > 1
            if isinstance(module, LAYER_TYPES) and src in space:
                _layer(node, module, src, space, flat, new_space, shared)
            elif isinstance(module, NORM_TYPES) and src in space and src not in flat:
                s = space[src].root()
                space[node] = s
                s.members += _norm_members(node.target, module)
                s.norms.append(node.target)
                if src.op == "call_module" and isinstance(modules[src.target], LAYER_TYPES):
                    s.fused.append((src.target, node.target))
                if shared:
                    s.reasons.append(f"{node.target} is called more than once")
            elif isinstance(module, CHANNELWISE_MODULES) and src in space and not (src in flat and "Pool" in type(module).__name__):
                space[node] = space[src]
                if src in flat:
                    flat.add(node)
            elif isinstance(module, nn.Flatten) and src in space and module.start_dim == 1 and module.end_dim == -1:
                space[node] = space[src]
                flat.add(node)
            else:
                for a in tensor_args:
                    refuse(a, f"it feeds {node.target} ({type(module).__name__})")
                space[node] = new_space(node.name)
                space[node].reasons.append(f"it comes from {node.target} ({type(module).__name__})")
        elif node.op in ("call_function", "call_method") and tensor_args and tensor_args[0] in space:
            src = tensor_args[0]
            others = tensor_args[1:]
            if node.op == "call_function" and node.target in _JOIN_FUNCTIONS and len(others) <= 1:
                s = space[src].root()
                if others and others[0] in space:
                    if (src in flat) != (others[0] in flat):
                        s.reasons.append(f"{node.name} joins flattened and unflattened channels")
                    s = _union(s, space[others[0]])
                space[node] = s
                if src in flat:
                    flat.add(node)
            elif not others and (_is_channelwise_call(node, src in flat) or (node.op == "call_method" and node.target in CHANNELWISE_METHODS)):
                space[node] = space[src]
                if src in flat:
                    flat.add(node)
            elif not others and _is_flatten(node):
                space[node] = space[src]
                flat.add(node)
            else:
                name = getattr(node.target, "__name__", str(node.target))
                what = "a concatenation" if name == "cat" else f"{name} ({node.name})"
                for a in tensor_args:
                    refuse(a, f"it feeds {what}")
                space[node] = new_space(node.name)
                space[node].reasons.append(f"it comes from {what}")
        else:
            for a in tensor_args:
                refuse(a, f"it feeds {node.name}")
            if node.op != "get_attr":
                space[node] = new_space(node.name)
                space[node].reasons.append(f"it comes from {node.name}")
    order = {n.target: i for i, n in enumerate(graph.nodes) if n.op == "call_module"}
    return _finish(spaces, modules, order)


def _node_args(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: out.append(a) or a)
    return out


def _is_meta(node: fx.Node, meta: set[fx.Node]) -> bool:
    """Sizes and shapes, and arithmetic on them: not channel tensors."""
    if node.op == "call_method" and node.target in _META_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "dtype", "device"):
        return True
    args = _node_args(node)
    return node.op == "call_function" and bool(args) and all(a in meta for a in args)


def _layer(node, module, src, space, flat, new_space, shared: bool) -> None:
    """A Conv/Linear layer: consumer of its input's space, producer of a new one (a depthwise
    conv keeps its input's space)."""
    s_in = space[src].root()
    weight = f"{node.target}.weight"
    bias = f"{node.target}.bias" if module.bias is not None else None
    groups = getattr(module, "groups", 1)
    if groups > 1 and groups == module.in_channels == module.out_channels and src not in flat:
        space[node] = s_in
        s_in.members.append(Member(weight, 0, "producer"))
        if bias:
            s_in.members.append(Member(bias, 0, "producer"))
        s_in.depthwise.append(node.target)
        if shared:
            s_in.reasons.append(f"{node.target} is called more than once")
        return
    if groups > 1:
        s_in.reasons.append(f"it feeds the grouped conv {node.target}")
    elif src in flat:
        if isinstance(module, nn.Linear):
            s_in.flat_consumers.append((weight, module.in_features))
        else:
            s_in.reasons.append(f"flattened channels feed the conv {node.target}")
    else:
        s_in.members.append(Member(weight, 1, "consumer"))
    if shared:
        s_in.reasons.append(f"{node.target} is called more than once")
    out = new_space(node.target)
    out.width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    out.members.append(Member(weight, 0, "producer"))
    if bias:
        out.members.append(Member(bias, 0, "producer"))
    out.producer_modules.append(node.target)
    if groups > 1:
        out.reasons.append(f"it comes from the grouped conv {node.target}")
    if shared:
        out.reasons.append(f"{node.target} is called more than once")
    space[node] = out


def _norm_members(name: str, module: nn.Module) -> list[Member]:
    members = []
    if module.affine:
        members += [Member(f"{name}.weight", 0, "producer"), Member(f"{name}.bias", 0, "producer")]
    if module.track_running_stats:
        members += [Member(f"{name}.running_mean", 0, "statistic"), Member(f"{name}.running_var", 0, "statistic")]
    return members


def _finish(spaces: list[_Space], modules: dict[str, nn.Module], order: dict[str, int]) -> GroupReport:
    roots: list[_Space] = []
    for s in spaces:
        r = s.root()
        if r not in roots:
            roots.append(r)
    groups, unfolded = [], {}
    for r in roots:
        if not r.producer_modules:
            continue
        width = r.width or 0
        members = list(r.members)
        reasons = list(dict.fromkeys(r.reasons))
        for weight, fan_in in r.flat_consumers:
            if width and fan_in % width == 0:
                members.append(Member(weight, 1, "consumer", spatial=fan_in // width))
            else:
                reasons.append(f"{weight} reads {fan_in} inputs from {width} channels")
        if any(isinstance(modules[p], nn.Linear) for p in r.producer_modules) and any(m.spatial > 1 for m in members):
            reasons.append("a Linear layer's outputs are flattened together with other axes")
        if not any(m.role == "consumer" for m in members) and not reasons:
            reasons.append("its output reaches no Conv/Linear layer")
        producers = sorted(r.producer_modules, key=order.__getitem__)  # in graph order: name after the first
        name = producers[0] if len(producers) == 1 else f"stream:{producers[0]}"
        group = FoldGroup(name, width, members, "channels" if len(r.producer_modules) == 1 else "stream",
                          list(dict.fromkeys(r.norms)), r.fused, r.depthwise, "; ".join(reasons) or None)
        groups.append(group)
        if group.reason:
            unfolded[name] = group.reason
    return GroupReport(groups, unfolded)


# --- Hugging Face transformers --------------------------------------------------------------

def transformer_groups(model: nn.Module, *, gqa_mode: str = "kv", mlp: bool = True, attention: bool = True) -> GroupReport:
    """Groups of a LLaMA-style or BERT-style Hugging Face model (docs/folding.md#transformers): one per MLP
    (its intermediate units) and one per attention layer (whole heads; for grouped-query attention
    a unit is a KV head with its query heads)."""
    if gqa_mode != "kv":
        raise ValueError(f"gqa_mode {gqa_mode!r} is not supported (only 'kv')")
    config = model.config
    named = dict(model.named_modules())
    groups, unfolded = [], {}
    layers = [(n, m) for n, m in named.items() if _is_llama_layer(m) or _is_bert_layer(m)]
    if not layers:
        return GroupReport([], {type(model).__name__: f"no folding builder for model_type {config.model_type!r}"})
    unfolded["residual stream"] = "not folded: the embeddings, every norm and the LM head share it (docs/folding.md#transformers)"
    for prefix, layer in layers:
        if _is_llama_layer(layer):
            mlp_names = (f"{prefix}.mlp.gate_proj", f"{prefix}.mlp.up_proj"), f"{prefix}.mlp.down_proj"
            norm, hidden = f"{prefix}.post_attention_layernorm", f"{prefix}.mlp"
            attn = layer.self_attn
            q, k, v, o = (f"{prefix}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
            head_dim = attn.head_dim
            kv_heads = named[k].out_features // head_dim
        else:
            mlp_names = (f"{prefix}.intermediate.dense",), f"{prefix}.output.dense"
            norm, hidden = f"{prefix}.attention.output.LayerNorm", f"{prefix}.intermediate"
            q, k, v = (f"{prefix}.attention.self.{p}" for p in ("query", "key", "value"))
            o = f"{prefix}.attention.output.dense"
            head_dim = layer.attention.self.attention_head_size
            kv_heads = named[k].out_features // head_dim
        if mlp:
            producers, consumer = mlp_names
            width = named[producers[0]].out_features
            members = [m for p in producers for m in _linear_producer(named, p)]
            members.append(Member(f"{consumer}.weight", 1, "consumer"))
            groups.append(FoldGroup(f"{prefix}.mlp", width, members, "mlp", input_norm=norm, mlp_module=hidden))
        if attention:
            g = named[q].out_features // (kv_heads * head_dim)
            members = _linear_producer(named, q, g * head_dim) + _linear_producer(named, k, head_dim)
            members += _linear_producer(named, v, head_dim) + [Member(f"{o}.weight", 1, "consumer", block=g * head_dim)]
            groups.append(FoldGroup(f"{prefix}.attention", kv_heads, members, "heads"))
    return GroupReport(groups, unfolded)


def _linear_producer(named: dict[str, nn.Module], name: str, block: int = 1) -> list[Member]:
    members = [Member(f"{name}.weight", 0, "producer", block=block)]
    if named[name].bias is not None:
        members.append(Member(f"{name}.bias", 0, "producer", block=block))
    return members


def _is_llama_layer(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("self_attn", "mlp")) and all(
        hasattr(m.mlp, p) for p in ("gate_proj", "up_proj", "down_proj")) and all(
        hasattr(m.self_attn, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj"))


def _is_bert_layer(m: nn.Module) -> bool:
    return all(hasattr(m, a) for a in ("attention", "intermediate", "output")) and hasattr(m.attention, "self") \
        and hasattr(m.attention.self, "query") and hasattr(m.intermediate, "dense")
