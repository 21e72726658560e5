"""CompactLinear: a Linear layer that keeps its weight as codes and multiplies with them directly
(big2small.kernels), never holding the dense weight between calls.

The layer holds its kernel's resident arrays: the codec's codes regrouped in lanes of rows
(big2small.kernels.lanes) with fp32 scales, built once from the stored arrays. For a few input
rows (at most the kernel's FUSED_MAX_ROWS; batch-1 generation: one token at a time) the fused
kernel computes x W^T from the codes, reading about bits/32 of the dense weight's bytes; for more
rows (a prompt) W is decoded once by the compiled kernel and multiplied densely. A codec that
rotates its weight gets x rotated instead (kernels.rotation: a fast Hadamard transform over
x, O(n log n)), and the output rotated back where the output dimension was rotated too. The
kernels are numba CPU code: on another device the layer decodes on the CPU and multiplies there
(correct, not fast). Results match decode-then-matmul up to float rounding (sums in another order).

`weight` is a property that decodes (bit for bit the codec's own decode, in the layer's original
dtype), so code that reads `layer.weight` keeps working, and the layer's state_dict holds the
dense `weight` under its original name; loading a state_dict into it is refused, as for
on-the-fly layers.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

import torch
from torch import nn

from big2small.errors import Big2SmallError
from big2small.generators import Encoded, generator_for
from big2small.generators import rotation
from big2small.kernels.lanes import Prepared
from big2small.kernels.rotation import rotate_rows

_STORED = "stored_"


class CompactLinear(nn.Module):
    """y = x W^T + b with W kept as its kernel's resident arrays, built from `enc` (see the module docstring)."""

    def __init__(self, enc: Encoded, kernel: ModuleType, bias: torch.Tensor | None):
        super().__init__()
        if len(enc.layout.shape) != 2 or enc.layout.transposed:
            raise Big2SmallError(f"{enc.method}: a CompactLinear holds a [out, in] weight, not {list(enc.layout.shape)}")
        self.out_features, self.in_features = enc.layout.shape
        self.kernel = kernel
        self.generator = generator_for(enc.config)  # its weight_domain undoes the codec's rotation
        self.template = dataclasses.replace(enc, tensors={})
        resident = kernel.resident(enc)
        self.seed, self.rotated_rows, self.rotated_cols = 0, False, False
        if "rotation_seed" in enc.tensors:
            resident["rotation_seed"] = enc.tensors["rotation_seed"]
            self.seed = int(enc.tensors["rotation_seed"].reshape(-1)[0])
            self.rotated_rows, self.rotated_cols = rotation.rotated_dims(enc.config, enc.layout)
        self.names = list(resident)
        for name, tensor in resident.items():
            self.register_buffer(_STORED + name, tensor, persistent=False)  # moved by .to(), not in state_dict
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        self._prepared: tuple[dict[str, torch.Tensor], Prepared, torch.Tensor | None] | None = None
        self.register_state_dict_post_hook(_dense_weight_in_state_dict)
        self.register_load_state_dict_pre_hook(refuse_load)

    def stored(self) -> dict[str, torch.Tensor]:
        """The resident arrays under the kernel's names (and the codec's rotation seed)."""
        return {name: getattr(self, _STORED + name) for name in self.names}

    @property
    def weight(self) -> torch.Tensor:
        """The dense weight (original dtype), decoded by the kernel as the codec decodes it; not kept."""
        layout, stored = self.template.layout, self.stored()
        device = next(iter(stored.values())).device
        if device.type == "cpu":
            tensors, prepared, _ = self._kernel_arguments()
        else:  # the kernels read CPU memory
            tensors = {name: t.cpu() for name, t in stored.items()}
            prepared = self.kernel.arrays(tensors, self.template)
        matrix = self.kernel.decode_matrix(tensors, self.template, prepared)
        seed = {"rotation_seed": tensors["rotation_seed"]} if "rotation_seed" in tensors else {}
        matrix = self.generator.weight_domain(matrix, dataclasses.replace(self.template, tensors=seed))
        return layout.from_matrix(matrix.contiguous()).to(device=device, dtype=self.template.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if not rows.is_cpu:
            bias = None if self.bias is None else self.bias.to(rows.dtype)
            y = nn.functional.linear(rows, self.weight.to(rows.dtype), bias)
            return y.reshape(*x.shape[:-1], self.out_features)
        # The batch-1 path of generation: every operation here costs about a microsecond per call.
        tensors, prepared, bias = self._prepared or self._kernel_arguments()
        if self.rotated_cols:
            rows = rotate_rows(rows, self.seed, 0, inverse=False)
        if rows.shape[0] <= self.kernel.FUSED_MAX_ROWS:
            y = self.kernel.matmul(tensors, self.template, rows, prepared)
        else:
            y = rows.float() @ self.kernel.decode_matrix(tensors, self.template, prepared).T  # W^T, a view
        if self.rotated_rows:
            y = rotate_rows(y, self.seed, 1, inverse=True)
        if bias is not None:
            y += bias  # y is a fresh fp32 array
        if y.dtype is not x.dtype:
            y = y.to(x.dtype)
        return y.reshape(*x.shape[:-1], self.out_features)

    def _kernel_arguments(self) -> tuple[dict[str, torch.Tensor], Prepared, torch.Tensor | None]:
        """The resident arrays, the kernels' arguments and the bias, prepared at the first call
        (again after .to() moves the buffers: `_apply` forgets them; the kernels' serial or
        parallel builds are chosen then, by numba's thread count); the per-token path then costs
        no Python lookups."""
        if self._prepared is None:
            tensors = self.stored()
            self._prepared = (tensors, self.kernel.arrays(tensors, self.template), self.bias)
        return self._prepared

    def _apply(self, fn, *args, **kwargs):
        self._prepared = None
        return super()._apply(fn, *args, **kwargs)

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
