"""Editing an artifact's files the way a damaged disk or an attacker would (for the artifact tests)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from big2small.artifact import HASH_KEY, MANIFEST, TENSORS


def read_tensor_file(path: Path) -> tuple[dict, bytes]:
    """(header, data) of a safetensors file: its JSON header (arrays and __metadata__) and the bytes after it."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_tensor_file(path: Path, header: dict, body: bytes) -> None:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + body)


def reseal(artifact: Path, manifest_bytes: bytes) -> None:
    """Write `manifest_bytes` and put its sha256 into the tensor file's header (every shard's, in
    a sharded artifact), as an attacker would."""
    (artifact / MANIFEST).write_bytes(manifest_bytes)
    files = [artifact / TENSORS] if (artifact / TENSORS).exists() else sorted(artifact.glob("tensors-*-of-*.safetensors"))
    for f in files:
        header, body = read_tensor_file(f)
        header.setdefault("__metadata__", {})[HASH_KEY] = hashlib.sha256(manifest_bytes).hexdigest()
        write_tensor_file(f, header, body)


def edit_manifest(artifact: Path, change) -> None:
    """Apply `change(manifest)` (in place) to the artifact's manifest and reseal it."""
    manifest = json.loads((artifact / MANIFEST).read_bytes())
    change(manifest)
    reseal(artifact, json.dumps(manifest, indent=1, sort_keys=True).encode())


def relabel(artifact: Path, key: str, **fields) -> None:
    """Change an array's safetensors header entry (dtype, shape), leaving its bytes and the manifest."""
    header, body = read_tensor_file(artifact / TENSORS)
    header[key].update(fields)
    write_tensor_file(artifact / TENSORS, header, body)
