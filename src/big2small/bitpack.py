"""Bit packing of unsigned integer streams (LSB-first), vectorised.

Value k of width B bits occupies stream bits [kB, kB + B); stream bit t is bit (t mod 8) of byte
floor(t / 8). A stream of n values of width B takes exactly ceil(n * B / 8) bytes, so the bytes on
disk match the bits we report, up to < 8 bits of byte-rounding per stream.
"""

from __future__ import annotations

import torch

MAX_BITS = 24


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes taken by `count` values of `bits` bits each."""
    return (count * bits + 7) // 8


def pack(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack non-negative integers < 2**bits (any integer dtype; uint8 codes are packed without
    widening them to int64 at widths 1, 2, 4 and 8) into a flat uint8 tensor (LSB-first)."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bit width must be in 1..{MAX_BITS}, got {bits}")
    flat = values.reshape(-1)
    if flat.is_floating_point() or flat.is_complex() or flat.dtype == torch.bool:
        flat = flat.to(torch.int64)
    if flat.numel():
        lo, hi = (int(v) for v in torch.aminmax(flat))
        if lo < 0 or hi >= (1 << bits):
            raise ValueError(f"values do not fit in {bits} bits")
    if bits == 8:
        return flat.to(torch.uint8)
    if 8 % bits == 0:
        return _pack_within_bytes(flat.to(torch.uint8), bits)
    flat = flat.to(torch.int64)
    if bits < 8:
        return _pack_blocks(flat, bits)
    shifts = torch.arange(bits, device=flat.device, dtype=torch.int64)
    stream = ((flat.unsqueeze(1) >> shifts) & 1).reshape(-1)
    pad = (-stream.numel()) % 8
    if pad:
        stream = torch.cat([stream, stream.new_zeros(pad)])
    weights = 1 << torch.arange(8, device=flat.device, dtype=torch.int64)
    return (stream.reshape(-1, 8) * weights).sum(1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of :func:`pack`: `count` int64 values of width `bits` from a uint8 stream."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"bit width must be in 1..{MAX_BITS}, got {bits}")
    if packed.numel() != packed_nbytes(count, bits):
        raise ValueError(
            f"packed stream has {packed.numel()} bytes, expected {packed_nbytes(count, bits)}"
        )
    data = packed.reshape(-1).to(torch.int64)
    if bits == 8:
        return data[:count]
    if bits < 8:
        return _unpack_blocks(data, bits, count)
    # Every value starts inside some byte and spans at most 4 bytes (bits <= 24 plus a 7-bit offset).
    data = torch.cat([data, data.new_zeros(4)])
    start = torch.arange(count, device=data.device, dtype=torch.int64) * bits
    byte = start >> 3
    word = data[byte] | (data[byte + 1] << 8) | (data[byte + 2] << 16) | (data[byte + 3] << 24)
    return (word >> (start & 7)) & ((1 << bits) - 1)


def _pack_within_bytes(flat: torch.Tensor, bits: int) -> torch.Tensor:
    """Widths 1, 2 and 4, whose values never straddle a byte: 8 / B values per byte, value j of a
    byte at bits [jB, (j + 1)B), OR-ed together in uint8 (a byte per value of memory traffic)."""
    per = 8 // bits
    count = flat.numel()
    pad = (-count) % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    lanes = flat.reshape(-1, per)
    out = lanes[:, 0].clone()
    for j in range(1, per):
        out |= lanes[:, j] << (bits * j)
    return out


# Eight values of B < 8 bits fill exactly B bytes: one int64 word per block of eight, with no
# per-bit expansion (about 8x less memory traffic than the generic path, same stream layout).


def _pack_blocks(flat: torch.Tensor, bits: int) -> torch.Tensor:
    count = flat.numel()
    pad = (-count) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    device = flat.device
    word = (flat.reshape(-1, 8) << (bits * torch.arange(8, device=device))).sum(1)
    stream = (word.unsqueeze(1) >> (8 * torch.arange(bits, device=device))) & 0xFF
    return stream.reshape(-1)[: packed_nbytes(count, bits)].to(torch.uint8)


def _unpack_blocks(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    blocks = (count + 7) // 8
    need = blocks * bits
    if data.numel() < need:
        data = torch.cat([data, data.new_zeros(need - data.numel())])
    device = data.device
    word = (data[:need].reshape(blocks, bits) << (8 * torch.arange(bits, device=device))).sum(1)
    values = (word.unsqueeze(1) >> (bits * torch.arange(8, device=device))) & ((1 << bits) - 1)
    return values.reshape(-1)[:count]


def index_bits(m: int) -> int:
    """Bits of an index into a set of m items: ceil(log2 m), 0 if m <= 1."""
    return max(0, m - 1).bit_length()


def pack_stream(tensors: dict[str, torch.Tensor], name: str, values: torch.Tensor, width: int) -> None:
    """Store `values` at `width` bits under `name` in `tensors`: nothing for width 0 (an index into a
    set of one), two streams (low and high bits, same total) above MAX_BITS."""
    if width == 0:
        return
    if width <= MAX_BITS:
        tensors[name] = pack(values, width)
        return
    tensors[name + "_lo"] = pack(values & ((1 << MAX_BITS) - 1), MAX_BITS)
    tensors[name + "_hi"] = pack(values >> MAX_BITS, width - MAX_BITS)


def stream_bytes(name: str, count: int, width: int) -> dict[str, int]:
    """The arrays :func:`pack_stream` writes for `count` values of `width` bits: name -> bytes."""
    if width == 0:
        return {}
    if width <= MAX_BITS:
        return {name: packed_nbytes(count, width)}
    return {name + "_lo": packed_nbytes(count, MAX_BITS), name + "_hi": packed_nbytes(count, width - MAX_BITS)}


def unpack_stream(tensors: dict[str, torch.Tensor], name: str, width: int, count: int,
                  device: torch.device | None = None) -> torch.Tensor:
    """Inverse of :func:`pack_stream`: `count` int64 values."""
    if width == 0:
        return torch.zeros(count, dtype=torch.int64, device=device)
    if width <= MAX_BITS:
        return unpack(tensors[name], width, count)
    lo = unpack(tensors[name + "_lo"], MAX_BITS, count)
    hi = unpack(tensors[name + "_hi"], width - MAX_BITS, count)
    return lo | (hi << MAX_BITS)
