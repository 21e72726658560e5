"""Writing a safetensors file one array at a time, so that the arrays never need to be in memory
together (safetensors' own save_file serialises them all into one buffer first); splitting arrays
into shards of at most a byte size (`shards`), as Hugging Face does (sizes such as "5GB" are read
by `specs.byte_size`).

The format (https://github.com/huggingface/safetensors): 8 bytes, the little-endian length N of
the JSON header; the header (`__metadata__` and, per array, dtype, shape and [begin, end) byte
offsets into the data), padded with spaces to a multiple of 8 bytes; then the arrays' bytes back
to back. The arrays are written in the order given, so the same arrays in the same order give the
same bytes. Reading stays with safetensors (safe_open), which checks every offset.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

# torch dtype -> the safetensors header's name for it
_DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}
DTYPES_BY_NAME = {name: dtype for dtype, name in _DTYPE_NAMES.items()}


@dataclass(frozen=True)
class ArraySpec:
    """One array to write: its key, dtype and shape (its size in bytes follows)."""

    key: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * torch.empty(0, dtype=self.dtype).element_size()

    @classmethod
    def of(cls, key: str, t: torch.Tensor) -> ArraySpec:
        return cls(key, t.dtype, tuple(t.shape))


def header_bytes(specs: list[ArraySpec], metadata: dict[str, str] | None) -> bytes:
    """The length prefix and the padded JSON header for `specs`, in their order."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for spec in specs:
        if spec.key in header:
            raise ValueError(f"array {spec.key!r} given twice")
        header[spec.key] = {"dtype": _DTYPE_NAMES[spec.dtype], "shape": list(spec.shape),
                            "data_offsets": [offset, offset + spec.nbytes]}
        offset += spec.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write(path: Path, specs: Iterable[ArraySpec], read: Callable[[str], torch.Tensor],
          metadata: dict[str, str] | None = None) -> int:
    """Write the arrays `specs` names to `path`, reading each with `read(key)` only when its turn
    comes; return the file's size in bytes. An array that is not what its spec says is an error
    (ValueError): the header already promised its size."""
    specs = list(specs)
    with open(path, "wb") as f:
        f.write(header_bytes(specs, metadata))
        for spec in specs:
            t = read(spec.key)
            if t.dtype != spec.dtype or tuple(t.shape) != spec.shape:
                raise ValueError(f"array {spec.key!r} is {t.dtype} {list(t.shape)}, "
                                 f"its spec {spec.dtype} {list(spec.shape)}")
            if t.numel():
                f.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
            del t  # before the next array is read: one at a time
        return f.tell()


def write_arrays(path: Path, arrays: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """write() for arrays already in memory, in the dict's order."""
    return write(path, [ArraySpec.of(k, t) for k, t in arrays.items()], arrays.__getitem__, metadata)


def shards(specs: list[ArraySpec], max_bytes: int) -> list[list[ArraySpec]]:
    """`specs` in order, cut into consecutive groups of at most `max_bytes` array bytes each (a new
    group when the next array would pass it; an array larger than that gets a group of its own).
    Hugging Face's save_pretrained cuts its shards the same way."""
    groups: list[list[ArraySpec]] = [[]]
    size = 0
    for spec in specs:
        if groups[-1] and size + spec.nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(spec)
        size += spec.nbytes
    return groups


def shard_names(prefix: str, n: int) -> list[str]:
    """Hugging Face's names for `n` shards: PREFIX-00001-of-0000N.safetensors, ..."""
    return [f"{prefix}-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]


