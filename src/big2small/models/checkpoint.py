"""A model's tensors described from a checkpoint's headers and read one at a time, so that
compressing it never holds the whole model (big2small.streaming).

Streams: a bare safetensors file (its tensors as stored, as load_state_dict_file reads them), a
Hugging Face directory with safetensors weights, one file or sharded with
model.safetensors.index.json (the skeleton is built on the meta device, without memory, for the
tensor names, layer kinds and tied weights; floating tensors are read as float32, as load_hf_dir
loads them, so that both give the same artifact), and a GGUF file through its dense cache (the
conversion, by transformers, holds the model once; later runs stream the cache). Anything else,
a bundled model or a recipe that folds, is loaded whole and described in memory.

Each tensor is read by opening its file (safetensors memory-maps it), copying that tensor out and
closing the file again, so that the mapped pages do not pile up in the process.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from big2small.errors import Big2SmallError
from big2small.models.source import LoadedModel, ModelSource, offline
from big2small.recipe import TensorInfo, describe_module_tensors, describe_state_dict, state_dict_kind
from big2small.tensorfile import DTYPES_BY_NAME

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass
class Checkpoint:
    """A model to compress: its tensors (each TensorInfo reads its own values when asked) and
    where it came from. `streamed`: read from disk tensor by tensor (False: held in memory)."""

    infos: list[TensorInfo]
    source: ModelSource
    streamed: bool
    module: nn.Module | None = None  # the model itself, when it is held in memory

    def probe_model(self) -> nn.Module | Callable[[], nn.Module] | None:
        """What bit allocation by output error runs: the module in memory, or for a streamed HF
        model a loader of the whole model (called only when output error is asked for
        explicitly: "auto" allocates a streamed checkpoint by weight error), else None."""
        if self.module is not None:
            return self.module
        if self.streamed and self.source.kind == "hf":
            from big2small.models import load_model

            return lambda: load_model(self.source.name).weights
        return None


@dataclass(frozen=True)
class StoredTensor:
    """TensorInfo.load of one tensor of a safetensors file, cast to `dtype` (None: as stored).
    Picklable, so that a worker process (or a Ray worker on another node, given shared storage)
    reads it itself."""

    path: str
    key: str
    dtype: torch.dtype | None = None

    def __call__(self) -> torch.Tensor:
        t = self.as_stored()
        return t if self.dtype is None or t.dtype == self.dtype else t.to(self.dtype)

    def as_stored(self) -> torch.Tensor:
        """The tensor in the file's dtype (recipe.as_stored): no copy beyond safetensors' own read."""
        try:
            with safe_open(self.path, "pt") as f:
                return f.get_tensor(self.key)
        except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
            raise Big2SmallError(f"{self.path}: cannot read tensor {self.key} ({_first_line(exc)})") from None


def streamable(spec: str | Path) -> bool:
    """Whether open_checkpoint streams `spec` (a path: safetensors file, HF dir with safetensors
    weights, GGUF file) rather than loading it whole."""
    path = Path(spec)
    if path.is_dir():
        return (path / "config.json").is_file() and ((path / SINGLE_FILE).is_file() or (path / INDEX_FILE).is_file())
    return path.is_file() and path.suffix in (".safetensors", ".gguf")


def open_checkpoint(spec: str | Path) -> Checkpoint:
    """The checkpoint at `spec` (see streamable()), described from its headers; its tensors are
    read later, one at a time. Big2SmallError for a shard missing or unreadable (truncated, a
    header whose sizes do not add up), or a model tensor the weights lack."""
    offline()
    path = Path(spec)
    if path.suffix == ".gguf" and path.is_file():
        from big2small.models.loaders import gguf_dense_dir

        return _hf_dir(gguf_dense_dir(path), name=str(spec))
    if path.is_dir():
        return _hf_dir(path, name=str(spec))
    infos = [TensorInfo(key, shape, dtype, StoredTensor(str(path), key), state_dict_kind(key, shape), True)
             for key, (dtype, shape) in read_header(path).items()]
    return Checkpoint(infos, ModelSource("state_dict", str(spec)), streamed=True)


def open_model_tensors(spec: str | Path) -> Checkpoint:
    """The model `spec` names (models.load_model's names) as a Checkpoint: streamed from its
    files where open_checkpoint can (see streamable()), else loaded whole (a bundled model)."""
    from big2small.models.load import load_model
    from big2small.models.zoo import ZOO

    if str(spec) not in ZOO and streamable(spec):
        return open_checkpoint(spec)
    return in_memory(load_model(spec))


def in_memory(loaded: LoadedModel) -> Checkpoint:
    """A model already loaded (a bundled one, a folded one) as a Checkpoint."""
    weights = loaded.weights
    infos = describe_state_dict(weights) if isinstance(weights, dict) else describe_module_tensors(weights)
    return Checkpoint(infos, loaded.source, streamed=False,
                      module=weights if isinstance(weights, nn.Module) else None)


def read_header(path: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Key -> (dtype, shape) of each tensor of a safetensors file, in the order of their bytes
    (as safetensors' load_file returns them). safetensors checks the header against the file:
    every tensor's byte range against its dtype and shape, and the file's length."""
    try:
        with safe_open(str(path), "pt") as f:
            out = {}
            for key in f.offset_keys():
                s = f.get_slice(key)
                if s.get_dtype() not in DTYPES_BY_NAME:
                    raise Big2SmallError(f"{path}: tensor {key} has dtype {s.get_dtype()}, which big2small does not store")
                out[key] = (DTYPES_BY_NAME[s.get_dtype()], tuple(s.get_shape()))
            return out
    except (SafetensorError, OSError, ValueError) as exc:
        raise Big2SmallError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None


def _hf_dir(path: Path, name: str) -> Checkpoint:
    """An HF directory: its skeleton's tensors (models.skeleton: cached, or built on the meta
    device), each found in a shard."""
    from big2small.models.skeleton import describe_hf_dir
    from big2small.models.tasks import task_of_architecture

    skeleton = describe_hf_dir(path)
    arch = skeleton.architecture
    where = _weight_map(path)
    headers: dict[str, dict[str, tuple[torch.dtype, tuple[int, ...]]]] = {}
    infos = []
    for info in skeleton.tensors:
        key = next((n for n in [info.name, *info.aliases] if n in where), None)
        if key is None:
            raise Big2SmallError(f"{path}: the weights lack {info.name}, which {arch} has")
        shard = where[key]
        if shard not in headers:
            headers[shard] = read_header(path / shard)
        if key not in headers[shard]:
            raise Big2SmallError(f"{path}: {shard} lacks {key}, which its index puts there")
        stored_dtype, shape = headers[shard][key]
        if shape != info.shape:
            raise Big2SmallError(f"{path}: {key} is {list(shape)} in {shard}, the model's config says {list(info.shape)}")
        dtype = torch.float32 if stored_dtype.is_floating_point else stored_dtype
        infos.append(TensorInfo(info.name, shape, dtype, StoredTensor(str(path / shard), key, dtype), info.kind,
                                info.is_parameter, list(info.aliases), stored_dtype=stored_dtype))
    source = ModelSource("hf", name, task_of_architecture(arch), architecture=arch, files_dir=path)
    return Checkpoint(infos, source, streamed=True)


def _weight_map(path: Path) -> dict[str, str]:
    """Tensor name -> shard file of an HF directory; every shard named must be there."""
    if not (path / INDEX_FILE).is_file():
        return {key: SINGLE_FILE for key in read_header(path / SINGLE_FILE)}
    try:
        weight_map = json.loads((path / INDEX_FILE).read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise Big2SmallError(f"{path / INDEX_FILE}: not a safetensors index ({_first_line(exc)})") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise Big2SmallError(f"{path / INDEX_FILE}: its weight_map is not {{tensor: file}}")
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard or not (path / shard).is_file():
            raise Big2SmallError(f"{path}: shard {shard} is missing")
    return weight_map


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
