"""What a Hugging Face model directory's tensors are (names in state_dict order, shapes, layer
kinds, tied weights), from the skeleton transformers builds on the meta device, cached on disk so
that compressing a checkpoint whose config was seen before does not import transformers (about 6 s
of CPU on one core, in the driver, before any tensor is planned: big2small.streaming).

The skeleton is a function of config.json's bytes and of the transformers that builds it; the
cache entry (`skeletons/KEY.json` in big2small.cache's folder) is keyed by both, and by this
format's version and big2small's, so a changed config, an upgraded transformers or a new
big2small builds it afresh. An entry that cannot be read or written is rebuilt and otherwise
ignored: the cache only saves time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from big2small import atomic
from big2small.cache import cache_dir
from big2small.errors import Big2SmallError
from big2small.version import __version__

CONFIG_FILE = "config.json"
FORMAT = 1  # of a cache entry; bump when describe_module_tensors' output changes meaning


@dataclass(frozen=True)
class SkeletonTensor:
    """One tensor of the skeleton's state_dict (tied ones once, the others as `aliases`)."""

    name: str
    shape: tuple[int, ...]
    kind: str
    is_parameter: bool
    aliases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Skeleton:
    """The architecture config.json names and its tensors, in state_dict order."""

    architecture: str
    tensors: list[SkeletonTensor]


def describe_hf_dir(path: Path) -> Skeleton:
    """The skeleton description of the HF directory `path`: from the cache when an entry for this
    config.json, transformers and big2small is there, else built (importing transformers) and
    stored. Big2SmallError for an unreadable config.json or an architecture transformers lacks."""
    try:
        config_bytes = (path / CONFIG_FILE).read_bytes()
    except OSError as exc:
        raise Big2SmallError(f"{path}: unreadable {CONFIG_FILE} ({exc.strerror or exc})") from None
    try:
        entry = cache_dir() / "skeletons" / f"{_key(config_bytes)}.json"
    except OSError:  # no cache folder can be made (a read-only home): build it every time
        return _build(path)
    cached = _read(entry)
    if cached is not None:
        return cached
    skeleton = _build(path)
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_file(entry, lambda tmp: tmp.write_text(json.dumps(asdict(skeleton)) + "\n"))
    except OSError:
        pass  # a read-only or full cache: the next run builds it again
    return skeleton


def _key(config_bytes: bytes) -> str:
    """What a cache entry is valid for: config.json's bytes and the versions that interpret them."""
    try:
        transformers_version = metadata.version("transformers")
    except metadata.PackageNotFoundError:
        transformers_version = "none"
    versions = f"{FORMAT}|{__version__}|{transformers_version}|{torch.__version__}|".encode()
    return hashlib.sha256(versions + config_bytes).hexdigest()


def _build(path: Path) -> Skeleton:
    """Build the skeleton on the meta device (no memory for its weights) and describe it."""
    from big2small.models.loaders import hf_class, hf_config
    from big2small.recipe import describe_module_tensors

    config, arch = hf_config(path)
    with torch.device("meta"):
        skeleton = hf_class(arch)(config)
    tensors = [SkeletonTensor(i.name, i.shape, i.kind, i.is_parameter, list(i.aliases))
               for i in describe_module_tensors(skeleton)]
    return Skeleton(arch, tensors)


def _read(entry: Path) -> Skeleton | None:
    """The description a cache entry holds, or None when there is none or it is not one."""
    try:
        d = json.loads(entry.read_text())
        tensors = [SkeletonTensor(t["name"], tuple(int(n) for n in t["shape"]), t["kind"], bool(t["is_parameter"]),
                                  [str(a) for a in t["aliases"]]) for t in d["tensors"]]
        if not isinstance(d["architecture"], str) or not all(isinstance(t.name, str) and isinstance(t.kind, str)
                                                            for t in tensors):
            return None
        return Skeleton(d["architecture"], tensors)
    except (OSError, ValueError, KeyError, TypeError):
        return None
