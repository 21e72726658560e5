"""Config: the one base of every settings dataclass (generators, recipes, folding, self-compression,
training, evaluation), with one JSON form.

`to_dict()` writes every field plus a "version" key (the class's `version`, raised when its
options change meaning); a tagged base (`tag_key`, e.g. a generator's "method") also writes its
tag, and `from_dict` on the base picks the subclass by it. `from_dict()` refuses unknown keys
(listing the known ones), values of the wrong type and versions newer than this code, builds
nested configs and lists of them by field type, and calls `validate()`. A dict without "version"
is version 1 (written before configs carried one); an older version passes through `upgrade`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any, ClassVar, Union

from big2small.errors import Big2SmallError

VERSION_KEY = "version"


@dataclasses.dataclass
class Config:
    """Base of every config dataclass; see the module docstring for the JSON contract."""

    version: ClassVar[int] = 1
    # On a base whose subclasses JSON tells apart: the key naming the subclass, whose value is the
    # subclass's class attribute of that name (GeneratorConfig: "method", e.g. "uniform").
    tag_key: ClassVar[str] = ""

    def validate(self) -> None:
        """Raise Big2SmallError if the options are out of range."""

    @classmethod
    def label(cls) -> str:
        """The name errors give this config: its tag ("uniform", "fold"), else its class name."""
        return (getattr(cls, cls.tag_key, "") if cls.tag_key else "") or cls.__name__

    @classmethod
    def variants(cls) -> dict[str, type[Config]]:
        """Tag value -> subclass, for a tagged base (the subclasses defined so far)."""
        found, todo = {}, [cls]
        while todo:
            c = todo.pop()
            todo += c.__subclasses__()
            if getattr(c, cls.tag_key, ""):
                found[getattr(c, cls.tag_key)] = c
        return found

    @classmethod
    def upgrade(cls, data: dict[str, Any], version: int) -> dict[str, Any]:
        """Turn the dict of an older `version` into this version's. The default keeps it as it is,
        which is right while a version only adds options with defaults."""
        return data

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {self.tag_key: getattr(self, self.tag_key)} if self.tag_key else {}
        out[VERSION_KEY] = self.version
        out.update({f.name: _encode(getattr(self, f.name)) for f in dataclasses.fields(self)})
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_json(cls, text: str) -> typing.Self:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise Big2SmallError(f"{cls.label()}: not JSON ({exc})") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Any) -> typing.Self:
        """The config `data` (from to_dict or JSON) describes, checked and validated."""
        if not isinstance(data, dict):
            raise Big2SmallError(f"{cls.label()}: expected a JSON object, got {data!r}")
        target = cls._variant(data)
        return target._build(target._current(data))

    @classmethod
    def _variant(cls, data: dict[str, Any]) -> type[Config]:
        if not cls.tag_key or data.get(cls.tag_key) is None:
            if cls.tag_key and not getattr(cls, cls.tag_key, ""):
                raise Big2SmallError(f"{cls.label()}: needs a {cls.tag_key!r} key (one of {', '.join(sorted(cls.variants()))})")
            return cls
        tag, variants = data[cls.tag_key], cls.variants()
        if not isinstance(tag, str) or tag not in variants:
            raise Big2SmallError(f"unknown {cls.tag_key} {tag!r}; known: {', '.join(sorted(variants))}")
        if not issubclass(variants[tag], cls):
            raise Big2SmallError(f"{cls.label()}: got {cls.tag_key} {tag!r}")
        return variants[tag]

    @classmethod
    def _current(cls, data: dict[str, Any]) -> dict[str, Any]:
        """`data` at this class's version: checked, upgraded if older, without tag and version."""
        version = data.get(VERSION_KEY, 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise Big2SmallError(f"{cls.label()}: version must be a positive integer, got {version!r}")
        if version > cls.version:
            raise Big2SmallError(f"{cls.label()}: version {version} was written by a newer big2small "
                                 f"(this one reads up to version {cls.version}); upgrade big2small")
        data = {k: v for k, v in data.items() if k != VERSION_KEY and not (cls.tag_key and k == cls.tag_key)}
        return cls.upgrade(data, version) if version < cls.version else data

    @classmethod
    def _build(cls, data: dict[str, Any]) -> typing.Self:
        types_ = _field_types(cls)
        unknown = sorted(set(data) - set(types_))
        if unknown:
            raise Big2SmallError(f"{cls.label()}: unknown option(s) {unknown}; known: {', '.join(sorted(types_))}")
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise Big2SmallError(f"{cls.label()}: missing option(s) {missing}")
        values = {k: _decode(v, types_[k]) for k, v in data.items()}
        try:
            config = cls(**values)  # __post_init__ may coerce (e.g. "1.0/0.9" to a list), or check
        except (TypeError, ValueError, Big2SmallError) as exc:  # a value of the wrong type explains it best
            message = str(exc) if isinstance(exc, Big2SmallError) else f"{cls.label()}: {exc}"
            raise Big2SmallError(cls._type_error(values) or message) from None
        error = cls._type_error({k: getattr(config, k) for k in types_})
        if error:
            raise Big2SmallError(error)
        config.validate()
        return config

    @classmethod
    def _type_error(cls, values: dict[str, Any]) -> str | None:
        types_ = _field_types(cls)
        for name, value in values.items():
            if not _is_instance(value, types_[name]):
                return f"{cls.label()}: {name} must be {_describe(types_[name])}, got {value!r}"
        return None


@dataclasses.dataclass
class TransformConfig(Config):
    """Base of the structural transforms a recipe may list before storage (folding), tagged
    {"transform": kind, ...} in JSON."""

    tag_key: ClassVar[str] = "transform"
    transform: ClassVar[str] = ""


@functools.cache
def _field_types(cls: type[Config]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _encode(value: Any) -> Any:
    if isinstance(value, Config):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any, hint: Any) -> Any:
    """Nested configs (and lists and dicts of them) built from their dicts; other values as given."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        configs = [a for a in args if isinstance(a, type) and issubclass(a, Config)]
        return configs[0].from_dict(value) if len(configs) == 1 and isinstance(value, dict) else value
    if isinstance(hint, type) and issubclass(hint, Config) and isinstance(value, dict):
        return hint.from_dict(value)
    if origin is list and isinstance(value, list):
        return [_decode(v, args[0]) for v in value]
    if origin is dict and isinstance(value, dict):
        return {k: _decode(v, args[1]) for k, v in value.items()}
    return value


def _is_instance(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_is_instance(value, a) for a in args)
    if hint in (None, type(None)):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        return isinstance(value, list) and all(_is_instance(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_is_instance(k, args[0]) and _is_instance(v, args[1]) for k, v in value.items())
    if isinstance(hint, type):
        return isinstance(value, hint)
    raise TypeError(f"config fields of type {hint} are not supported")


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        names = [_describe(a) for a in args]
        return ", ".join(names[:-1]) + " or " + names[-1]
    if origin is list:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return f"a mapping of {_describe(args[0])} to {_describe(args[1])}"
    if hint in (None, type(None)):
        return "None"
    return getattr(hint, "__name__", str(hint))
