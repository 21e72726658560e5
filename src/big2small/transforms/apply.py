"""The one apply step of every structural transform: a coupling group's n units become k
(docs/folding.md#merge), every member changed alike.

    producers and statistics:   P <- A P      (A [k, n], per unit row block)
    consumers:                  W <- W B^T    (B [k, n], per unit column block)

Folding merges (A the cluster-mean matrix, B the cluster-membership matrix); structured pruning
and self-compression's channel removal select (`select`: A = B = the kept units' selection
matrix), after folding what a removed channel still emits into its consumers' biases
(`constant_inputs`, docs/self-compression.md#removing-dead-channels). Every module is then resized
to its new tensors (`sync_sizes`); `reshape_to` gives an original-width skeleton a narrowed
model's shapes.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from big2small.errors import Big2SmallError
from big2small.transforms.graph import CouplingGroup

SPATIAL_SIZE = 32  # side of the constant images pushed through a group (pooling must not empty them)


@torch.no_grad()
def apply(model: nn.Module, group: CouplingGroup, A: torch.Tensor, B: torch.Tensor) -> None:
    """Replace the group's n units by k, in place: producers and statistics [n * block, ...] by
    A @ P per unit row block, consumers [O, n * block * spatial, ...] by W @ B^T per unit column
    block (A, B: [k, n]). Computed in at least fp32, stored in each tensor's own dtype; modules are
    resized to their new tensors and `group.size` becomes k."""
    modules = dict(model.named_modules())
    n, k = group.size, A.shape[0]
    for m in group.members:
        module_name, _, attr = m.param.rpartition(".")
        t = named_tensor(modules, m.param).detach()
        dtype = torch.promote_types(t.dtype, torch.float32)
        if m.axis == 0:
            rows = t.to(dtype).reshape(n, -1)
            new = (A.to(dtype) @ rows).reshape(k * (t.shape[0] // n), *t.shape[1:])
        else:
            cols = t.to(dtype).reshape(t.shape[0], n, -1)
            new = torch.einsum("kn,onr->okr", B.to(dtype), cols).reshape(t.shape[0], -1, *t.shape[2:])
        replace_tensor(modules[module_name], attr, new.to(t.dtype))
    for name in dict.fromkeys(m.param.rpartition(".")[0] for m in group.members):
        sync_sizes(modules[name])
    group.size = k


@torch.no_grad()
def select(model: nn.Module, group: CouplingGroup, keep: torch.Tensor,
           constants: dict[str, torch.Tensor] | None = None) -> int:
    """Keep the units of `group` where `keep` [size] is True, in place (apply with the kept units'
    selection matrix); return how many were removed.

    constants: per consumer layer, the value [size] each unit feeds it once removed (see
    `constant_inputs`); the removed units' share is added to the consumer's bias (created if missing).
    """
    if not group.narrowable:
        raise Big2SmallError(f"{group.name} cannot be narrowed: {group.reason}")
    keep = keep.to(torch.bool).reshape(-1)
    if keep.numel() != group.size:
        raise ValueError(f"keep mask has {keep.numel()} entries, the group has {group.size} units")
    removed = int((~keep).sum())
    if removed == 0:
        return 0
    if removed == group.size:
        raise Big2SmallError(f"refusing to remove all {group.size} units of {group.name}")
    modules = dict(model.named_modules())
    for m in group.consumers():
        layer = m.param.rpartition(".")[0]
        if constants is not None and layer in constants:
            _fold_into_bias(modules[layer], constants[layer], ~keep)
    kept = keep.nonzero().reshape(-1)
    selection = torch.zeros(len(kept), group.size, device=keep.device)
    selection[torch.arange(len(kept), device=keep.device), kept] = 1.0
    apply(model, group, selection, selection)
    return removed


def _fold_into_bias(module: nn.Module, constant: torch.Tensor, removed: torch.Tensor) -> None:
    """bias[o] += sum over removed units c of a_c * (sum of the weights that read c)."""
    w = module.weight.float()
    width = constant.numel()
    per_input = w.reshape(w.shape[0], width, -1).sum(-1)  # [O, width]: taps and spatial columns summed
    a = torch.where(removed, constant.float(), torch.zeros_like(constant.float()))
    if not bool((a.abs() > 1e-8).any()):
        return
    shift = per_input @ a
    if module.bias is None:
        module.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=module.weight.dtype, device=w.device))
    module.bias.add_(shift.to(module.bias.dtype))


@torch.no_grad()
def constant_inputs(model: nn.Module, group: CouplingGroup, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What each layer reading the group's channels (consumers and depthwise convs) receives when
    each source layer outputs the constant `values[layer]` [size] everywhere (eval mode):
    layer name -> [size]. Residual adds and gates combine their operands' constants.

    Used to fold a removed channel's constant output into the consumers' biases. With zero
    padding, pooling and convolutions see fewer taps at the borders, so the fold is exact only
    away from them; the value is read at the centre.
    """
    trace = group.trace
    if trace is None:
        raise Big2SmallError(f"{group.name}: constants flow only through a traced graph (torch.fx)")
    modules = dict(model.named_modules())
    env: dict = {}
    for node, layer in trace.sources.items():
        source = modules[layer]
        spatial = 0 if isinstance(source, nn.Linear) else source.weight.ndim - 2
        x = values[layer].float().reshape(1, -1, *([1] * spatial))
        env[node] = x.expand(1, group.size, *([SPATIAL_SIZE] * spatial)).contiguous()
    was_training = model.training
    model.eval()
    try:
        for node in trace.nodes:
            if node in env:
                continue
            if node in trace.flattened and node.args[0] not in trace.flattened:  # where the channels are flattened
                env[node] = env[node.args[0]]  # keep the channel axis: values are constant over space
                continue
            args, kwargs = _substitute(node, env, group)
            if node.op == "call_module":
                env[node] = modules[node.target](*args, **kwargs)
            elif node.op == "call_function":
                env[node] = node.target(*args, **kwargs)
            else:
                env[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
    finally:
        model.train(was_training)
    out = {}
    for layer, node in trace.readers.items():
        v = env[node]
        centre = (0, slice(None)) + tuple(s // 2 for s in v.shape[2:])
        out[layer] = v[centre].reshape(group.size)
    return out


def _substitute(node: fx.Node, env: dict, group: CouplingGroup) -> tuple[tuple, dict]:
    """The node's arguments with the group's constants in place of its nodes."""
    def value(a: fx.Node):
        if a not in env:
            raise Big2SmallError(f"{group.name}: {node.name} also reads {a.name}, which is not a constant of the group")
        return env[a]

    return fx.node.map_arg(node.args, value), fx.node.map_arg(node.kwargs, value)


def named_tensor(modules: dict[str, nn.Module], name: str) -> torch.Tensor:
    """The parameter or buffer `name` ("module.path.attribute") of a model's `modules`."""
    module_name, _, attr = name.rpartition(".")
    return getattr(modules[module_name], attr)


def replace_tensor(module: nn.Module, attr: str, value: torch.Tensor) -> None:
    """Put `value` in place of a parameter or buffer of a different shape (keeps requires_grad)."""
    if attr in module._parameters:
        module._parameters[attr] = nn.Parameter(value.contiguous(), requires_grad=module._parameters[attr].requires_grad)
    else:
        module._buffers[attr] = value.contiguous()


def sync_sizes(module: nn.Module) -> None:
    """Make a Linear/Conv/BatchNorm module's size attributes follow its (new) tensors. A depthwise
    conv (groups = in = out channels) stays depthwise at its new width."""
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = module.weight.shape[:2]
    elif isinstance(module, nn.modules.conv._ConvNd):
        shape = module.weight.shape
        if module.groups > 1 and module.groups == module.in_channels == module.out_channels and shape[1] == 1:
            module.groups = shape[0]
        module.out_channels, module.in_channels = shape[0], shape[1] * module.groups
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        ref = module.running_mean if module.running_mean is not None else module.weight
        if ref is not None:
            module.num_features = ref.shape[0]


def reshape_to(model: nn.Module, shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """Give `model`'s tensors the stored shapes of a narrowed model (in place), so that its
    state_dict loads: Linear/Conv/BatchNorm sizes follow their tensors, and a bias a fold created
    is added. Tensors not in `shapes` are left alone."""
    modules = dict(model.named_modules())
    current = model.state_dict()
    for name, shape in shapes.items():
        module_name, _, attr = name.rpartition(".")
        module = modules.get(module_name)
        if module is None or (name in current and tuple(current[name].shape) == tuple(shape)):
            continue
        if name not in current and not (attr == "bias" and getattr(module, "bias", 0) is None):
            continue
        ref = current.get(name, module.weight)
        if attr not in module._parameters and attr not in module._buffers:
            continue
        fresh = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(fresh)
        else:
            module._buffers[attr] = fresh
        sync_sizes(module)
    return model
