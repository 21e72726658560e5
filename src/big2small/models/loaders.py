"""Reading the model files users bring: a Hugging Face model directory (config.json +
safetensors), a GGUF file that transformers reads (dequantised to fp32, cached), and a bare
safetensors state_dict (model-free: compressed and decompressed without any class).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from big2small.cache import cache_dir
from big2small.errors import Big2SmallError
from big2small.models.source import LoadedModel, ModelSource
from big2small.models.tasks import task_of_architecture
from big2small.recipe import describe_module_tensors

# Files of a Hugging Face directory that are not weights, copied into the artifact so that the
# model and its tokenizer rebuild from the artifact alone.
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack", ".ckpt"}
_MAX_SOURCE_FILE_BYTES = 64 << 20


def hf_class(architecture: str) -> type[nn.Module]:
    """The transformers model class called `architecture`; nothing else transformers exports (an
    artifact's manifest names it, and a manifest is data a stranger may have written).
    transformers is imported on first use: it takes seconds, and the CLI's --help must not pay."""
    import transformers

    cls = getattr(transformers, architecture, None) if isinstance(architecture, str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise Big2SmallError(f"transformers has no model class {architecture!r}")
    return cls


def source_files(files_dir: Path) -> list[Path]:
    """The config/tokenizer files of a model directory worth keeping with an artifact: no weights,
    nothing hidden, nothing huge."""
    files = []
    for f in sorted(Path(files_dir).rglob("*")):
        rel = f.relative_to(files_dir)
        if (f.is_file() and f.suffix not in _WEIGHT_SUFFIXES and f.stat().st_size <= _MAX_SOURCE_FILE_BYTES
                and not any(part.startswith(".") for part in rel.parts)):
            files.append(f)
    return files


def load_tokenizer(path: Path, **kwargs):
    """The tokenizer saved in a model directory, or None when it has none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False, **kwargs)
    except (OSError, ValueError):
        return None  # a model without a tokenizer (vision, or weights only) is fine


def hf_config(path: Path) -> tuple[Any, str]:
    """The transformers config of an HF model directory and the architecture it names."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise Big2SmallError(f"{path}: unreadable config.json ({str(exc).splitlines()[0]})") from None
    arch = (config.architectures or [None])[0]
    if arch is None:
        raise Big2SmallError(f"{path}: config.json names no architecture")
    return config, arch


def load_hf_dir(path: Path, name: str) -> LoadedModel:
    """A Hugging Face model directory, in fp32, with its tokenizer (if any)."""
    _, arch = hf_config(path)
    try:
        model = hf_class(arch).from_pretrained(str(path), dtype=torch.float32, trust_remote_code=False)
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:  # missing, garbled or mismatched weights
        raise Big2SmallError(f"{path}: cannot load weights ({str(exc).splitlines()[0]})") from None
    model.eval()
    source = ModelSource("hf", name, task_of_architecture(arch), architecture=arch, files_dir=path)
    return LoadedModel(model, source, load_tokenizer(path))


def load_gguf(path: Path, name: str) -> LoadedModel:
    """A GGUF file: transformers dequantises it to fp32 (see gguf_dense_dir)."""
    return load_hf_dir(gguf_dense_dir(path), name=name)


def gguf_dense_dir(path: Path) -> Path:
    """The dense HF directory of a GGUF file, converted by transformers (to fp32) once and cached,
    since the conversion takes half a minute and the file is read-only to us."""
    digest = f"{path.resolve()}:{path.stat().st_size}:{int(path.stat().st_mtime)}"
    cached = cache_dir() / "gguf" / hashlib.sha256(digest.encode()).hexdigest()[:16]
    if not (cached / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise Big2SmallError(f"{path}: transformers cannot read this GGUF file ({str(exc).splitlines()[0]})") from None
        tmp = cached.with_name(cached.name + f".tmp-{os.getpid()}")
        _save_dense_hf(model, tmp)
        tok.save_pretrained(str(tmp))
        if cached.exists():
            shutil.rmtree(cached)
        os.replace(tmp, cached)
    return cached


def _save_dense_hf(model: nn.Module, path: Path) -> None:
    """save_pretrained refuses GGUF-loaded models, though their weights are plain fp32 tensors now:
    write the config (without the GGUF quantisation record) and the weights (tied ones once)."""
    path.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    (path / "config.json").write_text(json.dumps(config, indent=2))
    state = {info.name: info.load().contiguous() for info in describe_module_tensors(model)}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def load_state_dict_file(path: Path) -> LoadedModel:
    """A bare safetensors state_dict (no model class: compressed model-free)."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise Big2SmallError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    return LoadedModel(None, ModelSource("state_dict", str(path)), state_dict=state)
