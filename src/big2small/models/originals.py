"""The original model's figures on its task, measured once per model and protocol, then read from
the on-disk cache (big2small.cache): comparing a compressed model with its original, as `eval`
and `bench` do, costs the original's evaluation only the first time.

An entry is keyed by what the figures depend on: the model's content (class, config, every
tensor's name, dtype, shape and bytes), its tokenizer, the task, the evaluation settings and the
library version; so an edited or retrained model, or another protocol, is measured afresh. It
holds the metric rows (JSON) and the reference outputs that fidelity metrics compare against
(safetensors), written atomically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from big2small.atomic import write_file
from big2small.cache import cache_dir
from big2small.evaluate.suite import EvalSettings, MetricRow
from big2small.models.tasks import evaluate, get_task, reference_outputs
from big2small.version import __version__

# Bump when what an entry holds, or how its figures are measured, changes without a new library version.
CACHE_FORMAT = 1


@dataclass(frozen=True)
class OriginalFigures:
    """The original's metrics on its task, the outputs that fidelity metrics compare a compressed
    model against ({} for tasks without them), and whether they came from the cache."""

    metrics: tuple[MetricRow, ...]
    reference: dict[str, torch.Tensor]
    cached: bool


def original_figures(model: nn.Module, task: str, tokenizer: Any, settings: EvalSettings, *,
                     use_cache: bool = True) -> OriginalFigures:
    """The original `model`'s figures under `settings`: from the cache when this model, tokenizer,
    task and protocol were measured before (and `use_cache`), else measured now and cached."""
    task = get_task(task).name
    key = fingerprint(model, tokenizer, task, settings)
    directory = cache_dir() / "originals"
    if use_cache:
        found = _read(directory, key)
        if found is not None:
            return found
    reference = reference_outputs(model, task, tokenizer, settings) if get_task(task).needs_reference else {}
    metrics = tuple(evaluate(model, task, tokenizer, reference=reference or None, settings=settings))
    _write(directory, key, metrics, reference)
    return OriginalFigures(metrics, reference, cached=False)


def fingerprint(model: nn.Module, tokenizer: Any, task: str, settings: EvalSettings) -> str:
    """A hex digest of everything the original's figures depend on (module docstring)."""
    protocol = {k: v for k, v in settings.to_dict().items() if k != "progress"}
    return content_digest(model, tokenizer, {"format": CACHE_FORMAT, "task": task, "settings": protocol})


def content_digest(model: nn.Module, tokenizer: Any, header: dict[str, Any]) -> str:
    """A hex digest of the model's content (class, config, every tensor's name, dtype, shape and
    bytes), its tokenizer, the library version and `header` (what else a cached entry depends on)."""
    h = hashlib.sha256()

    def add(text: str) -> None:
        h.update(text.encode())
        h.update(b"\0")

    add(json.dumps({"library": __version__, **header}, sort_keys=True, default=str))
    add(f"{type(model).__module__}.{type(model).__qualname__}")
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        fields = {k: v for k, v in config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
        add(json.dumps(fields, sort_keys=True, default=str))
    add(_tokenizer_identity(tokenizer))
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        add(f"{name}:{t.dtype}:{list(t.shape)}")
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _tokenizer_identity(tokenizer: Any) -> str:
    """The tokenizer's full definition where it has one (fast tokenizers), else its vocabulary;
    its class and special tokens either way. Truncation and padding are left out: they are
    settings of the last call (evaluation sets them), not of the tokenizer."""
    if tokenizer is None:
        return "no tokenizer"
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    else:
        definition = getattr(tokenizer, "get_vocab", dict)()
    body = json.dumps(definition, sort_keys=True, default=str)
    special = getattr(tokenizer, "special_tokens_map", {})
    return f"{type(tokenizer).__qualname__}\0{json.dumps(special, sort_keys=True, default=str)}\0{body}"


def _read(directory: Path, key: str) -> OriginalFigures | None:
    """The entry `key`, or None when there is none or it cannot be read (then it is measured again)."""
    try:
        entry = json.loads((directory / f"{key}.json").read_text())
        metrics = tuple(MetricRow(**row) for row in entry["metrics"])
        reference = load_file(str(directory / f"{key}.safetensors")) if entry["reference"] else {}
    except (OSError, ValueError, KeyError, TypeError, SafetensorError):
        return None
    if sorted(reference) != sorted(entry["reference"]):
        return None
    return OriginalFigures(metrics, reference, cached=True)


def _write(directory: Path, key: str, metrics: tuple[MetricRow, ...], reference: dict[str, torch.Tensor]) -> None:
    """Write the entry: the outputs first, then the JSON, which marks the entry complete. A cache
    that cannot be written (read-only, full) costs only the next run's time."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        if reference:
            write_file(directory / f"{key}.safetensors", lambda tmp: save_file(
                {k: v.detach().cpu().contiguous() for k, v in reference.items()}, str(tmp)))
        text = json.dumps({"metrics": [m.to_dict() for m in metrics], "reference": sorted(reference)}, default=str)
        write_file(directory / f"{key}.json", lambda tmp: tmp.write_text(text))
    except OSError:
        pass
