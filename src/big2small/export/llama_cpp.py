"""An exported GGUF run by llama.cpp itself (through llama-cpp-python, the `export` extra): as a
causal-LM module, so that big2small.evaluate.perplexity measures it on exactly our protocol (same
text, windows and start token), and its generation speed at batch 1."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from big2small.errors import Big2SmallError


def open_gguf(path: str | os.PathLike, *, n_ctx: int, logits_all: bool, threads: int | None = None) -> Any:
    """llama.cpp's model and context for the GGUF at `path` (a Big2SmallError when it refuses it)."""
    try:
        from llama_cpp import Llama
    except ImportError:
        raise Big2SmallError("llama-cpp-python is not installed: pip install big2small[export]") from None
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=logits_all,
                     n_threads=threads or os.cpu_count(), verbose=False)
    except ValueError as exc:
        raise Big2SmallError(f"{path}: llama.cpp cannot load it ({str(exc).splitlines()[0]})") from None


class LlamaCppLM(nn.Module):
    """llama.cpp as a causal LM: forward(input_ids [B, T]) -> fp32 logits [B, T, V], each row
    evaluated from an empty KV cache. `config` (the model's HF config) lets perplexity find the
    start token as it does for our own model."""

    def __init__(self, path: str | os.PathLike, *, n_ctx: int, config: Any = None, threads: int | None = None) -> None:
        super().__init__()
        self.llm = open_gguf(path, n_ctx=n_ctx, logits_all=True, threads=threads)
        self.config = config
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # device and dtype of the logits

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        rows = []
        for ids in input_ids.tolist():  # llama.cpp evaluates one sequence per context
            self.llm.reset()
            self.llm.eval(ids)
            rows.append(torch.from_numpy(np.array(self.llm.scores[: len(ids)], dtype=np.float32)))
        return torch.stack(rows)


@dataclass
class Speed:
    """llama.cpp's speed at batch 1, in tokens per second: prompt processing and greedy generation."""

    prompt_tokens: int
    generated_tokens: int
    prompt_tps: float
    generate_tps: float
    threads: int


def generation_speed(path: str | os.PathLike, prompt: list[int], *, new_tokens: int = 128,
                     threads: int | None = None, repeats: int = 3) -> Speed:
    """Evaluate `prompt` then generate `new_tokens` greedily, `repeats` times; the best time of each
    phase (seconds measured with perf_counter) gives tokens per second."""
    threads = threads or os.cpu_count()
    llm = open_gguf(path, n_ctx=len(prompt) + new_tokens + 8, logits_all=False, threads=threads)
    best_prompt = best_gen = float("inf")
    for _ in range(repeats):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        middle = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
        end = time.perf_counter()
        best_prompt, best_gen = min(best_prompt, middle - start), min(best_gen, end - middle)
    return Speed(len(prompt), new_tokens, len(prompt) / best_prompt, new_tokens / best_gen, threads)


def quantize(source: str | os.PathLike, out: str | os.PathLike, ftype: str = "Q4_K_M") -> Path:
    """llama.cpp's own quantiser (llama_model_quantize) on a GGUF file, e.g. an f16 export to its
    Q4_K_M: the reference llama.cpp users would otherwise make."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise Big2SmallError(f"llama.cpp could not quantise {source} to {ftype}")
    return Path(out)
