"""Make layers really narrower: drop channels of a group, or rebuild a narrowed model's shapes.

Removing channel c of a group takes row c from the producer (weight and bias), entry c from each
BatchNorm member, and input slice c from every consumer. A removed channel that still emitted a
constant is folded into the consumers' biases first (docs/self-compression.md#removing-dead-channels), so the network computes
the same function (exactly, away from zero-padded borders).
"""

from __future__ import annotations

import torch
from torch import nn

from big2small.errors import Big2SmallError
from big2small.transforms.coupling import ChannelGroup


@torch.no_grad()
def remove_channels(model: nn.Module, group: ChannelGroup, keep: torch.Tensor,
                    constants: dict[str, torch.Tensor] | None = None) -> int:
    """Drop the channels of `group` where `keep` [width] is False, in place; return how many.

    constants: per consumer, the value each channel feeds it when the channel is removed
    (see coupling.constant_inputs); the removed channels' share is added to the consumer's bias.
    """
    if not group.removable:
        raise Big2SmallError(f"channels of {group.producer} cannot be removed: {group.reason}")
    keep = keep.to(torch.bool).reshape(-1)
    if keep.numel() != group.width:
        raise ValueError(f"keep mask has {keep.numel()} entries, the group has {group.width} channels")
    removed = int((~keep).sum())
    if removed == 0:
        return 0
    if removed == group.width:
        raise Big2SmallError(f"refusing to remove all {group.width} channels of {group.producer}")
    modules = dict(model.named_modules())
    idx = keep.nonzero().reshape(-1)
    for consumer, per_channel in group.consumers.items():
        module = modules[consumer]
        if constants is not None and consumer in constants:
            _fold_into_bias(module, constants[consumer], ~keep)
        w = module.weight.reshape(module.weight.shape[0], group.width, per_channel, *module.weight.shape[2:])
        w = w[:, idx].reshape(module.weight.shape[0], -1, *module.weight.shape[2:])
        replace_tensor(module, "weight", w)
        if isinstance(module, nn.Linear):
            module.in_features = w.shape[1]
        else:
            module.in_channels = w.shape[1]
    producer = modules[group.producer]
    replace_tensor(producer, "weight", producer.weight[idx])
    if producer.bias is not None:
        replace_tensor(producer, "bias", producer.bias[idx])
    if isinstance(producer, nn.Linear):
        producer.out_features = len(idx)
    else:
        producer.out_channels = len(idx)
    for name in group.members:
        norm = modules[name]
        for attr in ("weight", "bias", "running_mean", "running_var"):
            if getattr(norm, attr, None) is not None:
                replace_tensor(norm, attr, getattr(norm, attr)[idx])
        norm.num_features = len(idx)
    group.width = len(idx)
    return removed


def _fold_into_bias(module: nn.Module, constant: torch.Tensor, removed: torch.Tensor) -> None:
    """bias[o] += sum over removed channels c of a_c * (sum of the weights that read c)."""
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
