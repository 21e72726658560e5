"""The on-disk format, in one place.

An artifact is a directory:

    manifest.json        format version, library version, source model identity, recipe, and per
                         tensor: method, config (configs carry their version), shape, dtype, matrix layout, decoder metadata, itemised
                         bits, and the sha256 of every stored array
    tensors.safetensors  the stored arrays (bit-packed codes as uint8, fp16 scales, raw tensors);
                         its header metadata holds the manifest's sha256, tying the two files together
    source/              config and tokenizer files of a Hugging Face model (hashed in the manifest),
                         so that the model rebuilds from the artifact alone

Loading never unpickles. Writes go to a temporary directory renamed into place, so a crash never
leaves a half artifact that looks whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from big2small.compress import CompressedModel
from big2small.config import Config
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
ConfigT = TypeVar("ConfigT", bound=Config)


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


def ensure_writable(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """`path` as a Path, after refusing to replace what is there unless `overwrite`.

    save and decompress call it; so does the command line, before it loads any model, so that
    the refusal comes before the expensive work."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise Big2SmallError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    return path


def save(cm: CompressedModel, path: str | os.PathLike, *, overwrite: bool = False) -> ArtifactInfo:
    """Write `cm` as an artifact directory at `path`, atomically."""
    path = ensure_writable(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        arrays: dict[str, torch.Tensor] = {}
        entries: dict[str, Any] = {}
        written: dict[int, str] = {}  # one array held by several tensors (a shared INR bank) is written once
        for name, enc in cm.tensors.items():
            stored = {}
            for part, t in enc.tensors.items():
                key = written.setdefault(id(t), f"{name}::{part}")
                arrays[key] = t.contiguous()
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
                dest = tmp / SOURCE_DIR / rel
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
        (tmp / MANIFEST).write_bytes(manifest_bytes)
        save_file(arrays, str(tmp / TENSORS), metadata={HASH_KEY: hashlib.sha256(manifest_bytes).hexdigest()})
        for f in (tmp / MANIFEST, tmp / TENSORS):
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _publish_permissions(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return artifact_info(path, manifest)


def _publish_permissions(root: Path) -> None:
    """mkdtemp makes a private (0700) directory; give the artifact the user's usual permissions."""
    umask = os.umask(0)
    os.umask(umask)
    for p in [root, *root.rglob("*")]:
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest, after checking it is a big2small artifact of a version we read, untampered."""
    path = Path(path)
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
                    config=_read_config(GeneratorConfig, e["config"], path),
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
        tensors=tensors, plan=[], recipe=_read_config(Recipe, manifest["recipe"], path), source=source,
        aliases=manifest["aliases"], n_parameters=manifest["n_parameters"], transforms=transforms,
    )


def _read_config(cls: type[ConfigT], data: Any, path: Path) -> ConfigT:
    """A config stored in the manifest (one without a version was written before versions: 1)."""
    try:
        return cls.from_dict(data)
    except Big2SmallError as exc:
        raise Big2SmallError(f"{path}: {exc}") from None


def decompress(path: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write the artifact's weights as a dense safetensors state_dict, without the model class.

    Tied tensors are written once, under their stored name (as Hugging Face does); the aliases go
    into the file's metadata.
    """
    out = ensure_writable(out, overwrite=overwrite)
    cm = load(path)
    state = {name: t.contiguous() for name, t in cm.state_dict().items() if name not in cm.aliases}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"big2small.aliases": json.dumps(cm.aliases, sort_keys=True), "format": "pt"})
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
