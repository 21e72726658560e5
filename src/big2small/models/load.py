"""Loading a model by what the user names, and rebuilding a model's skeleton from its source
record (to restore an artifact into)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from big2small.errors import Big2SmallError
from big2small.models.loaders import hf_class, load_gguf, load_hf_dir, load_state_dict_file, load_tokenizer
from big2small.models.source import LoadedModel, ModelSource, offline
from big2small.models.zoo import FACTORIES, GGUF_SOURCES, ZOO

# Factories recorded by earlier versions, before the bundled networks moved into the zoo.
LEGACY_FACTORIES = {
    "big2small.folding.fashion_resnet:fashion_resnet": "big2small.models.zoo.fashion:fashion_resnet",
    "big2small.selfcompress.fashion:fashion_cnn": "big2small.models.zoo.fashion:fashion_cnn",
    "big2small.models:efficientnet_lite0_skeleton": "big2small.models.zoo:efficientnet_lite0_skeleton",
}


def load_model(spec: str | os.PathLike) -> LoadedModel:
    """Load a model from a bundled name, an HF directory, a GGUF file or a safetensors state_dict."""
    offline()
    spec_s = str(spec)
    if spec_s in ZOO:
        return ZOO[spec_s].load()
    path = Path(spec_s)
    if not path.exists():
        raise Big2SmallError(f"{spec_s}: no such file or directory (bundled models: {', '.join(ZOO)})")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise Big2SmallError(f"{path}: not a Hugging Face model directory (no config.json)")
        return load_hf_dir(path, name=spec_s)
    if path.suffix == ".gguf":
        return load_gguf(path, name=spec_s)
    if path.suffix == ".safetensors":
        return load_state_dict_file(path)
    raise Big2SmallError(f"{path}: unsupported model file (use an HF directory, a .gguf or a .safetensors file)")


@contextlib.contextmanager
def empty_parameters() -> Iterator[None]:
    """Within it, every Parameter a module registers goes to PyTorch's meta device (no memory; a
    constructor's own torch.empty is dropped untouched), while buffers stay real: the ones a
    constructor computes (rotary frequencies, position ids), which no artifact stores, keep their
    values. The same idea as accelerate's init_empty_weights."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        if param is not None and not param.is_meta:
            module._parameters[name] = nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def build_skeleton(source: ModelSource) -> nn.Module:
    """An untrained model of the source's architecture, ready for the decoded weights: its
    parameters on the meta device (empty_parameters), for big2small.fill to put in place one at
    a time; its buffers real."""
    offline()
    if source.kind == "hf":
        if source.files_dir is None or not (source.files_dir / "config.json").is_file():
            raise Big2SmallError("artifact has no source/config.json: cannot rebuild the Hugging Face model")
        from transformers import AutoConfig  # imported on first use: it takes seconds

        try:  # never run code an artifact carries (an auto_map with a Python file)
            config = AutoConfig.from_pretrained(str(source.files_dir), trust_remote_code=False)
        except (OSError, ValueError) as exc:
            raise Big2SmallError(f"cannot rebuild the model from the artifact's config.json ({str(exc).splitlines()[0]})") from None
        with empty_parameters():
            return hf_class(source.architecture)(config).float().eval()
    if source.kind == "module" and source.factory:
        make = FACTORIES.get(LEGACY_FACTORIES.get(source.factory, source.factory))
        if make is None:  # never import or call what a manifest names: only the zoo's own factories
            raise Big2SmallError(f"this artifact names the factory {source.factory!r}, which is not one of "
                                 "big2small's bundled models: pass its skeleton instead")
        with empty_parameters():
            return make()
    raise Big2SmallError(
        f"this artifact holds a {source.kind} ({source.module_class or source.name}): pass its skeleton "
        "(an instance of the model class) to load it, or use `decompress` for a dense state_dict"
    )


def load_tokenizer_from(source: ModelSource) -> Any:
    """The tokenizer stored with an artifact's source files, or None."""
    if source.files_dir is None:
        return None
    return load_tokenizer(source.files_dir)


def source_gguf(source: ModelSource) -> Path | None:
    """The GGUF file a model was loaded from (a bundled GGUF model, or a .gguf path that still
    exists), or None."""
    if source.name in GGUF_SOURCES:
        return GGUF_SOURCES[source.name]()
    path = Path(source.name)
    return path if path.suffix == ".gguf" and path.is_file() else None
