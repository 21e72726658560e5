"""The Hugging Face side of an export: the config a folded model needs, and the plain dense
directory (`save_pretrained`'s layout) that `AutoModel*.from_pretrained` reloads."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from torch import nn

from big2small.compress import CompressedModel
from big2small.generators.raw import STORAGE_DTYPES
from big2small.errors import Big2SmallError
from big2small.export.records import ExportedTensor, requantisation_error
from big2small.models.hf_config import check_described, folded_fields
from big2small.restore import restore


def restored_model(cm: CompressedModel) -> nn.Module:
    """The artifact as a dense transformers model whose config describes its (maybe folded) shapes;
    refuses a model transformers' config cannot describe (e.g. MLP widths that differ per layer)."""
    if cm.source is None or cm.source.kind != "hf":
        raise Big2SmallError("this export needs a Hugging Face model (the artifact holds "
                             f"{'no source record' if cm.source is None else 'a ' + cm.source.kind})")
    model = restore(cm)
    shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    for key, value in folded_fields(model.config.to_dict(), shapes).items():
        setattr(model.config, key, value)
    check_described(model.config, type(model), shapes)
    return model


def copy_tokenizer_files(cm: CompressedModel, directory: Path) -> None:
    """The artifact's source files other than config.json (tokenizer, chat template) into `directory`."""
    files_dir = cm.source.files_dir if cm.source is not None else None
    if files_dir is None:
        return
    for f in sorted(files_dir.rglob("*")):
        rel = f.relative_to(files_dir)
        if f.is_file() and rel.as_posix() not in ("config.json", "generation_config.json"):
            (directory / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, directory / rel)


def dense_tensors(cm: CompressedModel, state: dict[str, torch.Tensor], dtype: str) -> list[ExportedTensor]:
    """The artifact's tensors as written densely in `dtype`: exact when our decoded values survive
    the cast, else with the cast's error against them (e.g. 4-bit codes times an fp16 scale need up
    to 15 mantissa bits, fp16 has 11)."""
    out = []
    for name in cm.tensors:
        ours = state[name]
        cast = ours.to(STORAGE_DTYPES[dtype])
        exact = bool(torch.equal(cast.to(ours.dtype), ours))
        out.append(ExportedTensor(name, name, dtype, exact, None if exact else requantisation_error(ours, cast)))
    return out


def write(cm: CompressedModel, directory: Path, *, dtype: str) -> list[ExportedTensor]:
    """A dense model directory at `directory` (a fresh temporary directory: the caller publishes
    it): config.json, model.safetensors in `dtype` (float16, bfloat16, float32), tokenizer files."""
    if dtype not in STORAGE_DTYPES:
        raise Big2SmallError(f"hf: dtype must be one of {', '.join(sorted(STORAGE_DTYPES))}, got {dtype!r}")
    model = restored_model(cm)
    report = dense_tensors(cm, model.state_dict(), dtype)
    model = model.to(STORAGE_DTYPES[dtype])
    model.config.dtype = dtype
    model.save_pretrained(str(directory))
    copy_tokenizer_files(cm, directory)
    return report
