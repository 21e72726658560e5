"""Export an artifact to the formats inference engines read.

    b2s.export("model.b2s", "gguf", "model.gguf", fallback_type="q8_0")   # llama.cpp, Ollama
    b2s.export("model.b2s", "compressed-tensors", "model-ct/")            # vLLM, transformers
    b2s.export("model.b2s", "hf", "model-hf/")                            # AutoModel*.from_pretrained

- `gguf` (big2small.export.gguf): exact GGUF types where our codec has one, re-quantised
  (`fallback_type`) otherwise, with the cost measured;
- `compressed-tensors` (big2small.export.compressed_tensors): packed int codes, scales and
  zero-points of the uniform codec, bit for bit;
- `hf` (big2small.export.hf): dense weights in `dtype`.

Outputs appear in one step (big2small.atomic): a failed or refused export leaves nothing behind.
`overwrite` replaces a file with a file (gguf) and an exported directory with a directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from big2small import atomic
from big2small.artifact import artifact_info, ensure_writable, load, read_manifest
from big2small.errors import Big2SmallError
from big2small.export.records import ExportedTensor, ExportReport

FORMATS = ("gguf", "compressed-tensors", "hf")
# What an exported directory may hold, so that `overwrite` never replaces anything else.
_EXPORT_SUFFIXES = {".json", ".safetensors", ".jinja", ".txt", ".model"}

__all__ = ["FORMATS", "ExportReport", "ExportedTensor", "export"]


def export(artifact: str | os.PathLike, to: str, out: str | os.PathLike, *, fallback_type: str | None = None,
           tokenizer_from: str | os.PathLike | None = None, dtype: str = "float16",
           overwrite: bool = False) -> ExportReport:
    """Write the artifact at `artifact` in format `to` (FORMATS) at `out`.

    fallback_type: gguf: the type of tensors with no exact GGUF counterpart (gguf.FALLBACK_TYPES);
        None refuses them. tokenizer_from: gguf: a GGUF file whose tokenizer metadata to copy
        (default: the model's own source GGUF, when it came from one). dtype: hf and
        compressed-tensors: the dtype of dense tensors and scales (float16, bfloat16, float32).
    """
    if to not in FORMATS:
        raise Big2SmallError(f"unknown export format {to!r}: use {', '.join(FORMATS)}")
    if to != "gguf" and (fallback_type is not None or tokenizer_from is not None):
        raise Big2SmallError("--fallback-type and --tokenizer-from apply to --to gguf only")
    if to == "gguf":
        from big2small.export.gguf import FALLBACK_TYPES

        if fallback_type is not None and fallback_type not in FALLBACK_TYPES:
            raise Big2SmallError(f"gguf: fallback type {fallback_type!r} is not one of {', '.join(FALLBACK_TYPES)} "
                                 "(for K-quants: export f16, then run llama.cpp's quantize on it)")
    out = check_output(out, directory=to != "gguf", overwrite=overwrite)
    info = artifact_info(artifact, read_manifest(artifact))
    cm = load(artifact)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale(out.parent)
    tmp = atomic.temporary_path(out)
    notes: list[str] = []
    try:
        if to == "gguf":
            from big2small.export import gguf
            from big2small.models.load import source_gguf

            tokenizer = Path(tokenizer_from) if tokenizer_from is not None else (
                source_gguf(cm.source) if cm.source is not None else None)
            if tokenizer is not None and not tokenizer.is_file():
                raise Big2SmallError(f"{tokenizer}: no such GGUF file")
            name = cm.source.name if cm.source is not None else Path(artifact).name
            tensors = gguf.write(cm, tmp, fallback=fallback_type, tokenizer_gguf=tokenizer, name=name)
            notes.append(f"tokenizer metadata copied from {tokenizer}")
            size = tmp.stat().st_size
        else:
            tmp.mkdir()
            if to == "hf":
                from big2small.export import hf

                tensors = hf.write(cm, tmp, dtype=dtype)
            else:
                from big2small.export import compressed_tensors

                tensors = compressed_tensors.write(cm, tmp, dtype=dtype)
            size = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file())
        atomic.publish(tmp, out, replace=overwrite)
    except FileExistsError:
        _discard(tmp)
        raise Big2SmallError(f"{out} exists; pass overwrite=True (--overwrite) to replace it") from None
    except BaseException:
        _discard(tmp)
        raise
    return ExportReport(to, out, size, info.weights_bytes, tensors, notes)


def check_output(out: str | os.PathLike, *, directory: bool, overwrite: bool) -> Path:
    """`out` as a Path once an export may be written there: nothing there, or with `overwrite` a
    file (for a file) or a directory of exported files only (for a directory)."""
    out = Path(out)
    if not directory:
        return ensure_writable(out, overwrite=overwrite, output="file")
    if os.path.lexists(out):
        if not overwrite:
            raise Big2SmallError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
        if out.is_symlink() or not out.is_dir() or any(
                not f.is_file() or f.is_symlink() or f.suffix not in _EXPORT_SUFFIXES for f in out.rglob("*")):
            raise Big2SmallError(f"{out} is not an exported model directory; --overwrite only ever replaces one")
    parent = next((p for p in out.parents if os.path.lexists(p)), None)
    if parent is not None and not parent.is_dir():
        raise Big2SmallError(f"cannot write {out}: {parent} is not a directory")
    return out


def _discard(tmp: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
