"""The generator abstraction: every storage codec is a small set of compact tensors (phi) that
regenerates a weight tensor, W_hat = g(phi).

A method is a `GeneratorConfig` subclass (typed, versioned, JSON round-trip) plus a `Generator` subclass that
encodes a tensor into an `Encoded` record and decodes it back. The registry maps a method name to
both, so the artifact can rebuild any generator from its manifest entry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from big2small.config import Config
from big2small.errors import Big2SmallError
from big2small.layout import MatrixLayout

# Each encoded tensor pays this for its shape and method parameters (docs/bit-accounting.md#the-bit-ledger).
HEADER_BITS = 128

DTYPE_BITS = {torch.float32: 32, torch.float16: 16, torch.bfloat16: 16, torch.float64: 64}


@dataclass
class GeneratorConfig(Config):
    """Base of every method's config (big2small.config: JSON round trip, versioned). Subclasses are
    dataclasses with a class-level `method`, the tag of their JSON form ({"method": "uniform", ...})."""

    tag_key: ClassVar[str] = "method"
    method: ClassVar[str] = ""
    # True for the one config that stores a tensor as it is (raw): its bits are not "compressed".
    stores_dense: ClassVar[bool] = False

    @classmethod
    def variants(cls) -> dict[str, type[Config]]:
        """The registered methods' configs (a method is known once its generator is registered)."""
        return {method: gen.config_type for method, gen in REGISTRY.items()}


@dataclass
class Encoded:
    """One tensor in stored form.

    `tensors` hold exactly what is written to disk; `meta` holds the few integers the decoder needs
    (JSON, in the manifest); `bits` itemises every stored bit ("header" included).
    """

    method: str
    config: GeneratorConfig
    layout: MatrixLayout
    dtype: torch.dtype
    tensors: dict[str, torch.Tensor]
    bits: dict[str, int]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def compressed(self) -> bool:
        """False for a tensor stored as it is (raw)."""
        return not self.config.stores_dense

    @property
    def total_bits(self) -> int:
        return sum(self.bits.values())

    @property
    def numel(self) -> int:
        return self.layout.numel

    @property
    def payload_bytes(self) -> int:
        """Bytes of the stored tensors themselves, as written to disk; parts shared with another
        tensor (`meta["shared_parts"]`, written once, with their owner) are not counted again."""
        shared = set(self.meta.get("shared_parts", ()))
        return sum(t.numel() * t.element_size() for k, t in self.tensors.items() if k not in shared)


class Generator(ABC):
    """Base class of every storage codec.

    Subclasses set `config_type`, implement `encode_matrix` and `decode_matrix` (the fp32 matrix
    view in and out) and `bits_for`, which predicts the exact stored bits of a config on a tensor
    layout without encoding (used to meet a size target). `encode` checks the input once for all
    methods; a generator that stores a part with another one (the INR's residual) calls that one's
    public `encode_matrix`.
    """

    config_type: ClassVar[type[GeneratorConfig]]
    # True when encoding many tensors in one call is much faster than one at a time (the INR fits
    # all tiles of all tensors in shared batched matmuls); compress() then hands them over together.
    encodes_jointly: ClassVar[bool] = False

    def __init__(self, config: GeneratorConfig):
        config.validate()
        self.config = config

    def encode(self, weight: torch.Tensor, layout: MatrixLayout | None = None, *, seed: int = 0) -> Encoded:
        """Encode `weight` (any float dtype) into its stored form."""
        layout = layout or MatrixLayout(tuple(weight.shape))
        enc = self.encode_matrix(self.matrix_view(weight, layout), layout, seed=seed)
        enc.dtype = weight.dtype
        return enc

    @classmethod
    def matrix_view(cls, weight: torch.Tensor, layout: MatrixLayout) -> torch.Tensor:
        """The fp32 matrix view that encoding works on, after the input checks every method shares."""
        cls.check_input(weight, layout)
        return layout.to_matrix(weight.detach().float())

    @classmethod
    def check_input(cls, weight: torch.Tensor, layout: MatrixLayout) -> None:
        """Refuse what no method can encode: non-float or non-finite weights, a layout of another shape."""
        if not weight.is_floating_point():
            raise Big2SmallError(f"{cls.config_type.method}: cannot encode a {weight.dtype} tensor")
        if not torch.isfinite(weight).all():
            raise Big2SmallError("weight has NaN or Inf values; refusing to compress it")
        cls.check_layout(weight, layout)

    @staticmethod
    def check_layout(weight: torch.Tensor, layout: MatrixLayout) -> None:
        """Refuse a layout made for a tensor of another shape."""
        if tuple(weight.shape) != layout.shape:
            raise ValueError(f"layout shape {layout.shape} does not match tensor {tuple(weight.shape)}")

    @classmethod
    def encode_many(cls, items: list[tuple[GeneratorConfig, torch.Tensor, MatrixLayout]], *, seed: int = 0,
                    advance: Callable[[float], None] | None = None) -> list[Encoded]:
        """Encode (config, weight, layout) items; `advance(n)` reports progress in weights done."""
        out = []
        for config, weight, layout in items:
            out.append(cls(config).encode(weight, layout, seed=seed))
            if advance:
                advance(layout.numel)
        return out

    @abstractmethod
    def encode_matrix(self, matrix: torch.Tensor, layout: MatrixLayout, *, seed: int) -> Encoded:
        """Encode the fp32 matrix view [rows, cols] of a tensor of `layout` (already checked); `dtype`
        is filled in by `encode`."""

    @abstractmethod
    def decode_matrix(self, enc: Encoded) -> torch.Tensor:
        """Regenerate the fp32 matrix view [rows, cols] from the stored tensors."""

    def decode(self, enc: Encoded, *, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Regenerate the tensor in its original shape, computed in fp32, cast at the very end."""
        return enc.layout.from_matrix(self.decode_matrix(enc)).to(dtype or enc.dtype)

    def resident_tensors(self, enc: Encoded, *, unpack: bool = False) -> dict[str, torch.Tensor]:
        """The tensors an on-the-fly layer keeps in memory to decode from (see big2small.onthefly).

        By default the stored tensors themselves. A generator may add derived tensors that make
        decoding cheaper; with `unpack`, it may trade memory for speed (e.g. bit-packed codes kept
        unpacked). `decode_matrix` must accept the result in place of `enc.tensors`.
        """
        return dict(enc.tensors)

    @classmethod
    @abstractmethod
    def bits_for(cls, config: GeneratorConfig, layout: MatrixLayout) -> int:
        """Exact stored bits (header included) of `config` on a tensor of this layout."""

    @classmethod
    def for_budget(cls, bits_per_weight: float, layout: MatrixLayout, fixed: dict[str, Any]) -> GeneratorConfig:
        """The best config of this method whose stored bits fit `bits_per_weight * numel`.

        `fixed` holds options the user set, which the search must keep. Raises Big2SmallError when
        no config fits.
        """
        raise Big2SmallError(f"method {cls.config_type.method!r} cannot be sized to a bits-per-weight target")

    @classmethod
    def require_fit(cls, config: GeneratorConfig, layout: MatrixLayout, bits_per_weight: float, what: str) -> GeneratorConfig:
        """Return `config` if its stored bits fit `bits_per_weight * numel`; else refuse, naming `what`
        (the option the user pinned, e.g. "rank 8")."""
        config.validate()
        if cls.bits_for(config, layout) > bits_per_weight * layout.numel:
            raise Big2SmallError(
                f"{config.method}: {what} does not fit {bits_per_weight:.3f} bits per weight on a {list(layout.shape)} tensor"
            )
        return config


REGISTRY: dict[str, type[Generator]] = {}


def register(cls: type[Generator]) -> type[Generator]:
    """Class decorator: make a generator known by its config's method name."""
    REGISTRY[cls.config_type.method] = cls
    return cls


def generator_for(config: GeneratorConfig) -> Generator:
    return REGISTRY[config.method](config)


def decode(enc: Encoded, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Decode any stored tensor with the generator its config names."""
    return generator_for(enc.config).decode(enc, dtype=dtype)
