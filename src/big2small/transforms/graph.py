"""The coupling graph (docs/folding.md#coupling-groups): for every hidden dimension of a model, each
tensor axis its units index, so that a structural transform changes all of them consistently.
Folding merges units, structured pruning and self-compression's channel removal select them
(transforms/apply.py); all three read their groups here.

A group (`CouplingGroup`) is one dimension of `size` units with its members (`Member`): producer
rows, BatchNorm statistics, consumer columns. Two builders:

- **torch.fx-traceable CNNs and MLPs** (`traced_groups`): one walk over the graph gives every tensor
  a channel space, by the handler for its node's kind (`MODULE_HANDLERS`, `FUNCTION_HANDLERS`,
  `METHOD_HANDLERS`, in the spirit of Torch-Pruning's per-layer handlers). A Conv/Linear layer
  consumes its input's space and produces a new one; BatchNorm, depthwise convs, channel-wise
  modules and functions, pooling and flatten keep the space; a residual add, a subtraction or an
  elementwise product joins its operands' spaces into one (union-find). A node no handler accepts
  refuses every space it touches, with the reason, as do the network's input and output: nothing
  is guessed.
- **Hugging Face transformers** (`transformer_groups`, docs/folding.md#transformers): LLaMA-style
  (SwiGLU MLP units; attention heads by KV group, so grouped-query attention works) and BERT-style
  (GELU MLP units; attention heads). The residual stream is left alone.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import fx, nn

Role = Literal["producer", "consumer", "statistic"]

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
# Modules and functions that act on each channel separately and keep dimension 1 as channels.
CHANNELWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
    nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
)
# Pooling is channel-wise too, but not once the channels are flattened with the spatial axes.
POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
)
CHANNELWISE_FUNCTIONS = (
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, torch.sigmoid, F.sigmoid, torch.tanh,
    F.tanh, F.hardswish, F.mish, F.dropout, F.dropout2d, torch.dropout, torch.relu_, F.relu_,
)
POOL_FUNCTIONS = (
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool2d, torch.max_pool1d, torch.max_pool2d,
    torch.max_pool3d, torch.avg_pool1d, torch.adaptive_avg_pool1d,
)
CHANNELWISE_METHODS = ("relu", "sigmoid", "tanh", "contiguous")
# Residual adds, subtractions and elementwise products (squeeze-and-excitation gates).
JOIN_FUNCTIONS = (operator.add, operator.iadd, torch.add, operator.sub, torch.sub, operator.mul, operator.imul, torch.mul)
# Uses of a tensor that read only its metadata.
METADATA_METHODS = ("size", "dim")
METADATA_ATTRIBUTES = ("shape", "dtype", "device")


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
class Trace:
    """How a traced group's channels flow through the model's torch.fx graph, for pushing constants
    through them (transforms.apply.constant_inputs).

    nodes: the nodes that carry the channels, in graph order.
    sources: node -> the layer whose output it is.
    flattened: nodes whose channels are flattened together with the spatial axes.
    readers: layer -> the node it reads (every consumer, and every depthwise conv in the group).
    """

    nodes: list[fx.Node]
    sources: dict[fx.Node, str]
    flattened: set[fx.Node]
    readers: dict[str, fx.Node]


@dataclass
class CouplingGroup:
    """One hidden dimension of `size` units and every member tensor axis.

    kind: "channels" (one source layer), "stream" (a residual stream or gated product: several
        source layers), "mlp", "heads".
    sources: the layers whose outputs the units are (a depthwise conv inside the group is a
        producer member, not a source).
    norms: BatchNorm modules whose entries belong to the units (for Fold-AR).
    fused: (layer, BatchNorm) pairs where the BatchNorm reads the layer's output directly.
    depthwise: depthwise convs inside the group (their `groups` follow the width).
    reason: why the group cannot be narrowed, or None.
    input_norm, mlp_module: transformer MLPs: the norm whose output the MLP reads, and the module
        that computes its hidden units.
    block, residual: transformers: the block (decoder/encoder layer) holding the group, and the
        module whose first input is the residual stream the consumer's output is added to
        (folding/reconstruct.py).
    trace: for traced models, where the channels flow (None for transformer builders).
    """

    name: str
    size: int
    members: list[Member] = field(default_factory=list)
    kind: str = "channels"
    sources: list[str] = field(default_factory=list)
    norms: list[str] = field(default_factory=list)
    fused: list[tuple[str, str]] = field(default_factory=list)
    depthwise: list[str] = field(default_factory=list)
    reason: str | None = None
    input_norm: str | None = None
    mlp_module: str | None = None
    block: str | None = None
    residual: str | None = None
    trace: Trace | None = field(default=None, repr=False, compare=False)

    @property
    def narrowable(self) -> bool:
        return self.reason is None

    foldable = narrowable  # the name folding and the CLI use

    def producers(self) -> list[Member]:
        return [m for m in self.members if m.role == "producer"]

    def consumers(self) -> list[Member]:
        return [m for m in self.members if m.role == "consumer"]


@dataclass
class CouplingReport:
    """The groups of a model; `refused` names structures left alone and why."""

    groups: list[CouplingGroup]
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def narrowable(self) -> list[CouplingGroup]:
        return [g for g in self.groups if g.narrowable]

    foldable = narrowable  # the names folding and the CLI use

    @property
    def unfolded(self) -> dict[str, str]:
        return self.refused


def find_groups(model: nn.Module, *, gqa_mode: str = "kv", mlp: bool = True, attention: bool = True) -> CouplingReport:
    """The coupling groups of `model`: per-architecture builders for Hugging Face transformers,
    torch.fx tracing for everything else."""
    if getattr(getattr(model, "config", None), "model_type", None) is not None:
        return transformer_groups(model, gqa_mode=gqa_mode, mlp=mlp, attention=attention)
    return traced_groups(model)


# --- traced models: the walker ---------------------------------------------------------------

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
        self.sources: dict[fx.Node, str] = {}
        self.readers: dict[str, fx.Node] = {}
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
    a.sources.update(b.sources)
    a.readers.update(b.readers)
    a.reasons += b.reasons
    if a.width is None:
        a.width = b.width
    elif b.width is not None and b.width != a.width:
        a.reasons.append(f"joins {a.width} and {b.width} channels")
    return a


class _LayerTracer(fx.Tracer):
    """Keeps every module a handler knows a leaf, parametrised ones included (their classes are
    generated by torch.nn.utils.parametrize and would otherwise be traced into)."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, tuple(MODULE_HANDLERS)) or super().is_leaf_module(m, qualname)


class _Walk:
    """One walk over a traced graph: the channel space of every tensor node."""

    def __init__(self, model: nn.Module, graph: fx.Graph):
        self.modules = dict(model.named_modules())
        self.calls: dict[str, int] = {}
        for node in graph.nodes:
            if node.op == "call_module":
                self.calls[node.target] = self.calls.get(node.target, 0) + 1
        self.space: dict[fx.Node, _Space] = {}
        self.flat: set[fx.Node] = set()  # nodes whose channels were flattened with the spatial axes
        self.meta: set[fx.Node] = set()  # nodes holding sizes, not tensors
        self.spaces: list[_Space] = []

    def new_space(self, node: fx.Node, name: str, reason: str | None = None) -> _Space:
        s = _Space(name)
        self.spaces.append(s)
        if reason:
            s.reasons.append(reason)
        self.space[node] = s
        return s

    def keep(self, node: fx.Node, src: fx.Node, *, flatten: bool = False) -> None:
        """`node` carries the channels of `src` (flattened if `src` was, or if `flatten`)."""
        self.space[node] = self.space[src].root()
        if flatten or src in self.flat:
            self.flat.add(node)

    def refuse(self, node: fx.Node, reason: str) -> None:
        if node in self.space:
            self.space[node].root().reasons.append(reason)

    def visit(self, node: fx.Node) -> None:
        tensor_args = [a for a in _node_args(node) if a not in self.meta]
        if node.op == "placeholder":
            self.new_space(node, "input", "it carries the network input")
        elif node.op == "output":
            for a in tensor_args:
                self.refuse(a, "it reaches the model's output")
        elif _is_meta(node, self.meta):
            self.meta.add(node)
        elif node.op == "get_attr":
            self.new_space(node, node.name, f"it comes from the tensor {node.target}, used directly")
        else:
            handler = self.handler(node)
            src, others = (tensor_args[0], tensor_args[1:]) if tensor_args else (None, [])
            if handler is None or src not in self.space or not handler(self, node, src, others):
                what = _describe(node, self.modules)
                for a in tensor_args:
                    self.refuse(a, f"it feeds {what}")
                self.new_space(node, node.name, f"it comes from {what}")

    def handler(self, node: fx.Node) -> Handler | None:
        if node.op == "call_module":
            return next((MODULE_HANDLERS[c] for c in type(self.modules[node.target]).__mro__ if c in MODULE_HANDLERS), None)
        if node.op == "call_function":
            return FUNCTION_HANDLERS.get(node.target)
        if node.op == "call_method":
            return METHOD_HANDLERS.get(node.target)
        return None


# --- traced models: the handlers -------------------------------------------------------------
# A handler gets the node, its first tensor argument `src` (whose space is known) and the other
# tensor arguments; it gives the node a space and returns True, or returns False when it does not
# understand this use (the node is then refused with the reason).

Handler = Callable[[_Walk, fx.Node, fx.Node, list], bool]


def _layer(walk: _Walk, node: fx.Node, src: fx.Node, others: list) -> bool:
    """A Conv/Linear layer: consumer of its input's space, source of a new one. A depthwise conv
    keeps its input's space (its rows are producer members); a grouped conv refuses both."""
    module = walk.modules[node.target]
    shared = walk.calls[node.target] > 1
    s_in = walk.space[src].root()
    weight = f"{node.target}.weight"
    bias = f"{node.target}.bias" if module.bias is not None else None
    groups = getattr(module, "groups", 1)
    if groups > 1 and groups == module.in_channels == module.out_channels and src not in walk.flat:
        walk.space[node] = s_in
        s_in.members.append(Member(weight, 0, "producer"))
        if bias:
            s_in.members.append(Member(bias, 0, "producer"))
        s_in.depthwise.append(node.target)
        s_in.readers[node.target] = src
        if shared:
            s_in.reasons.append(f"{node.target} is called more than once")
        return True
    if groups > 1:
        s_in.reasons.append(f"it feeds the grouped conv {node.target}")
    elif src in walk.flat:
        if isinstance(module, nn.Linear):
            s_in.flat_consumers.append((weight, module.in_features))
            s_in.readers[node.target] = src
        else:
            s_in.reasons.append(f"flattened channels feed the conv {node.target}")
    else:
        s_in.members.append(Member(weight, 1, "consumer"))
        s_in.readers[node.target] = src
    if shared:
        s_in.reasons.append(f"{node.target} is called more than once")
    out = walk.new_space(node, node.target)
    out.width = module.out_features if isinstance(module, nn.Linear) else module.out_channels
    out.members.append(Member(weight, 0, "producer"))
    if bias:
        out.members.append(Member(bias, 0, "producer"))
    out.sources[node] = node.target
    if groups > 1:
        out.reasons.append(f"it comes from the grouped conv {node.target}")
    if shared:
        out.reasons.append(f"{node.target} is called more than once")
    return True


def _batchnorm(walk: _Walk, node: fx.Node, src: fx.Node, others: list) -> bool:
    """BatchNorm: its affine entries are producers, its running statistics statistics."""
    if src in walk.flat:
        return False
    module = walk.modules[node.target]
    walk.keep(node, src)
    s = walk.space[node]
    if module.affine:
        s.members += [Member(f"{node.target}.weight", 0, "producer"), Member(f"{node.target}.bias", 0, "producer")]
    if module.track_running_stats:
        s.members += [Member(f"{node.target}.running_mean", 0, "statistic"),
                      Member(f"{node.target}.running_var", 0, "statistic")]
    s.norms.append(node.target)
    if src.op == "call_module" and isinstance(walk.modules[src.target], LAYER_TYPES):
        s.fused.append((src.target, node.target))
    if walk.calls[node.target] > 1:
        s.reasons.append(f"{node.target} is called more than once")
    return True


def _channelwise(walk: _Walk, node: fx.Node, src: fx.Node, others: list) -> bool:
    """An activation, dropout or identity: each channel on its own."""
    if others:
        return False
    walk.keep(node, src)
    return True


def _pool(walk: _Walk, node: fx.Node, src: fx.Node, others: list) -> bool:
    """Pooling: channel-wise over the spatial axes, so not once they are flattened with the channels."""
    if src in walk.flat:
        return False
    return _channelwise(walk, node, src, others)


def _flatten(walk: _Walk, node: fx.Node, src: fx.Node, others: list) -> bool:
    """nn.Flatten(), torch.flatten(x, 1), x.flatten(1), x.view(n, -1) or x.reshape(n, -1): the
    channels become column blocks of a following Linear layer (its spatial factor)."""
    if others or not _flattens_channels(node, walk.modules):
        return False
    walk.keep(node, src, flatten=True)
    return True


def _join(walk: _Walk, node: fx.Node, src: fx.Node, others: list) -> bool:
    """A residual add, subtraction or elementwise product: both operands index the same channels."""
    if len(others) > 1:
        return False
    s = walk.space[src].root()
    if others and others[0] in walk.space:
        if (src in walk.flat) != (others[0] in walk.flat):
            s.reasons.append(f"{node.name} joins flattened and unflattened channels")
        s = _union(s, walk.space[others[0]])
    walk.space[node] = s
    if src in walk.flat:
        walk.flat.add(node)
    return True


MODULE_HANDLERS: dict[type, Handler] = {
    **dict.fromkeys(LAYER_TYPES, _layer),
    **dict.fromkeys(NORM_TYPES, _batchnorm),
    **dict.fromkeys(CHANNELWISE_MODULES, _channelwise),
    **dict.fromkeys(POOL_MODULES, _pool),
    nn.Flatten: _flatten,
}
FUNCTION_HANDLERS: dict[Callable, Handler] = {
    **dict.fromkeys(CHANNELWISE_FUNCTIONS, _channelwise),
    **dict.fromkeys(POOL_FUNCTIONS, _pool),
    **dict.fromkeys(JOIN_FUNCTIONS, _join),
    torch.flatten: _flatten,
}
METHOD_HANDLERS: dict[str, Handler] = {
    **dict.fromkeys(CHANNELWISE_METHODS, _channelwise),
    **dict.fromkeys(("flatten", "view", "reshape"), _flatten),
}


def traced_groups(model: nn.Module) -> CouplingReport:
    """Trace `model` with torch.fx and return its channel coupling groups."""
    try:
        graph = _LayerTracer().trace(model)
    except Exception as exc:  # fx raises many types for untraceable Python; report, never crash
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return CouplingReport([], {type(model).__name__: f"torch.fx cannot trace it: {first}"})
    walk = _Walk(model, graph)
    for node in graph.nodes:
        walk.visit(node)
    return _finish(walk, list(graph.nodes))


def _node_args(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), lambda a: out.append(a) or a)
    return out


def _is_meta(node: fx.Node, meta: set[fx.Node]) -> bool:
    """Sizes and shapes, and arithmetic on them: not channel tensors."""
    if node.op == "call_method" and node.target in METADATA_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in METADATA_ATTRIBUTES:
        return True
    args = _node_args(node)
    return node.op == "call_function" and bool(args) and all(a in meta for a in args)


def _flattens_channels(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether `node` flattens everything after the batch axis (the channels first)."""
    if node.op == "call_module":
        module = modules[node.target]
        return module.start_dim == 1 and module.end_dim == -1
    if node.target in (torch.flatten, "flatten"):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        end = node.args[2] if len(node.args) > 2 else node.kwargs.get("end_dim", -1)
        return start == 1 and end == -1
    shape = node.args[1:]  # view / reshape
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return len(shape) == 2 and shape[1] == -1 and _is_batch_size(shape[0])


def _is_batch_size(arg) -> bool:
    """x.size(0), x.shape[0] or a literal (a fixed batch): the leading dimension of the reshape."""
    if isinstance(arg, int):
        return True
    if isinstance(arg, fx.Node):
        if arg.op == "call_method" and arg.target == "size" and arg.args[1:] == (0,):
            return True
        if arg.op == "call_function" and arg.target is operator.getitem and arg.args[1] == 0:
            src = arg.args[0]
            return isinstance(src, fx.Node) and (
                (src.op == "call_function" and src.target is getattr and src.args[1] == "shape")
                or (src.op == "call_method" and src.target == "size" and len(src.args) == 1)
            )
    return False


def _describe(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(modules[node.target]).__name__})"
    name = getattr(node.target, "__name__", str(node.target))
    return "a concatenation" if name == "cat" else f"{name} ({node.name})"


def _finish(walk: _Walk, nodes: list[fx.Node]) -> CouplingReport:
    order = {n: i for i, n in enumerate(nodes)}
    roots: list[_Space] = []
    for s in walk.spaces:
        r = s.root()
        if r not in roots:
            roots.append(r)
    groups, refused = [], {}
    for r in roots:
        if not r.sources:
            continue
        width = r.width or 0
        members = list(r.members)
        reasons = list(dict.fromkeys(r.reasons))
        for weight, fan_in in r.flat_consumers:
            if width and fan_in % width == 0:
                members.append(Member(weight, 1, "consumer", spatial=fan_in // width))
            else:
                reasons.append(f"{weight} reads {fan_in} inputs from {width} channels")
        source_nodes = sorted(r.sources, key=order.__getitem__)  # in graph order: named after the first
        sources = list(dict.fromkeys(r.sources[n] for n in source_nodes))
        if any(isinstance(walk.modules[p], nn.Linear) for p in sources) and any(m.spatial > 1 for m in members):
            # A Linear layer's features are its last axis; flattened with other axes, they are not
            # laid out channel-major as a consumer's spatial factor assumes.
            reasons.append("a Linear layer's outputs are flattened together with other axes")
        if not any(m.role == "consumer" for m in members) and not reasons:
            reasons.append("its output reaches no Conv/Linear layer")
        name = sources[0] if len(source_nodes) == 1 else f"stream:{sources[0]}"
        carried = [n for n in nodes if n in walk.space and walk.space[n].root() is r]
        trace = Trace(carried, {n: r.sources[n] for n in source_nodes}, {n for n in carried if n in walk.flat},
                      dict(r.readers))
        group = CouplingGroup(name, width, members, "channels" if len(source_nodes) == 1 else "stream", sources,
                              list(dict.fromkeys(r.norms)), r.fused, r.depthwise, "; ".join(reasons) or None,
                              trace=trace)
        groups.append(group)
        if group.reason:
            refused[name] = group.reason
    return CouplingReport(groups, refused)


# --- Hugging Face transformers ---------------------------------------------------------------

def transformer_groups(model: nn.Module, *, gqa_mode: str = "kv", mlp: bool = True, attention: bool = True) -> CouplingReport:
    """Groups of a LLaMA-style or BERT-style Hugging Face model (docs/folding.md#transformers): one per MLP
    (its intermediate units) and one per attention layer (whole heads; for grouped-query attention
    a unit is a KV head with its query heads)."""
    if gqa_mode != "kv":
        raise ValueError(f"gqa_mode {gqa_mode!r} is not supported (only 'kv')")
    config = model.config
    named = dict(model.named_modules())
    groups, refused = [], {}
    layers = [(n, named[n]) for n in transformer_blocks(model)]
    if not layers:
        return CouplingReport([], {type(model).__name__: f"no folding builder for model_type {config.model_type!r}"})
    refused["residual stream"] = "not folded: the embeddings, every norm and the LM head share it (docs/folding.md#transformers)"
    for prefix, layer in layers:
        if _is_llama_layer(layer):
            mlp_names = (f"{prefix}.mlp.gate_proj", f"{prefix}.mlp.up_proj"), f"{prefix}.mlp.down_proj"
            norm, hidden = f"{prefix}.post_attention_layernorm", f"{prefix}.mlp"
            # pre-norm: each sub-block's norm reads the residual stream its output is added to
            residuals = f"{prefix}.input_layernorm", norm
            attn = layer.self_attn
            q, k, v, o = (f"{prefix}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj"))
            head_dim = attn.head_dim
            kv_heads = named[k].out_features // head_dim
        else:
            mlp_names = (f"{prefix}.intermediate.dense",), f"{prefix}.output.dense"
            norm, hidden = f"{prefix}.attention.output.LayerNorm", f"{prefix}.intermediate"
            # post-norm: the residual is the sub-block's own input (added before its LayerNorm)
            residuals = f"{prefix}.attention.self", f"{prefix}.intermediate"
            q, k, v = (f"{prefix}.attention.self.{p}" for p in ("query", "key", "value"))
            o = f"{prefix}.attention.output.dense"
            head_dim = layer.attention.self.attention_head_size
            kv_heads = named[k].out_features // head_dim
        if mlp:
            producers, consumer = mlp_names
            width = named[producers[0]].out_features
            members = [m for p in producers for m in _linear_producer(named, p)]
            members.append(Member(f"{consumer}.weight", 1, "consumer"))
            groups.append(CouplingGroup(f"{prefix}.mlp", width, members, "mlp", list(producers), input_norm=norm,
                                        mlp_module=hidden, block=prefix, residual=residuals[1]))
        if attention:
            g = named[q].out_features // (kv_heads * head_dim)
            members = _linear_producer(named, q, g * head_dim) + _linear_producer(named, k, head_dim)
            members += _linear_producer(named, v, head_dim) + [Member(f"{o}.weight", 1, "consumer", block=g * head_dim)]
            groups.append(CouplingGroup(f"{prefix}.attention", kv_heads, members, "heads", [q, k, v], block=prefix,
                                        residual=residuals[0]))
    return CouplingReport(groups, refused)


def transformer_blocks(model: nn.Module) -> list[str]:
    """The names of a Hugging Face model's LLaMA-style or BERT-style blocks, in forward order."""
    return [n for n, m in model.named_modules() if _is_llama_layer(m) or _is_bert_layer(m)]


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
