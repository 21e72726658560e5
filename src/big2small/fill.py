"""Putting stored tensors into a model, one tensor at a time: the one path by which decoded weights
enter a model (CompressedModel.apply_to, and restore() straight from an artifact's files).

The model may be a skeleton whose parameters are on PyTorch's meta device (models.load.
build_skeleton: no memory); each parameter is then decoded and put in place in its turn (in the
skeleton's dtype, on the CPU), so that the peak is the filled model plus about one decoded tensor,
never a dense copy beside the model. A model with real tensors (a skeleton a user passes) is
copied into in place, as load_state_dict would. Buffers the artifact does not hold (non-persistent
ones: rotary frequencies, position ids) are the skeleton's own, computed by its constructor.

Tied parameters (one Parameter object under several names, e.g. the embedding and an LM head)
get one new Parameter, shared by every name, so they stay tied. With `on_the_fly`, compressed
layer weights are never decoded here: they become onthefly's decoding parametrisations (or
fused CompactLinear layers), built from the stored arrays alone.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from big2small.errors import Big2SmallError
from big2small.generators import Encoded, decode
from big2small.transforms import reshape_to
from big2small.transforms.layers import restructure
from big2small.transforms.records import TransformRecord


def fill(model: nn.Module, records: Mapping[str, Encoded], read: Callable[[str], Encoded], aliases: Mapping[str, str],
         *, transforms: Sequence[TransformRecord] = (), on_the_fly: bool = False, unpack: bool = False,
         fused: bool = False) -> nn.Module:
    """Put the tensors `records` names into `model` and return it.

    records: every stored tensor's record (its arrays may be absent: only names, shapes and
    methods are read from it); read(name): that tensor with its arrays, called once per tensor, in
    records' order, each dropped before the next. aliases: tied name -> stored name. transforms:
    the artifact's transform records: blocks a LayerDropRecord dropped go first
    (transforms.layers.restructure), then the model's layers are resized to the stored shapes
    (a fold narrowed them). on_the_fly, unpack, fused: as for restore(). Big2SmallError when the model's
    tensors are not the artifact's (names or shapes)."""
    if transforms:
        restructure(model, list(transforms))
        reshape_to(model, {name: tuple(enc.layout.shape) for name, enc in records.items()})
    slots = _slots(model)
    _check_names(slots, records, aliases)
    alias_targets = set(aliases.values())
    decoded_later = [name for name, enc in records.items()
                     if on_the_fly and enc.compressed and name.rpartition(".")[2] == "weight"
                     and name not in alias_targets
                     and isinstance(model.get_submodule(name.rpartition(".")[0])._parameters.get("weight"), nn.Parameter)]
    for name, enc in records.items():
        _check_shape(slots, name, tuple(enc.layout.shape))
    later = set(decoded_later)
    placed: dict[int, torch.Tensor] = {}  # id(skeleton tensor) -> what replaced it (tied names share it)
    for name in records:
        if name not in later:
            enc = read(name)
            value = decode(enc)
            if any(value.untyped_storage().data_ptr() == a.untyped_storage().data_ptr() for a in enc.tensors.values()):
                value = value.clone()  # a stored array held elsewhere (a CompressedModel) stays its own
            _place(slots, name, value, placed)
            del enc, value
    for alias, target in aliases.items():  # a tied name the model holds as a tensor of its own
        if alias in slots and target in slots and target not in later and id(_current(slots, alias)) not in placed:
            _place(slots, alias, _current(slots, target).detach().clone(), placed)
    if decoded_later:  # imported here: onthefly brings the compiled kernels (numba), which a dense fill never needs
        from big2small.onthefly import decode_in_forward
    for name in decoded_later:
        decode_in_forward(model, name, read(name), unpack=unpack, fused=fused)
    left = [name for name in slots if name not in later and _current(slots, name).is_meta]
    if left:
        raise Big2SmallError(f"model does not match the artifact: {left[0]} has no stored value")
    return model


Slots = dict[str, list[tuple[nn.Module, str]]]


def _slots(model: nn.Module) -> Slots:
    """State-dict name -> the (module, attribute) places that hold that tensor: the name's own
    place, plus every other place holding the same tensor object (a tied weight)."""
    places: dict[int, list[tuple[nn.Module, str]]] = {}
    names: dict[str, int] = {}
    persistent = set(model.state_dict(keep_vars=True))
    for module_name, module in model.named_modules(remove_duplicate=False):
        for kind in ("_parameters", "_buffers"):
            for attr, t in getattr(module, kind).items():
                if t is None:
                    continue
                places.setdefault(id(t), [])
                if (module, attr) not in places[id(t)]:
                    places[id(t)].append((module, attr))
                name = f"{module_name}.{attr}" if module_name else attr
                if name in persistent:
                    names[name] = id(t)
    return {name: places[key] for name, key in names.items()}


def _check_names(slots: Slots, records: Mapping[str, Encoded], aliases: Mapping[str, str]) -> None:
    """The model's state-dict names are the artifact's tensors and aliases, as load_state_dict
    checks them."""
    missing = [n for n in slots if n not in records and n not in aliases]
    unexpected = [n for n in [*records, *aliases] if n not in slots]
    if missing or unexpected:
        raise Big2SmallError(
            f"model does not match the artifact: {len(missing)} missing tensor(s) (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )


def _current(slots: Slots, name: str) -> torch.Tensor:
    module, attr = slots[name][0]
    return module._parameters[attr] if attr in module._parameters else module._buffers[attr]


def _check_shape(slots: Slots, name: str, shape: tuple[int, ...]) -> None:
    have = tuple(_current(slots, name).shape)
    if have != shape:
        raise Big2SmallError(f"model does not match the artifact: {name} is {list(have)} in the model, "
                             f"stored {list(shape)}")


def _place(slots: Slots, name: str, value: torch.Tensor, placed: dict[int, torch.Tensor]) -> None:
    """Put `value` at `name`: a meta tensor is replaced (in the skeleton's dtype, on the CPU) at
    every place that holds it; a real one is copied into."""
    old = _current(slots, name)
    if id(old) in placed:  # tied to a tensor already placed
        return
    if not old.is_meta:
        with torch.no_grad():
            old.copy_(value)
        placed[id(old)] = old
        return
    data = value.detach().to(dtype=old.dtype, device="cpu")
    new = nn.Parameter(data, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else data
    for module, attr in slots[name]:
        (module._parameters if attr in module._parameters else module._buffers)[attr] = new
    placed[id(old)] = new
