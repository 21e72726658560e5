"""CompactLinear: a Linear layer that keeps its weight as the codec's stored arrays and multiplies
with them directly (big2small.kernels), never holding the dense weight between calls.

For a few input rows (at most the kernel's FUSED_MAX_ROWS; batch-1 generation: one token at a
time) the fused kernel computes x W^T
from the codes, reading about bits/32 of the dense weight's bytes; for more rows (a prompt) W is
decoded once by the compiled kernel and multiplied densely. A codec that rotates its weight gets
x rotated instead (rotation.rotate_input: a fast Hadamard transform over x, O(n log n)), and the
output rotated back where the output dimension was rotated too. Off the CPU (the kernels are
numba CPU code) the layer decodes with the codec's own decode and multiplies. Results match
decode-then-matmul up to float rounding (sums in another order).

`weight` is a property that decodes (the codec's own decode, the layer's original dtype), so code
that reads `layer.weight` keeps working, and the layer's state_dict holds the dense `weight`
under its original name; loading a state_dict into it is refused, as for on-the-fly layers.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

import torch
from torch import nn

from big2small.errors import Big2SmallError
from big2small.generators import Encoded, generator_for
from big2small.generators import rotation

_STORED = "stored_"


class CompactLinear(nn.Module):
    """y = x W^T + b with W kept as `enc`'s stored arrays (see the module docstring)."""

    def __init__(self, enc: Encoded, kernel: ModuleType, bias: torch.Tensor | None):
        super().__init__()
        if len(enc.layout.shape) != 2 or enc.layout.transposed:
            raise Big2SmallError(f"{enc.method}: a CompactLinear holds a [out, in] weight, not {list(enc.layout.shape)}")
        self.out_features, self.in_features = enc.layout.shape
        self.kernel = kernel
        self.generator = generator_for(enc.config)
        self.template = dataclasses.replace(enc, tensors={})
        resident = {**self.generator.resident_tensors(enc), **kernel.resident_extra(enc)}
        self.names = list(resident)
        for name, tensor in resident.items():
            self.register_buffer(_STORED + name, tensor, persistent=False)  # moved by .to(), not in state_dict
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._prepared: tuple[tuple[int, ...], tuple] | None = None  # (buffer addresses, kernel arguments)
        self.register_state_dict_post_hook(_dense_weight_in_state_dict)
        self.register_load_state_dict_pre_hook(refuse_load)

    def stored(self) -> dict[str, torch.Tensor]:
        """The resident arrays under the codec's names."""
        return {name: getattr(self, _STORED + name) for name in self.names}

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight, decoded by the codec itself (original dtype); not kept."""
        return self.generator.decode(dataclasses.replace(self.template, tensors=self.stored()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        bias = None if self.bias is None else self.bias.to(rows.dtype)
        if rows.device.type != "cpu":
            y = nn.functional.linear(rows, self.weight.to(rows.dtype), bias)
        else:
            y = self._coded_product(rows.float()).to(x.dtype)
            y = y if bias is None else y + bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def _coded_product(self, rows: torch.Tensor) -> torch.Tensor:
        cfg, layout, tensors = self.template.config, self.template.layout, self.stored()
        seed = tensors.get("rotation_seed")
        if seed is not None:
            rows = rotation.rotate_input(rows, cfg, layout, seed)
        prepared = self._kernel_arguments(tensors)
        if rows.shape[0] <= self.kernel.FUSED_MAX_ROWS:
            y = self.kernel.matmul(tensors, self.template, rows, prepared)
        else:
            y = rows @ self.kernel.decode_matrix(tensors, self.template, prepared).T
        return y if seed is None else rotation.unrotate_output(y, cfg, layout, seed)

    def _kernel_arguments(self, tensors: dict[str, torch.Tensor]) -> tuple:
        """The kernels' arguments, prepared once and again only when the buffers moved (.to())."""
        addresses = tuple(t.data_ptr() for t in tensors.values())
        if self._prepared is None or self._prepared[0] != addresses:
            self._prepared = (addresses, self.kernel.arrays(tensors, self.template))
        return self._prepared[1]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, codec={self.template.method}"


def _dense_weight_in_state_dict(module: CompactLinear, state: dict[str, torch.Tensor], prefix: str,
                                local_metadata: dict) -> None:
    state[prefix + "weight"] = module.weight.detach()


def refuse_load(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, *args: object) -> None:
    """A load_state_dict pre-hook for layers whose weight is stored codes: refuse weights for them."""
    if any(k.startswith(prefix) and k[len(prefix):].split(".")[0] in ("weight", "parametrizations") for k in state):
        raise Big2SmallError(f"{prefix}weight decodes on the fly from stored codes: load weights into a "
                             "model restored without on_the_fly=True instead")
