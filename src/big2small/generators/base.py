"""The generator abstraction: every storage codec is a small set of compact tensors (phi) that
regenerates a weight tensor, W_hat = g(phi).

A method is a `GeneratorConfig` subclass (typed, versioned, JSON round-trip) plus a `Generator` subclass that
encodes a tensor into an `Encoded` record and decodes it back. The registry maps a method name to
both, so the artifact can rebuild any generator from its manifest entry.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from big2small.config import Config
from big2small.dtypes import dtype_name
from big2small.errors import Big2SmallError
from big2small.generators.straight_through import FP16_MAX, fp16_st
from big2small.layout import MatrixLayout

# Each encoded tensor pays this for its shape and method parameters (docs/bit-accounting.md#the-bit-ledger).
HEADER_BITS = 128

DTYPE_BITS = {torch.float32: 32, torch.float16: 16, torch.bfloat16: 16, torch.float64: 64}

# What one stored array must be: its dtype and shape.
ArrayForm = tuple[torch.dtype, tuple[int, ...]]


def finite_range(t: torch.Tensor) -> tuple[float, float] | None:
    """(min, max) of a floating tensor, (0.0, 0.0) when it is empty, None when a value is NaN or
    Inf: one torch.aminmax pass (min and max carry NaN and Inf along), about a tenth of the cost
    of an isfinite mask."""
    if t.numel() == 0:
        return 0.0, 0.0
    lo, hi = (float(v) for v in torch.aminmax(t))
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


@dataclass
class GeneratorConfig(Config):
    """Base of every method's config (big2small.config: JSON round trip, versioned). Subclasses are
    dataclasses with a class-level `method`, the tag of their JSON form ({"method": "uniform", ...})."""

    tag_key: ClassVar[str] = "method"
    method: ClassVar[str] = ""
    # True for the one config that stores a tensor as it is (raw): its bits are not "compressed".
    stores_dense: ClassVar[bool] = False
    # True where the error on a sample of a tensor's rows predicts the whole tensor's (groups and
    # scales live within rows), so that a size target can be filled by bit allocation.
    allocatable: ClassVar[bool] = False

    # The option that --bits (bits per weight, one meaning for every method) sets: "bits" (a whole
    # code width per weight), "bits_per_weight" (a budget per weight), or None (no such knob).
    bits_option: ClassVar[str | None] = None

    @classmethod
    def options_for_bits(cls, bits: float, options: dict[str, Any]) -> dict[str, Any]:
        """This method's own options for about `bits` bits per compressed weight (the CLI's --bits);
        `options` are the other options given (hyper reads its dim). Scales, zero-points and headers
        come on top where the option is a code width, as each method's bit ledger says. Raises
        Big2SmallError for a method without such a knob, or a width it cannot store."""
        if cls.bits_option is None:
            raise Big2SmallError(f"{cls.method}: --bits (bits per weight) does not apply; give its own options "
                                 "(-O KEY=VALUE), or a size target with --bpw")
        if cls.bits_option == "bits" and not float(bits).is_integer():
            raise Big2SmallError(f"{cls.method}: stores a whole number of bits per weight, got --bits {bits:g}")
        return {cls.bits_option: int(bits) if cls.bits_option == "bits" else bits}

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
        if finite_range(weight) is None:
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
        matrix = self.regenerate_matrix(enc)
        layout = enc.layout
        if tuple(matrix.shape) != (layout.rows, layout.cols):
            raise Big2SmallError(f"{enc.method}: decodes to a {list(matrix.shape)} matrix, not the "
                                 f"[{layout.rows}, {layout.cols}] of its shape {list(layout.shape)}")
        if not bool(torch.isfinite(matrix).all()):
            raise Big2SmallError(f"{enc.method}: decodes to NaN or Inf values")
        return layout.from_matrix(matrix).to(dtype or enc.dtype)

    def regenerate_matrix(self, enc: Encoded) -> torch.Tensor:
        """The matrix view `decode` returns: `decode_matrix`, undone of any transform `encode`
        applied before coding (`weight_domain`)."""
        return self.weight_domain(self.decode_matrix(enc), enc)

    def codec_input(self, weight: torch.Tensor, enc: Encoded) -> torch.Tensor:
        """The fp32 matrix that `enc`'s codes were chosen for, from the tensor `weight`: its matrix
        view, transformed as `encode` transforms it (a rotating codec rotates it with enc's seed)."""
        return self.matrix_view(weight, enc.layout)

    def weight_domain(self, matrix: torch.Tensor, enc: Encoded) -> torch.Tensor:
        """A matrix of the codec's domain (what decode_matrix returns) brought back to the weight's
        matrix view: the inverse of `codec_input`'s transform (none by default)."""
        return matrix

    # Quantisation-aware distillation (big2small.distill.qat, docs/distillation.md): what of a
    # codec's stored form is trained through its decoder, in words ("" : nothing). "scales": the
    # fp16 group scales, through the codes' rounding (the codec implements fake_quantize and
    # requantize; train_* below parametrise them); a codec that trains other arrays (the INR: its
    # SIRENs' parameters) overrides trains, train_start, train_decode and train_encode.
    trainable: ClassVar[str] = ""

    @classmethod
    def trains(cls, config: GeneratorConfig) -> bool:
        """Whether distillation can train a tensor this config stores."""
        return bool(cls.trainable)

    def train_start(self, matrix: torch.Tensor, enc: Encoded) -> dict[str, torch.Tensor]:
        """The starting values (fp32) of what distillation trains in `enc` (scales: one log-gain
        per group, 0: s = s0 * exp(g), so that a learning rate is relative). `matrix`: codec_input's."""
        self._require_scales(enc)
        return {"log_gain": torch.zeros(enc.tensors["scales"].shape, dtype=torch.float32,
                                        device=enc.tensors["scales"].device)}

    def train_decode(self, matrix: torch.Tensor, enc: Encoded, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """What `decode_matrix(train_encode(matrix, enc, params))` returns, bit for bit,
        differentiable in `params` (roundings to the stored form pass gradients straight through)."""
        return self.fake_quantize(matrix, enc, self._trained_scales(enc, params))

    def train_cache(self, matrix: torch.Tensor, enc: Encoded) -> dict[str, torch.Tensor]:
        """What `train_weight` reads of `enc` that training does not change, computed once before
        the first step (fp32 tensors; none by default). `matrix`: codec_input's."""
        return {}

    def train_weight(self, matrix: torch.Tensor, enc: Encoded, params: dict[str, torch.Tensor],
                     cache: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weight's matrix view (fp32) that `enc` stored with `params` decodes to, differentiable
        in `params`: weight_domain(train_decode(...)) by default; a codec may compute it from its
        `train_cache` (trellis: its decoded table values, the rotation undone once)."""
        return self.weight_domain(self.train_decode(matrix, enc, params), enc)

    def train_encode(self, matrix: torch.Tensor, enc: Encoded, params: dict[str, torch.Tensor]) -> Encoded:
        """`enc` stored with the trained `params`: the same config, layout and stored bits."""
        return self.requantize(matrix, enc, self._trained_scales(enc, params).detach())

    def _require_scales(self, enc: Encoded) -> None:
        if self.trainable != "scales":
            raise Big2SmallError(f"{enc.method}: its stored form has nothing to train")

    def _trained_scales(self, enc: Encoded, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """s0 * exp(g), rounded to fp16 as stored (fp32 values), gradients straight through."""
        self._require_scales(enc)
        return fp16_st((enc.tensors["scales"].float() * params["log_gain"].exp()).clamp(max=FP16_MAX))

    def fake_quantize(self, matrix: torch.Tensor, enc: Encoded, scales: torch.Tensor) -> torch.Tensor:
        """What `decode_matrix(requantize(matrix, enc, scales))` returns, bit for bit, computed so
        that it is differentiable in `scales` ([n_groups] fp32 holding fp16 values): gradients pass
        straight through the rounding (generators.straight_through). `matrix`: codec_input's."""
        raise Big2SmallError(f"{enc.method}: its stored form has no scales to train")

    def requantize(self, matrix: torch.Tensor, enc: Encoded, scales: torch.Tensor) -> Encoded:
        """`enc` with these fp16 scales and the codes they choose for `matrix` (codec_input's): the
        same config, layout, stored bits and other arrays."""
        raise Big2SmallError(f"{enc.method}: its stored form has no scales to train")

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
    def bits_bound(cls, config: GeneratorConfig, layout: MatrixLayout) -> tuple[int, bool]:
        """(bits, exact): the stored bits of `config` on this layout before encoding, and whether
        they are exact (False: an upper bound, where the size follows the data)."""
        return cls.bits_for(config, layout), True

    @classmethod
    @abstractmethod
    def stored_form(cls, enc: Encoded) -> dict[str, ArrayForm]:
        """The arrays a record of this method with `enc`'s config, layout and meta stores: part ->
        (dtype, shape). Where the form follows the data (a width per channel, a coding flag), it
        reads those small arrays of `enc` (stored_array) after checking their own form. Raises
        Big2SmallError when the meta is not what this method writes (meta_int)."""

    @classmethod
    def stored_bits(cls, enc: Encoded) -> int:
        """The total bits (header included) a record of this method with `enc`'s config, layout and
        meta stores: `bits_for`, where it is exact; methods whose size follows the data override it."""
        return cls.bits_for(enc.config, enc.layout)

    @classmethod
    def check_stored(cls, enc: Encoded) -> None:
        """Refuse (Big2SmallError) a record, read from disk, that this method cannot have written:
        its recorded total bits are not `stored_bits`, its arrays are not `stored_form`'s (names,
        dtypes, shapes), or their bytes do not hold its itemised bits (less under 8 bits of byte
        rounding per array; the header and parts shared with another tensor hold none). Run before
        decoding, it bounds every allocation decoding makes by the tensor's size and the arrays on disk."""
        if enc.compressed and (enc.numel == 0 or not enc.dtype.is_floating_point):
            raise Big2SmallError(f"{enc.method}: a compressed tensor is a floating tensor with elements, "
                                 f"not {dtype_name(enc.dtype)} {list(enc.layout.shape)}")
        expected = cls.stored_bits(enc)
        if enc.total_bits != expected:
            raise Big2SmallError(f"{enc.method}: {enc.total_bits} stored bits recorded, but its config and "
                                 f"shape {list(enc.layout.shape)} store {expected}")
        form = cls.stored_form(enc)
        if set(enc.tensors) != set(form):
            raise Big2SmallError(f"{enc.method}: stores arrays {sorted(enc.tensors)}, its config and shape "
                                 f"make {sorted(form)}")
        for part, (dtype, shape) in form.items():
            stored_array(enc, part, dtype, shape)
        shared = enc.meta.get("shared_parts", [])
        if not isinstance(shared, list) or not set(shared) <= set(enc.tensors):
            raise Big2SmallError(f"{enc.method}: meta shared_parts {shared!r} does not name stored arrays")
        held = enc.total_bits - enc.bits.get("header", 0)
        if not held <= 8 * enc.payload_bytes < held + 8 * len(enc.tensors):
            raise Big2SmallError(f"{enc.method}: its arrays take {enc.payload_bytes} bytes, which do not hold "
                                 f"the {held} bits itemised")

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
    """Decode any stored tensor with the generator its config names; refuse a result of another
    shape or dtype than the record's."""
    out = generator_for(enc.config).decode(enc, dtype=dtype)
    if tuple(out.shape) != enc.layout.shape or out.dtype != (dtype or enc.dtype):
        raise Big2SmallError(f"{enc.method}: decoded a {dtype_name(out.dtype)} {list(out.shape)} "
                             f"tensor, the record says {dtype_name(dtype or enc.dtype)} "
                             f"{list(enc.layout.shape)}")
    return out


def meta_int(enc: Encoded, key: str, low: int, high: int) -> int:
    """The integer `enc.meta[key]`, refused unless it is one in low..high."""
    value = enc.meta.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Big2SmallError(f"{enc.method}: meta {key} is {value!r}, expected an integer in {low}..{high}")
    return value


def stored_array(enc: Encoded, part: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """The stored array `part` of `enc`, refused unless it has this dtype and shape."""
    t = enc.tensors.get(part)
    if t is None or t.dtype != dtype or tuple(t.shape) != shape:
        found = "missing" if t is None else f"{dtype_name(t.dtype)} {list(t.shape)}"
        raise Big2SmallError(f"{enc.method}: array {part} is {found}, expected "
                             f"{dtype_name(dtype)} {list(shape)}")
    return t


def byte_arrays(sizes: dict[str, int]) -> dict[str, ArrayForm]:
    """The forms of bit-packed arrays (flat uint8) of the given byte sizes."""
    return {part: (torch.uint8, (n,)) for part, n in sizes.items()}
