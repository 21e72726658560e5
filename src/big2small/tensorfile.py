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
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

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


@dataclass(frozen=True)
class FileArray:
    """An array's bytes where they already lie, in another safetensors file: write() copies them
    from there (in the kernel where it can: os.copy_file_range) without reading them into memory."""

    path: Path
    offset: int  # bytes from the start of the file
    dtype: torch.dtype
    shape: tuple[int, ...]


def arrays_in(path: Path) -> dict[str, FileArray]:
    """Where each array of the safetensors file `path` lies, from its header (ValueError for a file
    whose header is not one, or whose arrays pass its end)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 0 < n <= size - 8:
            raise ValueError(f"{path}: not a safetensors file")
        header = json.loads(f.read(n))
    out = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        array = FileArray(path, 8 + n + begin, DTYPES_BY_NAME[entry["dtype"]], tuple(entry["shape"]))
        if end - begin != ArraySpec(key, array.dtype, array.shape).nbytes or array.offset + end - begin > size:
            raise ValueError(f"{path}: array {key} does not lie where its header says")
        out[key] = array
    return out


def write(path: Path, specs: Iterable[ArraySpec], read: Callable[[str], torch.Tensor | FileArray],
          metadata: dict[str, str] | None = None) -> int:
    """Write the arrays `specs` names to `path`, reading each with `read(key)` only when its turn
    comes (a tensor, or a FileArray whose bytes are copied); return the file's size in bytes. An
    array that is not what its spec says is an error (ValueError): the header already promised its
    size."""
    specs = list(specs)
    with open(path, "wb") as f:
        f.write(header_bytes(specs, metadata))
        for spec in specs:
            t = read(spec.key)
            if t.dtype != spec.dtype or tuple(t.shape) != spec.shape:
                raise ValueError(f"array {spec.key!r} is {t.dtype} {list(t.shape)}, "
                                 f"its spec {spec.dtype} {list(spec.shape)}")
            if isinstance(t, FileArray):
                _copy(t, spec.nbytes, f)
            elif t.numel():
                f.write(memoryview(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
            del t  # before the next array is read: one at a time
        return f.tell()


def _copy(array: FileArray, nbytes: int, f: BinaryIO) -> None:
    """Append `nbytes` bytes of `array`'s file, from its offset, to the open file `f`."""
    f.flush()
    at = f.tell()
    with open(array.path, "rb") as src:
        done = 0
        try:
            while done < nbytes:
                n = os.copy_file_range(src.fileno(), f.fileno(), nbytes - done, array.offset + done, at + done)
                if n == 0:
                    raise ValueError(f"{array.path} ends before its array's bytes do")
                done += n
        except (AttributeError, OSError):  # no copy_file_range here (not Linux, another file system)
            src.seek(array.offset + done)
            f.seek(at + done)
            while done < nbytes:
                chunk = src.read(min(nbytes - done, 1 << 24))
                if not chunk:
                    raise ValueError(f"{array.path} ends before its array's bytes do") from None
                f.write(chunk)
                done += len(chunk)
    f.seek(at + nbytes)


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


