"""The on-disk format, in one place.

An artifact is a directory:

    manifest.json        format version, library version, source model identity, recipe, and per
                         tensor: method, config, shape, dtype, matrix layout, decoder metadata, itemised
                         bits, and the key, sha256, dtype and shape of every stored array
                         (big2small.manifest holds its schema)
    tensors.safetensors  the stored arrays (bit-packed codes as uint8, fp16 scales, raw tensors);
                         its header metadata holds the manifest's sha256, tying the two files together
                         (or, when the arrays pass the shard size, tensors-00001-of-0000N.safetensors
                         ...: each a safetensors file holding some of the arrays and the manifest's
                         sha256, named in the manifest's `tensor_files`, format version 3)
    source/              config and tokenizer files of a Hugging Face model (hashed in the manifest),
                         so that the model rebuilds from the artifact alone

Loading never unpickles, and trusts nothing it has not checked: the manifest against its hash and
its schema, every array against its sha256, dtype and shape, every tensor's record against what its
method can have written (Generator.check_stored), the size record against the tensors, every
source file against its size and sha256, and no name may lead outside the artifact. Writes go to a
temporary directory put in place in one step (big2small.atomic), so that a kill at any moment
leaves the old artifact or the new one, never a half one; `overwrite` only ever replaces an artifact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from big2small import atomic, tensorfile
from big2small.compress import CompressedModel, size_of
from big2small.dtypes import STORED_DTYPES, dtype_name
from big2small.errors import Big2SmallError
from big2small.generators import REGISTRY, Encoded, decode
from big2small.generators.raw import STORAGE_DTYPES
from big2small.manifest import (
    FORMAT_NAME, FORMAT_VERSION, READABLE_VERSIONS, SHARD_PREFIX, SHARDED_VERSION, SOURCE_DIR, Manifest, StoredArray,
)
from big2small.manifest import check as check_manifest
from big2small.manifest import check_tensor_files
from big2small.manifest import parse as parse_manifest
from big2small.models.loaders import source_files
from big2small.models.source import ModelSource
from big2small.models.hf_config import stored_config
from big2small.transforms.records import TransformRecord
from big2small.specs import byte_size
from big2small.version import __version__

MANIFEST = "manifest.json"
TENSORS = "tensors.safetensors"
HASH_KEY = "big2small.manifest_sha256"
DEFAULT_MAX_SHARD_SIZE = "5GB"  # as Hugging Face's save_pretrained
DEFAULT_MAX_SHARD_BYTES = byte_size(DEFAULT_MAX_SHARD_SIZE)
_SHARD_NAME = re.compile(rf"^{SHARD_PREFIX}-\d{{5}}-of-\d{{5}}\.safetensors$")


def tensor_sha256(t: torch.Tensor) -> str:
    """The sha256 of a tensor's bytes (contiguous, in its dtype), hashed in place without a copy."""
    return hashlib.sha256(memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())).hexdigest()


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
    tensor_file_bytes: int  # tensors.safetensors (or every shard), JSON headers included
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
    tensor_bytes = sum((path / name).stat().st_size for name in manifest.get("tensor_files", [TENSORS]))
    return ArtifactInfo(path, tensor_bytes, (path / MANIFEST).stat().st_size, source_bytes)


def ensure_writable(path: str | os.PathLike, *, overwrite: bool = False, output: str = "artifact") -> Path:
    """`path` as a Path, once it is clear that an output may be written there.

    Nothing there: fine. Something there: refused unless `overwrite`, and even then unless it is
    what this output replaces: for output="artifact" (save), a big2small artifact (a directory
    holding only an artifact's files, with a manifest of this format) or an empty directory, never a
    folder of other files or a plain file; for output="file" (decompress), a regular file, never a
    directory; for output="dense directory" (sharded decompress), a directory decompress wrote. Symbolic links and paths under a file are refused too. save and decompress call it,
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
    if output == "dense directory" and not _decompressed_directory(path):
        raise Big2SmallError(f"{path} is not a directory that decompress wrote; refusing to replace it")
    return path


def _decompressed_directory(path: Path) -> bool:
    """Whether `path` is a directory of decompress's sharded output (its weights carry our metadata),
    or an empty one."""
    if not path.is_dir() or path.is_symlink():
        return False
    entries = [e for e in path.iterdir()]
    if not entries:
        return True
    weights = path / (DENSE_INDEX if (path / DENSE_INDEX).is_file() else DENSE_WEIGHTS)
    try:
        if weights.name == DENSE_INDEX:
            return "big2small.aliases" in json.loads(weights.read_text()).get("metadata", {})
        with safe_open(str(weights), "pt") as f:
            return "big2small.aliases" in (f.metadata() or {})
    except (OSError, ValueError, SafetensorError):
        return False


def _replaceable(path: Path) -> bool:
    """Whether `path` is an artifact (or an empty directory) that overwriting may replace."""
    if not path.is_dir():
        return False
    entries = {e.name for e in path.iterdir()}
    if not entries:
        return True
    manifest = path / MANIFEST
    ours = {MANIFEST, TENSORS, SOURCE_DIR}
    if not all(e in ours or _SHARD_NAME.match(e) for e in entries) or manifest.is_symlink() or not manifest.is_file():
        return False
    try:
        return parse_manifest(manifest.read_bytes()).get("format") == FORMAT_NAME
    except (Big2SmallError, OSError):
        return False


def save(cm: CompressedModel, path: str | os.PathLike, *, overwrite: bool = False,
         max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE) -> ArtifactInfo:
    """Write `cm` as an artifact directory at `path`, atomically (see the module docstring); with
    `overwrite`, replace the artifact there (ensure_writable says what may be replaced).
    max_shard_size: bytes of arrays per tensor file ("5GB", "500MB", or an int of bytes): more
    than that are written as shards (tensors-00001-of-0000N.safetensors ...)."""
    shard_bytes = max_shard_bytes(max_shard_size)
    arrays, records = stored_form(cm.tensors.items())
    try:
        return write_artifact(cm, records, arrays.__getitem__, path, overwrite=overwrite, max_shard_bytes=shard_bytes)
    except OSError as exc:  # a full disk: nothing is left at `path` or beside it
        raise Big2SmallError(atomic.write_failure(Path(path), exc)) from None


def max_shard_bytes(size: str | int) -> int:
    """A shard size ("5GB", "500MB", bytes) as bytes; Big2SmallError when it is not one."""
    try:
        return byte_size(size)
    except ValueError as exc:
        raise Big2SmallError(f"max_shard_size: {exc}") from None


def write_artifact(cm: CompressedModel, records: dict[str, dict[str, Any]],
                   read_array: Callable[[str], torch.Tensor | tensorfile.FileArray],
                   path: str | os.PathLike, *, overwrite: bool = False,
                   max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> ArtifactInfo:
    """Write an artifact at `path`, atomically: the manifest of `cm` (whose tensors need only their
    records' fields: bits, config, layout; their arrays may be elsewhere) with the tensor records
    `records` (stored_form's, in the order the arrays are written), and each array read by
    `read_array(key)` in its turn (a tensor, or where its bytes lie in another file), so that no
    two need be in memory together. save() and the streaming compressor (big2small.streaming)
    both write through here. Arrays of more than
    `max_shard_bytes` in all go into shards of at most that many bytes each."""
    path = ensure_writable(path, overwrite=overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale(path.parent)
    tmp = atomic.temporary_path(path)
    tmp.mkdir()
    try:
        manifest = _write(cm, records, read_array, tmp, max_shard_bytes)
        for f in [*tmp.rglob("*"), tmp]:
            fsync(f)
        _publish(tmp, path, overwrite=overwrite, output="artifact")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return artifact_info(path, manifest)


def stored_form(items: Iterable[tuple[str, Encoded]]) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """The arrays (by key, in writing order) and the manifest records (by tensor name) of encoded
    tensors. An array shared by several tensors (a shared INR bank) is stored once, under its first
    owner's key."""
    arrays: dict[str, torch.Tensor] = {}
    records: dict[str, Any] = {}
    owners: dict[int, str] = {}
    for name, enc in items:
        shared = set(enc.meta.get("shared_parts", ()))
        stored = {}
        for part, t in enc.tensors.items():
            if part in shared and id(t) in owners:
                key = owners[id(t)]
            else:  # a tensor held twice without being shared is written twice, as two arrays
                key = f"{name}::{part}"
                arrays[key] = t.clone() if id(t) in owners else t.contiguous()
                owners.setdefault(id(t), key)
            stored[part] = {"key": key, "sha256": tensor_sha256(t), "dtype": dtype_name(t.dtype), "shape": list(t.shape)}
        records[name] = {
            "method": enc.method,
            "config": enc.config.to_dict(),
            "shape": list(enc.layout.shape),
            "transposed": enc.layout.transposed,
            "dtype": dtype_name(enc.dtype),
            "meta": enc.meta,
            "bits": enc.bits,
            "stored": stored,
        }
    return arrays, records


def array_specs(records: dict[str, dict[str, Any]]) -> list[tensorfile.ArraySpec]:
    """The arrays `records` store, each once, in the order of the records and their parts."""
    specs: dict[str, tensorfile.ArraySpec] = {}
    for record in records.values():
        for a in record["stored"].values():
            specs.setdefault(a["key"], tensorfile.ArraySpec(a["key"], STORED_DTYPES[a["dtype"]], tuple(a["shape"])))
    return list(specs.values())


def _write(cm: CompressedModel, records: dict[str, dict[str, Any]],
           read_array: Callable[[str], torch.Tensor | tensorfile.FileArray],
           directory: Path, max_shard_bytes: int) -> dict[str, Any]:
    """Write the artifact's files into `directory`; return the manifest."""
    groups = tensorfile.shards(array_specs(records), max_shard_bytes)
    names = [TENSORS] if len(groups) == 1 else tensorfile.shard_names(SHARD_PREFIX, len(groups))
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
        "format_version": FORMAT_VERSION if len(groups) == 1 else SHARDED_VERSION,
        "library_version": __version__,
        "source": source,
        "recipe": cm.recipe.to_dict(),
        "n_parameters": cm.n_parameters,
        "size": cm.size().to_dict(),
        "aliases": cm.aliases,
        "transforms": [t.to_dict() for t in cm.transforms],
        "files": files,
        "tensors": records,
        **({"tensor_files": names} if len(groups) > 1 else {}),
    }
    manifest_bytes = json.dumps(manifest, indent=1, sort_keys=True).encode()
    (directory / MANIFEST).write_bytes(manifest_bytes)
    for name, group in zip(names, groups):
        tensorfile.write(directory / name, group, read_array, metadata={HASH_KEY: hashlib.sha256(manifest_bytes).hexdigest()})
    return manifest


def _publish(tmp: Path, path: Path, *, overwrite: bool, output: str) -> None:
    """Put the finished `tmp` at `path`, checking again what it replaces (it may have changed
    since the caller's first check)."""
    ensure_writable(path, overwrite=overwrite, output=output)
    try:
        atomic.publish(tmp, path, replace=overwrite)
    except FileExistsError:
        raise Big2SmallError(f"{path} exists; pass overwrite=True (--overwrite) to replace it") from None


def fsync(path: Path) -> None:
    """Make `path`'s contents durable (a file or a directory)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest, after checking it is a big2small artifact of a version we read, untampered,
    and within its schema (big2small.manifest)."""
    return _read_manifest(Path(path))[0]


def _read_manifest(path: Path) -> tuple[dict[str, Any], Manifest]:
    """The manifest of the artifact at `path`, as JSON and as checked records."""
    if atomic.is_temporary(path):
        raise Big2SmallError(f"{path}: a temporary directory of an unfinished save, not an artifact")
    if not os.path.lexists(path):
        raise Big2SmallError(f"{path}: no such artifact")
    for name in (MANIFEST, TENSORS):
        if (path / name).is_symlink():
            raise Big2SmallError(f"{path}: corrupt artifact: {name} is a symbolic link")
    if not (path / MANIFEST).is_file():
        raise Big2SmallError(f"{path}: not a big2small artifact (needs {MANIFEST} and {TENSORS})")
    raw = (path / MANIFEST).read_bytes()
    data, parse_error = None, None
    try:
        data = parse_manifest(raw)
    except Big2SmallError as exc:
        parse_error = exc  # refused below, once the tensor file says whether this manifest is its own
    sharded = isinstance(data, dict) and data.get("format") == FORMAT_NAME and data.get("format_version") == SHARDED_VERSION
    if sharded and os.path.lexists(path / TENSORS):
        raise Big2SmallError(f"{path}: corrupt artifact: {TENSORS} beside the shards its manifest lists")
    if not sharded and not (path / TENSORS).is_file():
        raise Big2SmallError(f"{path}: not a big2small artifact (needs {MANIFEST} and {TENSORS})")
    if sharded:
        try:
            names = check_tensor_files(data.get("tensor_files"))  # the schema's rule: exact names only
        except Big2SmallError as exc:
            raise Big2SmallError(f"{path}: corrupt artifact: {_first_line(exc)}") from None
    else:
        names = (TENSORS,)
    for name in names:
        expected = _tensor_file_hash(path, name)
        if expected != hashlib.sha256(raw).hexdigest():
            raise Big2SmallError(f"{path}: corrupt artifact: manifest does not match the tensor file"
                                 f"{'' if name == TENSORS else ' ' + name} (hash mismatch)")
    if data is None:
        raise Big2SmallError(f"{path}: corrupt artifact: {parse_error}") from None
    if data.get("format") != FORMAT_NAME:
        raise Big2SmallError(f"{path}: not a big2small artifact")
    version = data.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise Big2SmallError(
            f"{path}: artifact format version {str(version)[:20]} is not supported "
            f"(this big2small {__version__} reads versions {', '.join(map(str, READABLE_VERSIONS))})"
        )
    try:
        return data, check_manifest(data)
    except Big2SmallError as exc:
        raise Big2SmallError(f"{path}: corrupt artifact: {_first_line(exc)}") from None


def _tensor_file_hash(path: Path, name: str) -> str | None:
    """The manifest sha256 that the tensor file `name` of the artifact at `path` records; a
    one-line Big2SmallError when it is missing, a link, or not a safetensors file (truncated)."""
    f = path / name
    if f.is_symlink():
        raise Big2SmallError(f"{path}: corrupt artifact: {name} is a symbolic link")
    if not f.is_file():
        raise Big2SmallError(f"{path}: corrupt artifact: {name} is missing")
    try:
        with safe_open(str(f), "pt") as opened:
            return (opened.metadata() or {}).get(HASH_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        where = "" if name == TENSORS else f"{name}: "
        raise Big2SmallError(f"{path}: corrupt artifact: tensor file unreadable ({where}{_first_line(exc)})") from None


def load(path: str | os.PathLike) -> CompressedModel:
    """Read and verify an artifact (see the module docstring for what is checked); refuse it with
    one line (Big2SmallError) at the first thing that is not as written."""
    reader = ArtifactReader(path)
    arrays: dict[str, torch.Tensor] = {}  # a shared array is read once, and stays one object
    tensors = {name: reader.tensor(name, arrays) for name in reader.manifest.tensors}
    reader.check_size()
    manifest = reader.manifest
    return CompressedModel(
        tensors=tensors, plan=[], recipe=manifest.recipe, source=reader.source(), aliases=dict(manifest.aliases),
        n_parameters=manifest.n_parameters, transforms=manifest.transforms,
    )


class ArtifactReader:
    """An artifact read tensor by tensor. Opening it checks the manifest (hash, schema), the source
    files and that every array belongs to a tensor; each tensor() then reads one tensor's arrays,
    each checked against its sha256, dtype and shape, and its record against its method;
    check_size(), once the tensors are read, checks the size record. load() reads them all;
    decompress and inspect read one at a time, so that they never hold the model."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        _, self.manifest = _read_manifest(self.path)
        try:
            _check_source_files(self.path, self.manifest)
            self._file_of: dict[str, str] = {}  # array key -> the tensor file that holds it
            for file in self.manifest.tensor_files or (TENSORS,):
                with safe_open(str(self.path / file), "pt") as f:
                    for key in f.keys():
                        if key in self._file_of:
                            raise Big2SmallError(f"array {key} is in {self._file_of[key]} and in {file}")
                        self._file_of[key] = file
            self._keys = set(self._file_of)
            unused = sorted(self._keys - set(_array_owners(self.manifest)))
            counts = Counter(a.key for r in self.manifest.tensors.values() for a in r.stored.values())
            self._shared = {key for key, n in counts.items() if n > 1}  # kept once read: one object for all
            self._cache: dict[str, torch.Tensor] = {}
            if unused:
                raise Big2SmallError(f"array {unused[0]} belongs to no tensor in the manifest")
        except (SafetensorError, OSError, ValueError) as exc:
            raise Big2SmallError(f"{self.path}: corrupt artifact: tensor file unreadable ({_first_line(exc)})") from None
        except Big2SmallError as exc:
            raise Big2SmallError(f"{self.path}: corrupt artifact: {_first_line(exc)}") from None

    def check_size(self) -> None:
        """The size record is the one the tensors' records make."""
        try:
            _check_size(self.manifest, self.records())
        except Big2SmallError as exc:
            raise Big2SmallError(f"{self.path}: corrupt artifact: {_first_line(exc)}") from None

    def records(self) -> dict[str, Encoded]:
        """Every tensor's record without its arrays (enough for size_of, not for decoding)."""
        return {name: Encoded(r.method, r.config, r.layout, r.dtype, {}, dict(r.bits), r.meta)
                for name, r in self.manifest.tensors.items()}

    def source(self) -> ModelSource | None:
        m = self.manifest
        return ModelSource.from_dict(m.source, files_dir=self.path / SOURCE_DIR) if m.source else None

    def tensor(self, name: str, arrays: dict[str, torch.Tensor] | None = None) -> Encoded:
        """The tensor `name` with its arrays, checked. `arrays`: arrays already read, by key (the
        ones read now are added); None: only arrays several tensors share are kept, by the reader,
        so that they stay one object and the others go with the tensor."""
        arrays = self._cache if arrays is None else arrays
        record = self.manifest.tensors[name]
        try:
            missing = [a for a in record.stored.values() if a.key not in arrays]
            absent = [a.key for a in missing if a.key not in self._file_of]
            if absent:
                raise Big2SmallError(f"array {absent[0]} is missing")
            for file in dict.fromkeys(self._file_of[a.key] for a in missing):  # each file opened once
                with safe_open(str(self.path / file), "pt") as f:
                    arrays.update({a.key: _read_array(f, self._keys, a) for a in missing if self._file_of[a.key] == file})
            enc = Encoded(method=record.method, config=record.config, layout=record.layout, dtype=record.dtype,
                          tensors={part: arrays[a.key] for part, a in record.stored.items()}, bits=dict(record.bits),
                          meta=record.meta)
            for key in [k for k in self._cache if k not in self._shared]:
                del self._cache[key]
            try:
                REGISTRY[record.method].check_stored(enc)
            except Big2SmallError as exc:
                raise Big2SmallError(f"tensor {name}: {exc}") from None
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise Big2SmallError(f"{self.path}: corrupt artifact: tensor file unreadable ({_first_line(exc)})") from None
        except Big2SmallError as exc:
            raise Big2SmallError(f"{self.path}: corrupt artifact: {_first_line(exc)}") from None
        return enc


def _check_source_files(path: Path, manifest: Manifest) -> None:
    """The source files on disk are exactly the manifest's, regular files inside the artifact, of
    their recorded size and sha256."""
    source_dir = path / SOURCE_DIR
    on_disk: set[str] = set()
    if os.path.lexists(source_dir):
        if source_dir.is_symlink() or not source_dir.is_dir():
            raise Big2SmallError(f"{SOURCE_DIR} is not a directory")
        for f in source_dir.rglob("*"):
            if f.is_symlink() or not (f.is_file() or f.is_dir()):
                raise Big2SmallError(f"{f.relative_to(path).as_posix()} is a link or a special file")
            if f.is_file():
                on_disk.add(f.relative_to(path).as_posix())
    for rel in sorted(on_disk ^ set(manifest.files)):
        raise Big2SmallError(f"{rel} is {'not in the manifest' if rel in on_disk else 'missing'}")
    for rel, info in manifest.files.items():
        f = path / rel
        if f.stat().st_size != info.bytes or file_sha256(f) != info.sha256:
            raise Big2SmallError(f"{rel} is altered")


def _array_owners(manifest: Manifest) -> dict[str, tuple[str, str]]:
    """Array key -> (tensor, part) that owns it: `{tensor}::{part}`, as save writes it. A key of
    another name must be a part the tensor shares (meta shared_parts) and be owned by another tensor."""
    owners = {a.key: (name, part) for name, r in manifest.tensors.items() for part, a in r.stored.items()
              if a.key == f"{name}::{part}"}
    for name, r in manifest.tensors.items():
        shared = r.meta.get("shared_parts") if isinstance(r.meta.get("shared_parts"), list) else []
        for part, a in r.stored.items():
            owner = owners.get(a.key)
            if a.key != f"{name}::{part}" and (part not in shared or owner is None or owner[1] != part
                                                or manifest.tensors[owner[0]].stored[part] != a):
                raise Big2SmallError(f"tensor {name}: array {a.key} for its part {part} is not its own")
    return owners


def _read_array(f, keys: set[str], record: StoredArray) -> torch.Tensor:
    """The array `record` names, from the open tensor file `f`, checked against its sha256 and
    (format 2) the dtype and shape the manifest records for it."""
    if record.key not in keys:
        raise Big2SmallError(f"array {record.key} is missing")
    t = f.get_tensor(record.key)
    if record.dtype is not None and (t.dtype != record.dtype or tuple(t.shape) != record.shape):
        raise Big2SmallError(f"array {record.key} is {dtype_name(t.dtype)} {list(t.shape)} in the tensor file, "
                             f"{dtype_name(record.dtype)} {list(record.shape)} in the manifest")
    if tensor_sha256(t) != record.sha256:
        raise Big2SmallError(f"array {record.key} fails its hash")
    return t


def _check_size(manifest: Manifest, tensors: dict[str, Encoded]) -> None:
    """The manifest's size record is the one its tensors make (a tensor deleted from the manifest
    changes it)."""
    recorded = manifest.size
    actual = size_of(tensors, manifest.n_parameters).to_dict()
    counts = ("n_parameters", "n_compressed", "bits_total", "bits_compressed", "bits_raw", "bits_by_item")
    differ = [k for k in counts if recorded[k] != actual[k]]
    if differ:
        raise Big2SmallError(f"the size record's {differ[0]} is not what its tensors make")


def decompress(path: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False,
               dtype: str | None = None, max_shard_bytes: int | None = None) -> Path:
    """Write the artifact's weights as a dense safetensors state_dict, without the model class.

    dtype: float32, float16 or bfloat16 for every floating tensor (None: the dtype each tensor had
    when it was compressed; an HF model loads in float32, so float16 halves the file).
    max_shard_bytes: None writes one file at `out`. A number makes `out` a directory in Hugging
    Face's sharded layout: model.safetensors, or model-0000k-of-0000n.safetensors files of at most
    that many tensor bytes each (a larger tensor gets a file of its own) with
    model.safetensors.index.json, plus the artifact's source files (config, tokenizer), so that an
    HF model's directory loads with from_pretrained.

    Tied tensors are written once, under their stored name (as Hugging Face does); the aliases go
    into each file's metadata. The output is put in place in one step; `overwrite` replaces a file
    with a file, and a directory only when decompress wrote it.
    """
    if dtype is not None and dtype not in STORAGE_DTYPES:
        raise Big2SmallError(f"dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
    if max_shard_bytes is not None and not max_shard_bytes > 0:
        raise Big2SmallError(f"the shard size must be a positive number of bytes, got {max_shard_bytes}")
    sharded = max_shard_bytes is not None
    out = ensure_writable(out, overwrite=overwrite, output="dense directory" if sharded else "file")
    reader = ArtifactReader(path)
    out_dtype = STORAGE_DTYPES[dtype] if dtype else None
    specs = [tensorfile.ArraySpec(name, out_dtype if out_dtype and r.dtype.is_floating_point else r.dtype, r.layout.shape)
             for name, r in reader.manifest.tensors.items()]

    def decoded(name: str) -> torch.Tensor:  # one tensor at a time: the model is never held whole
        t = decode(reader.tensor(name))
        return t.to(out_dtype) if out_dtype and t.is_floating_point() else t

    metadata = {"big2small.aliases": json.dumps(dict(reader.manifest.aliases), sort_keys=True), "format": "pt"}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale(out.parent)
    tmp = atomic.temporary_path(out)
    try:
        if sharded:
            tmp.mkdir()
            _write_shards(specs, decoded, tmp, max_shard_bytes, metadata, reader.source(), reader.manifest.transforms)
            for f in [*tmp.rglob("*"), tmp]:
                fsync(f)
        else:
            tensorfile.write(tmp, specs, decoded, metadata)
            fsync(tmp)
        reader.check_size()
        _publish(tmp, out, overwrite=overwrite, output="dense directory" if sharded else "file")
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):  # a full disk: nothing is left at `out` or beside it
            raise Big2SmallError(atomic.write_failure(out, exc)) from None
        raise
    return out


DENSE_WEIGHTS = "model.safetensors"
DENSE_INDEX = "model.safetensors.index.json"


def _write_shards(specs: list[tensorfile.ArraySpec], read: Callable[[str], torch.Tensor], directory: Path,
                  max_bytes: int, metadata: dict[str, str], source: ModelSource | None,
                  transforms: list[TransformRecord]) -> None:
    """Hugging Face's sharded layout in `directory`: the tensors `specs` names, each read by
    `read(name)` in its turn, a new file when the next tensor would pass `max_bytes`; the index
    maps each tensor to its file. The source's files go beside them, its config.json as the stored
    model has it (`transforms`: blocks dropped, units folded: models.hf_config), decided before any
    tensor is written so that a config that cannot describe the stored shapes fails at once."""
    files_dir = getattr(source, "files_dir", None)
    files = source_files(files_dir) if files_dir is not None and Path(files_dir).is_dir() else []
    stored = None
    config_file = next((f for f in files if f.relative_to(files_dir).as_posix() == "config.json"), None)
    if config_file is not None and transforms:
        try:
            original = json.loads(config_file.read_text())
        except ValueError as exc:
            raise Big2SmallError(f"the artifact's source config.json is not JSON ({exc})") from None
        stored = stored_config(original, transforms, {spec.key: tuple(spec.shape) for spec in specs})
        stored = None if stored == original else stored
    shards = tensorfile.shards(specs, max_bytes)
    names = [DENSE_WEIGHTS] if len(shards) == 1 else tensorfile.shard_names("model", len(shards))
    for name, shard in zip(names, shards):
        tensorfile.write(directory / name, shard, read, metadata)
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(spec.nbytes for spec in specs), **metadata},
                 "weight_map": {spec.key: name for name, shard in zip(names, shards) for spec in shard}}
        (directory / DENSE_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    for f in files:
        target = directory / f.relative_to(files_dir)
        if target.name not in (DENSE_WEIGHTS, DENSE_INDEX):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
    if stored is not None:
        (directory / "config.json").write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
