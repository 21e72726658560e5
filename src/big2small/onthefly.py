"""On-the-fly decoding: compressed layers keep only their compact tensors and regenerate the weight
inside `forward`.

Each compressed `weight` becomes a `torch.nn.utils.parametrize` parametrisation whose originals are
the generator's stored tensors, so the model stays an ordinary `nn.Module` (any layer with a
`weight`: Linear, Conv, Embedding, HF Conv1D), `.to(device)` moves the compact tensors, and each
access to `module.weight` decodes it (fp32, cast to the original dtype) and lets it go after use.
Resident memory is then the compressed model plus the largest decoded layer; FLOPs are unchanged
and every forward pays the decoding. Inside `torch.nn.utils.parametrize.cached()` each weight is
decoded once per context instead (dense speed and dense memory for its duration).

The model's `state_dict()` is the dense one, under the original names (`layer.weight`, decoded),
not parametrize's `layer.parametrizations.weight.original0`: so `save_pretrained` and
`torch.save(model.state_dict())` write a model that Hugging Face and `load_state_dict` read back
as it is. Loading a state_dict into the on-the-fly model itself is refused: its weights are codes.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from torch.nn.utils import parametrize

from big2small.compact import CompactLinear, refuse_load
from big2small.generators import Encoded, generator_for
from big2small.kernels import kernel_for


class StoredWeight(nn.Module):
    """Parametrisation weight = generator.decode(stored tensors)."""

    def __init__(self, enc: Encoded, resident: dict[str, torch.Tensor]):
        super().__init__()
        self.generator = generator_for(enc.config)
        self.template = dataclasses.replace(enc, tensors={})
        self.names = list(resident)
        self._resident = [resident[n] for n in self.names]  # handed over once, by right_inverse

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        enc = dataclasses.replace(self.template, tensors=dict(zip(self.names, tensors)))
        return self.generator.decode(enc)

    def right_inverse(self, weight: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Called once at registration: the dense weight is dropped in favour of the stored tensors.
        resident, self._resident = self._resident, []
        if not resident:
            raise RuntimeError("a StoredWeight cannot be re-assigned; compress the new weight instead")
        return tuple(resident)


def decode_in_forward(model: nn.Module, name: str, enc: Encoded, *, unpack: bool = False, fused: bool = False) -> None:
    """Make the layer weight `name` of `model` (a compressed `weight` Parameter, possibly on the
    meta device: it is never read) decode from `enc`'s stored arrays on each access. The loading
    itself goes through big2small.fill (CompressedModel.apply_to, restore with on_the_fly=True).

    unpack: keep bit-packed codes unpacked in memory where the generator supports it (e.g. hyper:
    int32 indices, 32 bits per pair instead of its bit width), which makes each decode cheaper.
    fused: an nn.Linear whose codec has compiled kernels (big2small.kernels: uniform, trellis,
    hyper without rings) becomes a CompactLinear, which multiplies with the stored codes directly
    (big2small.compact; `unpack` does not apply to it; its bias must already be in place)."""
    module_name = name.rpartition(".")[0]
    module = model.get_submodule(module_name)
    kernel = kernel_for(enc) if fused and type(module) is nn.Linear else None
    if kernel is not None:
        parent_name, _, child = module_name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, CompactLinear(enc, kernel, module.bias))
        return
    resident = generator_for(enc.config).resident_tensors(enc, unpack=unpack)
    module.weight.requires_grad_(False)  # integer codes cannot carry gradients
    parametrize.register_parametrization(module, "weight", StoredWeight(enc, resident), unsafe=True)
    module.register_state_dict_post_hook(_dense_weight_in_state_dict)
    module.register_load_state_dict_pre_hook(refuse_load)


_STORED_PREFIX = "parametrizations.weight."


def _dense_weight_in_state_dict(module: nn.Module, state: dict[str, torch.Tensor], prefix: str,
                                local_metadata: dict) -> None:
    """A decoding module's entries in a state_dict: its decoded `weight` (original dtype) in place
    of the stored tensors, so that the state_dict is the dense model's."""
    for key in [k for k in state if k.startswith(prefix + _STORED_PREFIX)]:
        del state[key]
    state[prefix + "weight"] = module.weight.detach()


def resident_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer the model holds (compact tensors included)."""
    tensors = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return sum(t.numel() * t.element_size() for t in tensors.values())
