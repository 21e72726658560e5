"""An artifact's manifest: parsed with bounded nesting, checked against its schema, read into records.

The schema, by format version (1: the first; 2: also each stored array's dtype and shape; 3: the
arrays in several tensor files, `tensor_files`; save writes 3 only for an artifact it shards):

    format            "big2small"
    format_version    1, 2 or 3
    tensor_files      version 3 only: ["tensors-00001-of-0000N.safetensors", ...], N >= 2, exactly
                      those names in that order (no other name, path or link can be given)
    library_version   str
    source            null, or the fields of models.ModelSource (str or null each)
    recipe            the fields of recipe.Recipe; its default and overrides' configs as below
    n_parameters      int >= 0
    size              the fields of compress.SizeReport.to_dict()
    aliases           {tied name: stored tensor name}; the target is a tensor, the alias is not
    transforms        (optional) list of transform records: {"transform": kind, fields of its record}
    files             {"source/<relative path>": {"bytes": int >= 0, "sha256": 64 hex digits}}
    tensors           {name: {method, config, shape, transposed, dtype, meta, bits, stored}}:
        method        a registered generator, the one its config names
        config        {"method": ..., fields of that method's config}, then its validate()
        shape         list of at most MAX_DIMS ints >= 0; transposed (bool) only for 2-D shapes
        dtype         a name of dtypes.STORED_DTYPES
        meta          an object (what the method's decoder reads is checked by the method)
        bits          {item: int >= 0}
        stored        {part: {"key": array name in the tensor file, "sha256": 64 hex digits,
                       version 2: "dtype": a stored dtype name, "shape": as above}}

No key outside the schema is accepted and no required key may be missing; values of typed records
must have their dataclass field's type (bool is not an int, an int is a float). JSON nesting is
bounded (MAX_DEPTH) before parsing. What the manifest says is then checked against the tensor file
by artifact.load and against each method's stored form by Generator.check_stored.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any

import torch

from big2small.compress import SizeReport
from big2small.dtypes import STORED_DTYPES
from big2small.errors import Big2SmallError
from big2small.generators import REGISTRY, GeneratorConfig
from big2small.layout import MatrixLayout
from big2small.models.source import ModelSource
from big2small.recipe import Recipe
from big2small.tensorfile import shard_names
from big2small.transforms.records import RECORDS, TransformRecord

FORMAT_NAME = "big2small"
FORMAT_VERSION = 2  # what save() writes for an artifact of one tensor file
SHARDED_VERSION = 3  # ... and for one of several (tensor_files)
READABLE_VERSIONS = (1, 2, 3)
SHARD_PREFIX = "tensors"
SOURCE_DIR = "source"
MAX_DEPTH = 32  # JSON nesting, objects and lists
MAX_DIMS = 8
MAX_NAME = 4096  # characters of a tensor, part or file name

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TOP = {"format", "format_version", "library_version", "source", "recipe", "n_parameters", "size", "aliases",
        "files", "tensors"}
_TENSOR = {"method", "config", "shape", "transposed", "dtype", "meta", "bits", "stored"}


@dataclass(frozen=True)
class StoredArray:
    """Where one stored part of a tensor is in the tensor file, and what it must be there (dtype
    and shape: None in format version 1, which did not record them)."""

    key: str
    sha256: str
    dtype: torch.dtype | None
    shape: tuple[int, ...] | None


@dataclass(frozen=True)
class TensorRecord:
    """One tensor's manifest entry, typed."""

    method: str
    config: GeneratorConfig
    layout: MatrixLayout
    dtype: torch.dtype
    meta: dict[str, Any]
    bits: dict[str, int]
    stored: dict[str, StoredArray]


@dataclass(frozen=True)
class SourceFile:
    """A config or tokenizer file of the source model: its size in bytes and sha256."""

    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A manifest that passed its schema, as records. `source` is the raw record (ModelSource
    needs the artifact's directory to be built); `size` is the stored SizeReport.to_dict()."""

    format_version: int
    library_version: str
    source: dict[str, Any] | None
    recipe: Recipe
    n_parameters: int
    size: dict[str, Any]
    aliases: dict[str, str]
    transforms: list[TransformRecord]
    files: dict[str, SourceFile]
    tensors: dict[str, TensorRecord]
    tensor_files: tuple[str, ...] = ()  # version 3: the shards, in order; () for one tensors.safetensors


def parse(raw: bytes) -> dict[str, Any]:
    """The JSON object in `raw`, refused when it nests deeper than MAX_DEPTH or is not JSON."""
    depth = nesting_depth(raw)
    if depth > MAX_DEPTH:
        raise Big2SmallError(f"manifest nests {depth} levels deep (at most {MAX_DEPTH})")
    try:
        data = json.loads(raw)
    except ValueError as exc:  # not JSON, not UTF-8, or an integer of more digits than Python reads
        raise Big2SmallError(f"manifest is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise Big2SmallError(f"manifest is a JSON {type(data).__name__}, not an object")
    return data


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of JSON objects and lists in `raw` (strings skipped), without parsing."""
    brackets = re.sub(rb'"(?:[^"\\]|\\.)*"', b"", raw).translate(None, bytes(set(range(256)) - set(b"[]{}")))
    depth = deepest = 0
    for b in brackets:
        depth += 1 if b in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def check(data: dict[str, Any]) -> Manifest:
    """The records of a parsed manifest whose format name and version were already accepted;
    Big2SmallError at the first value outside the schema, saying where (e.g. tensors['fc.weight'].shape)."""
    version = data["format_version"]
    _keys(data, "manifest", _TOP | ({"tensor_files"} if version >= SHARDED_VERSION else set()),
          optional={"transforms"})
    tensors = {_name(name, "tensors"): _tensor(entry, f"tensors[{name!r}]", version)
               for name, entry in _object(data["tensors"], "tensors").items()}
    aliases = _object(data["aliases"], "aliases")
    for alias, target in aliases.items():
        if not isinstance(target, str) or target not in tensors:
            raise Big2SmallError(f"aliases[{alias!r}]: {target!r} is not a stored tensor")
        if alias in tensors:
            raise Big2SmallError(f"aliases[{alias!r}]: an alias cannot also be a stored tensor")
    return Manifest(
        format_version=version,
        library_version=_typed(data["library_version"], str, "library_version"),
        source=_source(data["source"]),
        recipe=_recipe(data["recipe"]),
        n_parameters=_int(data["n_parameters"], "n_parameters"),
        size=_size(data["size"]),
        aliases=aliases,
        transforms=[_transform(t, f"transforms[{i}]") for i, t in enumerate(_list(data.get("transforms", []), "transforms"))],
        files={_file_name(rel): _source_file(info, f"files[{rel!r}]") for rel, info in _object(data["files"], "files").items()},
        tensors=tensors,
        tensor_files=check_tensor_files(data["tensor_files"]) if version >= SHARDED_VERSION else (),
    )


def config_from_json(data: Any, where: str) -> GeneratorConfig:
    """A method config from its JSON form, every field of its type and the whole validated."""
    data = _object(data, where)
    method = data.get("method")
    if not isinstance(method, str) or method not in REGISTRY:
        raise Big2SmallError(f"{where}: unknown compression method {method!r}")
    try:  # the config base checks keys, types and the version, and validates
        config = GeneratorConfig.from_dict(data)
        config.validate()
    except Big2SmallError as exc:
        raise Big2SmallError(f"{where}: {exc}") from None
    except (TypeError, ValueError, OverflowError, ZeroDivisionError) as exc:
        raise Big2SmallError(f"{where}: invalid {method} config ({exc})") from None
    return config


def tensor_record(entry: Any, where: str) -> TensorRecord:
    """One tensor's manifest entry (as artifact.stored_form writes it) as a checked record."""
    return _tensor(entry, where, FORMAT_VERSION)


# --- the parts -------------------------------------------------------------------------------------


def _tensor(entry: Any, where: str, version: int) -> TensorRecord:
    entry = _keys(entry, where, _TENSOR)
    config = config_from_json(entry["config"], f"{where}.config")
    if entry["method"] != config.method:
        raise Big2SmallError(f"{where}.method: {entry['method']!r} but its config is {config.method!r}")
    shape = _shape(entry["shape"], f"{where}.shape")
    transposed = _typed(entry["transposed"], bool, f"{where}.transposed")
    if transposed and len(shape) != 2:
        raise Big2SmallError(f"{where}.transposed: only a 2-D tensor can be stored transposed, not {list(shape)}")
    bits = {_name(k, f"{where}.bits"): _int(v, f"{where}.bits[{k!r}]") for k, v in _object(entry["bits"], f"{where}.bits").items()}
    stored = {_name(part, f"{where}.stored"): _stored(info, f"{where}.stored[{part!r}]", version)
              for part, info in _object(entry["stored"], f"{where}.stored").items()}
    return TensorRecord(config.method, config, MatrixLayout(shape, transposed=transposed),
                        _dtype(entry["dtype"], f"{where}.dtype"), _object(entry["meta"], f"{where}.meta"), bits, stored)


def _stored(info: Any, where: str, version: int) -> StoredArray:
    if version == 1:
        info = _keys(info, where, {"key", "sha256"})
        return StoredArray(_name(info["key"], f"{where}.key"), _sha256(info["sha256"], where), None, None)
    info = _keys(info, where, {"key", "sha256", "dtype", "shape"})
    return StoredArray(_name(info["key"], f"{where}.key"), _sha256(info["sha256"], where),
                       _dtype(info["dtype"], f"{where}.dtype"), _shape(info["shape"], f"{where}.shape"))


def _source(data: Any) -> dict[str, Any] | None:
    if data is None:
        return None
    _record(ModelSource, _object(data, "source"), "source", skip={"files_dir"})
    return data


def _recipe(data: Any) -> Recipe:
    data = _object(data, "recipe")
    try:  # the config base checks keys, types and versions of the recipe and every config in it
        return Recipe.from_dict(data)
    except Big2SmallError as exc:
        raise Big2SmallError(f"recipe: {exc}") from None


def _size(data: Any) -> dict[str, Any]:
    data = _keys(data, "size", set(SizeReport(0, 0, 0, 0, 0).to_dict()))
    for name in ("n_parameters", "n_compressed", "bits_total", "bits_compressed", "bits_raw"):
        _int(data[name], f"size.{name}")
    for item, bits in _object(data["bits_by_item"], "size.bits_by_item").items():
        _int(bits, f"size.bits_by_item[{item!r}]")
    for name in ("bpw_all", "bpw_scope", "ratio_vs_fp32", "ratio_vs_fp16"):
        _typed(data[name], float, f"size.{name}")
    return data


def _transform(data: Any, where: str) -> TransformRecord:
    data = _object(data, where)
    kind = data.get("transform")
    if not isinstance(kind, str) or kind not in RECORDS:
        raise Big2SmallError(f"{where}: unknown transform record {kind!r} (known: {', '.join(RECORDS)})")
    _record(RECORDS[kind], {k: v for k, v in data.items() if k != "transform"}, where)
    return TransformRecord.from_dict(data)


def _file_name(rel: str) -> str:
    """A source file's name: `source/` and a relative path below it, which cannot leave it."""
    parts = rel.split("/")
    if (len(rel) > MAX_NAME or len(parts) < 2 or parts[0] != SOURCE_DIR or "\\" in rel or "\0" in rel
            or any(p in ("", ".", "..") for p in parts)):
        raise Big2SmallError(f"files: {rel[:100]!r} is not a file name inside {SOURCE_DIR}/")
    return rel


def check_tensor_files(value: Any) -> tuple[str, ...]:
    """A sharded artifact's tensor files: exactly tensorfile.shard_names(SHARD_PREFIX, N), N >= 2."""
    names = _list(value, "tensor_files")
    expected = shard_names(SHARD_PREFIX, len(names)) if 2 <= len(names) <= 99999 else None
    if expected is None or names != expected:
        shown = ", ".join(repr(str(n)[:60]) for n in names[:2])
        raise Big2SmallError(f"tensor_files: [{shown}{', ...' if len(names) > 2 else ''}] are not "
                             f"{SHARD_PREFIX}-00001-of-0000N.safetensors ... for N >= 2 files")
    return tuple(names)


def _source_file(info: Any, where: str) -> SourceFile:
    info = _keys(info, where, {"bytes", "sha256"})
    return SourceFile(_int(info["bytes"], f"{where}.bytes"), _sha256(info["sha256"], where))


# --- values ---------------------------------------------------------------------------------------


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Big2SmallError(f"{where}: expected an object, got {_kind(value)}")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise Big2SmallError(f"{where}: expected a list, got {_kind(value)}")
    return value


def _keys(value: Any, where: str, required: set[str], optional: set[str] = frozenset()) -> dict[str, Any]:
    value = _object(value, where)
    missing = sorted(required - set(value))
    unknown = sorted(set(value) - required - optional)
    if missing:
        raise Big2SmallError(f"{where}: missing {', '.join(missing)}")
    if unknown:
        raise Big2SmallError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    return value


def _typed(value: Any, hint: Any, where: str) -> Any:
    if not conforms(value, hint):
        raise Big2SmallError(f"{where}: expected {_hint_name(hint)}, got {_kind(value)}")
    return value


def _int(value: Any, where: str, *, low: int = 0, high: int = 1 << 62) -> int:
    _typed(value, int, where)
    if not low <= value <= high:
        raise Big2SmallError(f"{where}: {value} is outside {low}..{high}")
    return value


def _name(value: Any, where: str) -> str:
    _typed(value, str, where)
    if not 0 < len(value) <= MAX_NAME:
        raise Big2SmallError(f"{where}: a name must have 1 to {MAX_NAME} characters")
    return value


def _sha256(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _SHA256.match(value):
        raise Big2SmallError(f"{where}.sha256: expected 64 hex digits")
    return value


def _shape(value: Any, where: str) -> tuple[int, ...]:
    dims = _list(value, where)
    if len(dims) > MAX_DIMS:
        raise Big2SmallError(f"{where}: {len(dims)} dimensions (at most {MAX_DIMS})")
    return tuple(_int(d, f"{where}[{i}]", high=1 << 48) for i, d in enumerate(dims))


def _dtype(value: Any, where: str) -> torch.dtype:
    if not isinstance(value, str) or value not in STORED_DTYPES:
        raise Big2SmallError(f"{where}: unknown dtype {value!r}")
    return STORED_DTYPES[value]


def _record(cls: type, data: dict[str, Any], where: str, *, skip: set[str] = frozenset()) -> None:
    """Refuse keys that are not fields of the dataclass `cls`, fields without a default that are
    missing, and values not of their field's type (fields in `skip` are the caller's)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _field_types(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise Big2SmallError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}")
    for name, f in fields.items():
        if name in skip:
            continue
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise Big2SmallError(f"{where}: missing {name}")
            continue
        _typed(data[name], hints[name], f"{where}.{name}")


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def conforms(value: Any, hint: Any) -> bool:
    """Whether the JSON value `value` has the type `hint` (a field annotation: bool, int, float,
    str, None, Any, unions, list[...] and dict[str, ...] of those). bool is not an int; an int is a
    float."""
    if hint is Any:
        return True
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(conforms(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(conforms(v, args[1]) for v in value.values())
    return False


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
