"""The on-disk format, in one place.

An artifact is a directory:

    manifest.json        format version, library version, source model identity, recipe, and per
                         tensor: method, config, shape, dtype, matrix layout, decoder metadata, itemised
                         bits, and the sha256 of every stored array
    tensors.safetensors  the stored arrays (bit-packed codes as uint8, fp16 scales, raw tensors);
                         its header metadata holds the manifest's sha256, tying the two files together
    source/              config and tokenizer files of a Hugging Face model (hashed in the manifest),
                         so that the model rebuilds from the artifact alone

Loading never unpickles. Writes go to a temporary directory put in place in one step
(big2small.atomic), so that a kill at any moment leaves the old artifact or the new one, never a
half one; `overwrite` only ever replaces an artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from big2small import atomic
from big2small.compress import CompressedModel
from big2small.dtypes import STORED_DTYPES, dtype_name
from big2small.errors import Big2SmallError
from big2small.generators import Encoded, GeneratorConfig
from big2small.layout import MatrixLayout
from big2small.models.loaders import source_files
from big2small.models.source import ModelSource
from big2small.recipe import Recipe
from big2small.transforms.records import TransformRecord
from big2small.version import __version__

FORMAT_NAME = "big2small"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
SOURCE_DIR = "source"
HASH_KEY = "big2small.manifest_sha256"

def _dtype(name: str) -> torch.dtype:
    if name not in STORED_DTYPES:
        raise Big2SmallError(f"corrupt artifact: unknown dtype {name!r}")
    return STORED_DTYPES[name]


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class ArtifactInfo:
    """What was written: paths and bytes on disk."""

    path: Path
    tensor_file_bytes: int  # tensors.safetensors, its JSON header included
    manifest_bytes: int
    source_bytes: int  # config/tokenizer files: needed to run the model, not weights

    @property
    def weights_bytes(self) -> int:
        """Bytes that carry the model's weights: the tensor file and the manifest."""
        return self.tensor_file_bytes + self.manifest_bytes

    def to_dict(self) -> dict[str, int]:
        """The bytes on disk per file, for JSON (the path is the report's, not repeated here)."""
        return {"tensor_file_bytes": self.tensor_file_bytes, "manifest_bytes": self.manifest_bytes,
                "source_bytes": self.source_bytes}


def artifact_info(path: str | os.PathLike, manifest: dict[str, Any]) -> ArtifactInfo:
    """The bytes on disk of the artifact at `path`, whose manifest (read_manifest) is `manifest`."""
    path = Path(path)
    source_bytes = sum(f["bytes"] for f in manifest["files"].values())
    return ArtifactInfo(path, (path / TENSORS).stat().st_size, (path / MANIFEST).stat().st_size, source_bytes)


def ensure_writable(path: str | os.PathLike, *, overwrite: bool = False, output: str = "artifact") -> Path:
    """`path` as a Path, once it is clear that an output may be written there.

    Nothing there: fine. Something there: refused unless `overwrite`, and even then unless it is
    what this output replaces: for output="artifact" (save), a big2small artifact (a directory
    holding only an artifact's files, with a manifest of this format) or an empty directory, never a
    folder of other files or a plain file; for output="file" (decompress), a regular file, never a
    directory. Symbolic links and paths under a file are refused too. save and decompress call it,
    and so does the command line, before it loads any model, so that the refusal comes before the
    expensive work."""
    path = Path(path)
    parent = next((p for p in path.parents if os.path.lexists(p)), None)
    if parent is not None and not parent.is_dir():
        raise Big2SmallError(f"cannot write {path}: {parent} is not a directory")
    if not os.path.lexists(path):
        return path
    if not overwrite:
        raise Big2SmallError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if path.is_symlink():
        raise Big2SmallError(f"{path} is a symbolic link; refusing to replace it")
    if output == "file" and not path.is_file():
        raise Big2SmallError(f"{path} is not a file; refusing to replace it with a safetensors file")
    if output == "artifact" and not _replaceable(path):
        raise Big2SmallError(f"{path} is not a big2small artifact; --overwrite only ever replaces an artifact")
    return path


def _replaceable(path: Path) -> bool:
    """Whether `path` is an artifact (or an empty directory) that overwriting may replace."""
    if not path.is_dir():
        return False
    entries = {e.name for e in path.iterdir()}
    if not entries:
        return True
    manifest = path / MANIFEST
    if not entries <= {MANIFEST, TENSORS, SOURCE_DIR} or manifest.is_symlink() or not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_bytes())
    except (ValueError, RecursionError, OSError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def save(cm: CompressedModel, path: str | os.PathLike, *, overwrite: bool = False) -> ArtifactInfo:
    """Write `cm` as an artifact directory at `path`, atomically (see the module docstring); with
    `overwrite`, replace the artifact there (ensure_writable says what may be replaced)."""
    path = ensure_writable(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale(path.parent)
    tmp = atomic.temporary_path(path)
    tmp.mkdir()
    try:
        manifest = _write(cm, tmp)
        for f in [*tmp.rglob("*"), tmp]:
            _fsync(f)
        _publish(tmp, path, overwrite=overwrite, output="artifact")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return artifact_info(path, manifest)


def _write(cm: CompressedModel, directory: Path) -> dict[str, Any]:
    """Write the artifact's files into `directory`; return the manifest."""
    arrays: dict[str, torch.Tensor] = {}
    entries: dict[str, Any] = {}
    owners: dict[int, str] = {}  # an array shared by several tensors (a shared INR bank) is written once
    for name, enc in cm.tensors.items():
        shared = set(enc.meta.get("shared_parts", ()))
        stored = {}
        for part, t in enc.tensors.items():
            if part in shared and id(t) in owners:
                key = owners[id(t)]
            else:  # a tensor held twice without being shared is written twice, as two arrays
                key = f"{name}::{part}"
                arrays[key] = t.clone() if id(t) in owners else t.contiguous()
                owners.setdefault(id(t), key)
            stored[part] = {"key": key, "sha256": tensor_sha256(t)}
        entries[name] = {
            "method": enc.method,
            "config": enc.config.to_dict(),
            "shape": list(enc.layout.shape),
            "transposed": enc.layout.transposed,
            "dtype": dtype_name(enc.dtype),
            "meta": enc.meta,
            "bits": enc.bits,
            "stored": stored,
        }
    files = {}
    source = cm.source.to_dict() if cm.source is not None else None
    files_dir = getattr(cm.source, "files_dir", None)
    if files_dir:
        for f in source_files(files_dir):
            rel = f.relative_to(files_dir)
            dest = directory / SOURCE_DIR / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)
            files[f"{SOURCE_DIR}/{rel.as_posix()}"] = {"bytes": dest.stat().st_size, "sha256": file_sha256(dest)}
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "source": source,
        "recipe": cm.recipe.to_dict(),
        "n_parameters": cm.n_parameters,
        "size": cm.size().to_dict(),
        "aliases": cm.aliases,
        "transforms": [t.to_dict() for t in cm.transforms],
        "files": files,
        "tensors": entries,
    }
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    (directory / MANIFEST).write_bytes(manifest_bytes)
    save_file(arrays, str(directory / TENSORS), metadata={HASH_KEY: hashlib.sha256(manifest_bytes).hexdigest()})
    return manifest


def _publish(tmp: Path, path: Path, *, overwrite: bool, output: str) -> None:
    """Put the finished `tmp` at `path`, checking again what it replaces (it may have changed
    since the caller's first check)."""
    ensure_writable(path, overwrite=overwrite, output=output)
    try:
        atomic.publish(tmp, path, replace=overwrite)
    except FileExistsError:
        raise Big2SmallError(f"{path} exists; pass overwrite=True (--overwrite) to replace it") from None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest, after checking it is a big2small artifact of a version we read, untampered."""
    path = Path(path)
    if atomic.is_temporary(path):
        raise Big2SmallError(f"{path}: a temporary directory of an unfinished save, not an artifact")
    if not path.exists():
        raise Big2SmallError(f"{path}: no such artifact")
    if not (path / MANIFEST).is_file() or not (path / TENSORS).is_file():
        raise Big2SmallError(f"{path}: not a big2small artifact (needs {MANIFEST} and {TENSORS})")
    raw = (path / MANIFEST).read_bytes()
    try:
        with safe_open(str(path / TENSORS), "pt") as f:
            expected = (f.metadata() or {}).get(HASH_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise Big2SmallError(f"{path}: corrupt artifact: tensor file unreadable ({_first_line(exc)})") from None
    if expected != hashlib.sha256(raw).hexdigest():
        raise Big2SmallError(f"{path}: corrupt artifact: manifest does not match the tensor file (hash mismatch)")
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Big2SmallError(f"{path}: corrupt artifact: manifest is not JSON ({exc})") from None
    if manifest.get("format") != FORMAT_NAME:
        raise Big2SmallError(f"{path}: not a big2small artifact")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise Big2SmallError(
            f"{path}: artifact format version {manifest.get('format_version')} is not supported "
            f"(this big2small {__version__} reads version {FORMAT_VERSION})"
        )
    return manifest


def load(path: str | os.PathLike) -> CompressedModel:
    """Read and verify an artifact (every array and source file against its sha256)."""
    path = Path(path)
    manifest = read_manifest(path)
    for rel, info in manifest["files"].items():
        f = path / rel
        if not f.is_file() or f.stat().st_size != info["bytes"] or file_sha256(f) != info["sha256"]:
            raise Big2SmallError(f"{path}: corrupt artifact: {rel} is missing or altered")
    tensors: dict[str, Encoded] = {}
    try:
        with safe_open(str(path / TENSORS), "pt") as f:
            keys = set(f.keys())
            read: dict[str, torch.Tensor] = {}  # arrays shared by several tensors stay shared
            for name, e in manifest["tensors"].items():
                stored = {}
                for part, info in e["stored"].items():
                    if info["key"] not in keys:
                        raise Big2SmallError(f"{path}: corrupt artifact: array {info['key']} is missing")
                    if info["key"] not in read:
                        read[info["key"]] = f.get_tensor(info["key"])
                    t = read[info["key"]]
                    if tensor_sha256(t) != info["sha256"]:
                        raise Big2SmallError(f"{path}: corrupt artifact: array {info['key']} fails its hash")
                    stored[part] = t
                tensors[name] = Encoded(
                    method=e["method"],
                    config=GeneratorConfig.from_dict(e["config"]),
                    layout=MatrixLayout(tuple(e["shape"]), transposed=e["transposed"]),
                    dtype=_dtype(e["dtype"]),
                    tensors=stored,
                    bits={k: int(v) for k, v in e["bits"].items()},
                    meta=e["meta"],
                )
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as exc:
        raise Big2SmallError(f"{path}: corrupt artifact ({_first_line(exc)})") from None
    source = ModelSource.from_dict(manifest["source"], files_dir=path / SOURCE_DIR) if manifest["source"] else None
    try:
        transforms = [TransformRecord.from_dict(t) for t in manifest.get("transforms", [])]
    except Big2SmallError as exc:
        raise Big2SmallError(f"{path}: corrupt artifact: {exc}") from None
    return CompressedModel(
        tensors=tensors, plan=[], recipe=Recipe.from_dict(manifest["recipe"]), source=source,
        aliases=manifest["aliases"], n_parameters=manifest["n_parameters"], transforms=transforms,
    )


def decompress(path: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the artifact's weights as a dense safetensors state_dict, without the model class.

    Tied tensors are written once, under their stored name (as Hugging Face does); the aliases go
    into the file's metadata. The file is put in place in one step; `overwrite` replaces a file,
    never a directory.
    """
    out = ensure_writable(out, overwrite=overwrite, output="file")
    cm = load(path)
    state = {name: t.contiguous() for name, t in cm.state_dict().items() if name not in cm.aliases}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale(out.parent)
    tmp = atomic.temporary_path(out)
    try:
        save_file(state, str(tmp), metadata={"big2small.aliases": json.dumps(cm.aliases, sort_keys=True), "format": "pt"})
        _fsync(tmp)
        _publish(tmp, out, overwrite=overwrite, output="file")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
