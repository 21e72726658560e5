"""The synthetic inputs a teacher is distilled on, chosen by its task, and their on-disk cache
(docs/distillation.md#synthetic-inputs).

| task | source "auto" | also |
|---|---|---|
| causal-lm | "self": the teacher samples its own text (big2small.distill.text) | "random" |
| encoder, text-classifier | "smollm2": text SmolLM2 samples, re-tokenised for the teacher | "random" |
| image classifiers | "inversion": images matching the BatchNorm statistics (distill.inversion) | "random" (Gaussian) |

A source that cannot apply (an encoder asked to sample itself, a CNN without BatchNorm asked for
inversion) is refused in one line that names the sources that do, never replaced silently.

The cache (`<cache>/synthetic/<key>.safetensors` + `.json`, written atomically, JSON last) is keyed
by the teacher's content and tokenizer (big2small.models.originals.content_digest), the task, the
source and every setting the inputs depend on: a second run with the same teacher, seed and
settings reads the same tensors back.
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from big2small.atomic import write_file
from big2small.cache import cache_dir
from big2small.distill.config import DistillConfig
from big2small.distill.inversion import batchnorm_layers, invert_batchnorm
from big2small.distill.loop import IMAGES
from big2small.distill.text import can_generate, random_tokens, retokenize, sample_text
from big2small.errors import Big2SmallError

TEXT_TASKS = ("causal-lm", "encoder", "text-classifier")
IMAGE_TASKS = ("image-classifier", "fashion-mnist-classifier")
TEXT_GENERATOR = "smollm2"  # the bundled causal LM whose text encoders are distilled on
CACHE_FORMAT = 1  # bump when what an entry holds changes without a new library version


def resolve_source(model: nn.Module, task: str, source: str) -> str:
    """The concrete source for `task` ("auto" resolved), or a Big2SmallError that says which apply."""
    if task in TEXT_TASKS:
        own = "self" if task == "causal-lm" else TEXT_GENERATOR
        usable = ("self", "random") if task == "causal-lm" else (TEXT_GENERATOR, "random")
    elif task in IMAGE_TASKS:
        own, usable = "inversion", ("inversion", "random")
    else:
        raise Big2SmallError(f"no synthetic inputs for task {task!r}: distillation supports "
                             f"{', '.join(TEXT_TASKS + IMAGE_TASKS)}")
    source = own if source == "auto" else source
    if source not in usable:
        why = {"self": "it cannot generate text", "inversion": "it reads tokens, not images",
               TEXT_GENERATOR: "SmolLM2's text feeds text models"}.get(source, "it does not apply")
        raise Big2SmallError(f"source {source!r} does not apply to a {task} model ({why}); "
                             f"use {' or '.join(usable)}")
    if source == "self" and not can_generate(model):
        raise Big2SmallError(f"{type(model).__name__} cannot generate text: use source random")
    if source == "inversion" and not batchnorm_layers(model):
        raise Big2SmallError(f"{type(model).__name__} has no BatchNorm statistics to invert: use source random "
                             "(Gaussian images)")
    return source


def _settings(config: DistillConfig, task: str, source: str, shape: tuple[int, ...] | None) -> dict[str, Any]:
    """What the inputs depend on besides the teacher (the cache key's header)."""
    keys = ["samples", "seed"] + (["seq_len"] if task in TEXT_TASKS else []) + \
        (["greedy_tokens", "temperature"] if source in ("self", TEXT_GENERATOR) else []) + \
        (["inversion_steps", "inversion_lr"] if source == "inversion" else [])
    return {"format": CACHE_FORMAT, "task": task, "source": source, "shape": shape,
            **{k: getattr(config, k) for k in keys}}


def synthetic_inputs(model: nn.Module, task: str, tokenizer: Any, config: DistillConfig, *,
                     example_input: Any = None, use_cache: bool = True, progress: bool = True) -> dict[str, torch.Tensor]:
    """`config.samples` synthetic inputs for the teacher `model` of `task`, from the cache when
    made before: {"input_ids", "attention_mask"} int64 [N, seq_len] for text, {"images"} float32
    [N, C, H, W] for images. `example_input` (images: one batch, for the shape) comes from the task."""
    source, shape, settings, directory, key = _entry(model, task, tokenizer, config, example_input)
    if use_cache:
        found = _read(directory, key)
        if found is not None:
            return found
    start = time.perf_counter()
    inputs = _make(model, task, tokenizer, config, source, shape, progress)
    _write(directory, key, inputs, {**settings, "seconds": time.perf_counter() - start})
    return inputs


def making_seconds(model: nn.Module, task: str, tokenizer: Any, config: DistillConfig, *,
                   example_input: Any = None) -> float | None:
    """Wall time (seconds) the cached inputs of these arguments (as for synthetic_inputs) took to
    make when they were made, or None when they are not in the cache: what a run that read them
    back saved."""
    *_, directory, key = _entry(model, task, tokenizer, config, example_input)
    try:
        return float(json.loads((directory / f"{key}.json").read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _entry(model: nn.Module, task: str, tokenizer: Any, config: DistillConfig, example_input: Any):
    """(source, shape, settings, cache directory, cache key) of the inputs synthetic_inputs makes."""
    config.validate()
    source = resolve_source(model, task, config.source)
    shape = None
    if task in IMAGE_TASKS:
        if example_input is None:
            raise Big2SmallError("synthetic images need an example input for their shape")
        shape = tuple(example_input.shape[1:])
        if config.image_size is not None:
            shape = shape[:-2] + (config.image_size, config.image_size)
    settings = _settings(config, task, source, shape)
    from big2small.models.originals import content_digest  # imported here: it loads the evaluators

    return source, shape, settings, cache_dir() / "synthetic", content_digest(model, tokenizer, settings)


def _make(model: nn.Module, task: str, tokenizer: Any, config: DistillConfig, source: str,
          shape: tuple[int, ...] | None, progress: bool) -> dict[str, torch.Tensor]:
    n = config.samples
    if source == "inversion":
        return {IMAGES: invert_batchnorm(model, shape, samples=n, steps=config.inversion_steps, lr=config.inversion_lr,
                                         seed=config.seed, progress=progress)}
    if task in IMAGE_TASKS:  # random: standard Gaussian images (inputs are normalised)
        return {IMAGES: torch.randn((n, *shape), generator=torch.Generator().manual_seed(config.seed))}
    sampling = dict(samples=n, seq_len=config.seq_len, seed=config.seed, greedy_tokens=config.greedy_tokens,
                    temperature=config.temperature, progress=progress)
    if source == "self":
        ids = sample_text(model, start_token_id=_start_token(model, tokenizer), **sampling)
    elif source == TEXT_GENERATOR:
        if tokenizer is None:
            raise Big2SmallError("text sampled by SmolLM2 must be re-tokenised: the teacher's tokenizer is needed")
        from big2small.models.load import load_model

        generator = load_model(TEXT_GENERATOR)
        ids = sample_text(generator.model, start_token_id=_start_token(generator.model, generator.tokenizer), **sampling)
        return retokenize(ids, generator.tokenizer, tokenizer, config.seq_len)
    else:
        vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 0)
        if vocab < 2:
            raise Big2SmallError("random tokens need the model's vocabulary size (config.vocab_size)")
        specials = tuple(getattr(tokenizer, "all_special_ids", ()) or ())
        framed = task != "causal-lm"  # encoders read [CLS] ... [SEP]
        ids = random_tokens(vocab, samples=n, seq_len=config.seq_len, seed=config.seed, special_ids=specials,
                            first_id=_special(tokenizer, "cls_token_id") if framed else _start_token(model, tokenizer),
                            last_id=_special(tokenizer, "sep_token_id") if framed else None)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _special(tokenizer: Any, name: str) -> int | None:
    value = getattr(tokenizer, name, None)
    return int(value) if value is not None else None


def _start_token(model: nn.Module, tokenizer: Any) -> int:
    """The token every sampled sequence starts with: the one perplexity prepends (the model's own)."""
    from big2small.evaluate.perplexity import start_token

    token_id, _ = start_token(tokenizer, getattr(model, "config", None))
    if token_id is None:
        raise Big2SmallError("the model names no start token to sample text from (neither tokenizer nor config)")
    return token_id


def _read(directory, key: str) -> dict[str, torch.Tensor] | None:
    """The cached inputs `key`, or None when absent or unreadable (then they are made again)."""
    try:
        entry = json.loads((directory / f"{key}.json").read_text())
        tensors = load_file(str(directory / f"{key}.safetensors"))
    except (OSError, ValueError, SafetensorError):
        return None
    return tensors if sorted(tensors) == entry.get("tensors") else None


def _write(directory, key: str, inputs: dict[str, torch.Tensor], settings: dict[str, Any]) -> None:
    """Tensors first, then the JSON that marks the entry complete; a cache that cannot be written
    costs only the next run's time."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_file(directory / f"{key}.safetensors",
                   lambda tmp: save_file({k: v.contiguous() for k, v in inputs.items()}, str(tmp)))
        text = json.dumps({**settings, "tensors": sorted(inputs)}, default=str)
        write_file(directory / f"{key}.json", lambda tmp: tmp.write_text(text))
    except OSError:
        pass
