"""Raw storage: the tensor as it is, in a float dtype. Used for everything left uncompressed."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from big2small.errors import Big2SmallError
from big2small.generators.base import DTYPE_BITS, ArrayForm, Encoded, Generator, GeneratorConfig, register
from big2small.generators.straight_through import straight_through
from big2small.layout import MatrixLayout

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class RawConfig(GeneratorConfig):
    """Store the tensor uncompressed. `dtype`: float32, float16, bfloat16, or "same" (its own)."""

    method = "raw"
    stores_dense = True
    dtype: str = "float16"

    def validate(self) -> None:
        if self.dtype != "same" and self.dtype not in STORAGE_DTYPES:
            raise Big2SmallError(f"raw: dtype must be one of {sorted(STORAGE_DTYPES)} or 'same', got {self.dtype!r}")


def storage_dtype(config: RawConfig, dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor of `dtype` is stored in: the config's for a floating tensor, else its own."""
    if config.dtype == "same" or not dtype.is_floating_point:
        return dtype
    return STORAGE_DTYPES[config.dtype]


@register
class RawGenerator(Generator):
    config_type = RawConfig

    def encode(self, weight: torch.Tensor, layout: MatrixLayout | None = None, *, seed: int = 0) -> Encoded:
        # Raw storage also keeps integer buffers (BatchNorm's num_batches_tracked) and any shape.
        layout = layout or MatrixLayout(tuple(weight.shape))
        self.check_layout(weight, layout)
        stored = weight.detach().to(storage_dtype(self.config, weight.dtype)).contiguous().clone()
        return Encoded(
            method=self.config.method, config=self.config, layout=layout, dtype=weight.dtype,
            tensors={"values": stored}, bits={"values": stored.numel() * stored.element_size() * 8},
        )

    # Quantisation-aware distillation (big2small.distill.qat) may also train tensors stored raw
    # (DistillConfig.train_vectors: normalisation gains and biases): their values, rounded to the
    # storage dtype on every forward pass with straight-through gradients, stored back in it.
    trainable = "values"

    def train_start(self, matrix: torch.Tensor, enc: Encoded) -> dict[str, torch.Tensor]:
        """The stored values (fp32 matrix view): training starts from what the artifact holds."""
        return {"raw": self.decode_matrix(enc).clone()}

    def train_decode(self, matrix: torch.Tensor, enc: Encoded, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The values rounded to the storage dtype (fp32), gradients straight through."""
        values = params["raw"]
        return straight_through(values, values.detach().to(enc.tensors["values"].dtype).float())

    def train_encode(self, matrix: torch.Tensor, enc: Encoded, params: dict[str, torch.Tensor]) -> Encoded:
        """`enc` holding the trained values in its storage dtype: the same bits."""
        stored = enc.layout.from_matrix(params["raw"].detach()).to(enc.tensors["values"].dtype).contiguous()
        return replace(enc, tensors={"values": stored})

    def encode_matrix(self, matrix, layout, *, seed):  # pragma: no cover - encode is overridden
        raise NotImplementedError

    def decode_matrix(self, enc: Encoded) -> torch.Tensor:
        return enc.layout.to_matrix(enc.tensors["values"].float())

    def decode(self, enc: Encoded, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        return enc.tensors["values"].reshape(enc.layout.shape).to(dtype or enc.dtype)

    @classmethod
    def stored_form(cls, enc: Encoded) -> dict[str, ArrayForm]:
        return {"values": (storage_dtype(enc.config, enc.dtype), enc.layout.shape)}

    @classmethod
    def stored_bits(cls, enc: Encoded) -> int:
        return enc.numel * storage_dtype(enc.config, enc.dtype).itemsize * 8

    @classmethod
    def bits_for(cls, config: RawConfig, layout: MatrixLayout) -> int:
        width = 32 if config.dtype == "same" else DTYPE_BITS[STORAGE_DTYPES[config.dtype]]
        return layout.numel * width
