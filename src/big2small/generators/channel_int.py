"""Integers per output channel, each channel at its own bit width, scaled by a power of two.

This is the stored form of a self-compressed layer (docs/quantisation.md#per-channel-integers): channel i keeps integers
W_int,i and a real exponent e_i, and decodes as W_i = 2^e_i * W_int,i. On disk:

    payload    (W_int,i - min_i) bit-packed LSB-first at nbits_i = ceil(log2(max_i - min_i + 1))
               bits each (0 for a constant channel), channels concatenated in row order
    scales     2^e_i, fp32
    mins       min_i, int16
    nbits      nbits_i, uint8

We store the scale 2^e_i rather than e_i (the same 32 bits could hold e): torch.exp2 is not
bit-reproducible (its vectorised and scalar paths differ in the last bit, and so would another
device), so storing the scale that the training forward multiplied by makes decoding exact
everywhere: a multiply, no transcendental.

so a channel costs cols * nbits_i + 56 bits. Trained layers come from
`big2small.selfcompress.convert`, which passes its learnt integers and scales to
:func:`encode_integers`. Used on its own (``--method channel_int``), the generator quantises an
untrained weight with a fixed `bits` per channel and the smallest exponent whose range covers the
channel, the near-lossless starting point of docs/self-compression.md#initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from big2small.errors import Big2SmallError
from big2small.generators.base import (
    HEADER_BITS, ArrayForm, Encoded, Generator, GeneratorConfig, byte_arrays, register, stored_array,
)
from big2small.layout import MatrixLayout

# Per-channel side information: fp32 scale, int16 minimum, uint8 width.
CHANNEL_HEADER_BITS = 32 + 16 + 8
MAX_CHANNEL_BITS = 16  # int16 minimums and the packer's limit


@dataclass
class ChannelIntConfig(GeneratorConfig):
    """bits: bit depth b of every channel when quantising an untrained weight (2-16). A trained
    (self-compressed) layer ignores it: its per-channel widths and scales are in its tensors."""

    method = "channel_int"
    bits_option = "bits"
    bits: int = 8

    def validate(self) -> None:
        if not 2 <= self.bits <= MAX_CHANNEL_BITS:
            raise Big2SmallError(f"channel_int: bits must be in 2..{MAX_CHANNEL_BITS}, got {self.bits}")


def channel_widths(integers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(min_i, nbits_i) of an integer matrix [rows, cols]: the smallest value of each row and the
    bits needed for its range (0 when the row is constant)."""
    lo = integers.amin(1)
    span = integers.amax(1) - lo
    nbits = torch.where(span > 0, torch.ceil(torch.log2(span.double() + 1)).long(), torch.zeros_like(span))
    return lo, nbits


def pack_rows(values: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    """Bit-pack non-negative integers [rows, cols], row i at widths[i] bits, rows concatenated,
    LSB-first (the stream layout of big2small.bitpack)."""
    rows, cols = values.shape
    device = values.device
    widths = widths.to(device)
    max_w = int(widths.max()) if rows else 0
    if max_w == 0:
        return torch.zeros(0, dtype=torch.uint8, device=device)
    shifts = torch.arange(max_w, dtype=torch.int64, device=device)
    bits = (values.to(torch.int64).unsqueeze(-1) >> shifts) & 1  # [rows, cols, max_w]
    keep = (shifts < widths.unsqueeze(1)).unsqueeze(1).expand(rows, cols, max_w)
    stream = bits[keep]
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    return (stream.reshape(-1, 8) << torch.arange(8, device=device)).sum(1).to(torch.uint8)


def unpack_rows(packed: torch.Tensor, widths: torch.Tensor, cols: int) -> torch.Tensor:
    """Inverse of :func:`pack_rows`: int64 [rows, cols]."""
    device = packed.device
    widths = widths.to(device=device, dtype=torch.int64)
    rows = widths.numel()
    total = int(widths.sum()) * cols
    if packed.numel() != (total + 7) // 8:
        raise Big2SmallError(f"corrupt payload: {packed.numel()} bytes, expected {(total + 7) // 8}")
    if total == 0:
        return torch.zeros(rows, cols, dtype=torch.int64, device=device)
    max_w = int(widths.max())
    row_start = torch.cumsum(widths * cols, 0) - widths * cols
    start = row_start.unsqueeze(1) + torch.arange(cols, device=device) * widths.unsqueeze(1)  # [rows, cols]
    shifts = torch.arange(max_w, dtype=torch.int64, device=device)
    pos = start.unsqueeze(-1) + shifts  # [rows, cols, max_w]
    used = shifts < widths.view(rows, 1, 1)
    pos = torch.where(used, pos, torch.zeros_like(pos))
    data = packed.to(torch.int64)
    bit = (data[pos >> 3] >> (pos & 7)) & 1
    return ((bit * used) << shifts).sum(-1)


def encode_integers(integers: torch.Tensor, scales: torch.Tensor, layout: MatrixLayout,
                    config: ChannelIntConfig | None = None) -> Encoded:
    """The stored form of a layer given its integer matrix [rows, cols] and one fp32 scale 2^e per row."""
    config = config or ChannelIntConfig()
    integers = integers.to(torch.int64)
    if integers.shape != (layout.rows, layout.cols) or scales.shape != (layout.rows,):
        raise ValueError(f"integers {tuple(integers.shape)} / scales {tuple(scales.shape)} do not match {layout}")
    lo, nbits = channel_widths(integers) if layout.rows else (integers.new_zeros(0), integers.new_zeros(0))
    if layout.rows and (int(nbits.max()) > MAX_CHANNEL_BITS or int(lo.min()) < -(1 << 15) or int(lo.max()) >= 1 << 15):
        raise Big2SmallError(f"channel_int: integers exceed the {MAX_CHANNEL_BITS}-bit format")
    payload = pack_rows(integers - lo.unsqueeze(1), nbits)
    tensors = {
        "payload": payload,
        "scales": scales.detach().to(torch.float32).contiguous(),
        "mins": lo.to(torch.int16),
        "nbits": nbits.to(torch.uint8),
    }
    bits = {
        "payload": int(nbits.sum()) * layout.cols,
        "scales": 32 * layout.rows,
        "mins": 16 * layout.rows,
        "nbits": 8 * layout.rows,
        "header": HEADER_BITS,
    }
    return Encoded(config.method, config, layout, torch.float32, tensors, bits)


def fitted_exponents(matrix: torch.Tensor, bits: float) -> torch.Tensor:
    """e_i = ceil(log2(max|W_i| / (2^(b-1) - 1))): the finest power-of-two scale whose b-bit range
    covers row i (0 for an all-zero row)."""
    top = 2.0 ** (bits - 1) - 1
    peak = matrix.abs().amax(1)
    e = torch.ceil(torch.log2(peak / top))
    return torch.where(peak > 0, e, torch.zeros_like(e))


def quantize_levels(weight: torch.Tensor, bits: torch.Tensor, exponent: torch.Tensor, *,
                    straight_through: bool = False) -> torch.Tensor:
    """round(clamp(2^-e W, -2^(b-1), 2^(b-1) - 1)) with b := relu(b): the integer levels of `weight`,
    as floats; b and e broadcast against it (one per channel: [O, 1, ...]).

    straight_through: round in the forward pass, identity in the backward pass
    (x + (round(x) - x).detach(), which equals round(x) exactly: the two operands are within a
    factor of two), so that training gets gradients and export reproduces it bit for bit.
    """
    b = torch.relu(bits)
    lo = -torch.exp2(b - 1)
    hi = torch.exp2(b - 1) - 1
    x = torch.exp2(-exponent) * weight
    clipped = torch.minimum(torch.maximum(x, lo), hi)
    if straight_through:
        return clipped + (torch.round(clipped) - clipped).detach()
    return torch.round(clipped)


def quantize(weight: torch.Tensor, bits: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    """q(w, b, e) = 2^e * round(clamp(2^-e w, -2^(b-1), 2^(b-1) - 1)) (docs/self-compression.md#the-quantiser),
    the training forward of a self-compressed layer, with per-channel b and e shaped to broadcast
    against `weight` ([O, 1, ...]).

    Gradients: w straight through inside the range (none where clipped); b through the clip
    bounds; e through both 2^e and 2^-e.
    """
    return torch.exp2(exponent) * quantize_levels(weight, bits, exponent, straight_through=True)


def quantize_integers(matrix: torch.Tensor, bits: torch.Tensor | float, exponents: torch.Tensor) -> torch.Tensor:
    """The integer levels of a matrix [rows, cols] at one bit depth (or one per row) and one
    exponent per row, in fp32, as the training forward computes them."""
    b = torch.as_tensor(bits, dtype=torch.float32, device=matrix.device).reshape(-1, 1)
    return quantize_levels(matrix, b, exponents.float().reshape(-1, 1)).to(torch.int64)


@register
class ChannelIntGenerator(Generator):
    config_type = ChannelIntConfig

    def encode_matrix(self, matrix: torch.Tensor, layout: MatrixLayout, *, seed: int) -> Encoded:
        cfg: ChannelIntConfig = self.config
        e = fitted_exponents(matrix, cfg.bits)
        return encode_integers(quantize_integers(matrix, float(cfg.bits), e), torch.exp2(e), layout, cfg)

    def decode_matrix(self, enc: Encoded) -> torch.Tensor:
        t = enc.tensors
        ints = unpack_rows(t["payload"], t["nbits"].to(torch.int64), enc.layout.cols) + t["mins"].to(torch.int64).unsqueeze(1)
        return t["scales"].float().unsqueeze(1) * ints.float()

    @classmethod
    def bits_for(cls, config: ChannelIntConfig, layout: MatrixLayout) -> int:
        """An upper bound: every channel at `bits`. The stored widths come from each channel's
        observed range, so the real size is at most this (and is reported exactly after encoding)."""
        return layout.numel * config.bits + layout.rows * CHANNEL_HEADER_BITS + HEADER_BITS

    @classmethod
    def stored_bits(cls, enc: Encoded) -> int:
        """Exact, from the stored widths (bits_for is an upper bound)."""
        rows, cols = enc.layout.rows, enc.layout.cols
        return _stored_width_sum(enc) * cols + rows * CHANNEL_HEADER_BITS + HEADER_BITS

    @classmethod
    def stored_form(cls, enc: Encoded) -> dict[str, ArrayForm]:
        rows, cols = enc.layout.rows, enc.layout.cols
        return {**byte_arrays({"payload": (_stored_width_sum(enc) * cols + 7) // 8, "nbits": rows}),
                "scales": (torch.float32, (rows,)), "mins": (torch.int16, (rows,))}

    @classmethod
    def for_budget(cls, bits_per_weight: float, layout: MatrixLayout, fixed: dict) -> ChannelIntConfig:
        budget = bits_per_weight * layout.numel
        choices = [fixed["bits"]] if "bits" in fixed else range(MAX_CHANNEL_BITS, 1, -1)
        for b in choices:
            cfg = ChannelIntConfig(bits=int(b))
            if cls.bits_for(cfg, layout) <= budget:
                return cfg
        raise Big2SmallError(
            f"channel_int: no setting fits {bits_per_weight:.3f} bits per weight on a {list(layout.shape)} tensor "
            f"(each channel costs {CHANNEL_HEADER_BITS} bits of side information)"
        )


def _stored_width_sum(enc: Encoded) -> int:
    """Sum of a stored record's channel widths, refused unless each is at most MAX_CHANNEL_BITS."""
    nbits = stored_array(enc, "nbits", torch.uint8, (enc.layout.rows,))
    if nbits.numel() and int(nbits.max()) > MAX_CHANNEL_BITS:
        raise Big2SmallError(f"channel_int: a stored channel width exceeds {MAX_CHANNEL_BITS} bits")
    return int(nbits.sum(dtype=torch.int64))
