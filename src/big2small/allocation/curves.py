"""Each tensor's error curve: for every candidate configuration, its exact stored bits and the
relative squared error it leaves, measured by encoding a sample of the tensor's rows.

Relative error is ||W - W_hat||^2 / ||W||^2 (unitless); on the sample it predicts the whole
tensor's for codecs whose groups and scales live within rows (uniform, trellis, hyper). Encoding
a sample costs a fraction of encoding the tensor, so every candidate can be tried.
"""

from __future__ import annotations

import contextlib
import functools
import json
from typing import Any

import torch

from big2small.errors import Big2SmallError
from big2small.generators import REGISTRY, GeneratorConfig, decode, generator_for
from big2small.layout import MatrixLayout

# Bits per weight tried when a method's own options are searched (for_budget at each).
BUDGET_GRID = tuple(b / 8 for b in range(4, 129))  # 0.5 .. 16 bits per weight


def method_candidates(method: str, layout: MatrixLayout, fixed: dict[str, Any]) -> list[GeneratorConfig]:
    """The distinct configurations `method` chooses (for_budget) across BUDGET_GRID on `layout`,
    with the options in `fixed` pinned: the method's own ladder of sizes."""
    return list(_ladder(method, layout, json.dumps(fixed, sort_keys=True)))


@functools.lru_cache(maxsize=256)  # a model has few distinct shapes
def _ladder(method: str, layout: MatrixLayout, fixed_json: str) -> tuple[GeneratorConfig, ...]:
    gen_cls = REGISTRY[method]
    found: list[GeneratorConfig] = []
    for bpw in BUDGET_GRID:
        try:
            config = gen_cls.for_budget(bpw, layout, json.loads(fixed_json))
        except Big2SmallError:
            continue  # too small a budget for this method
        if config not in found:
            found.append(config)
    return tuple(found)


def row_sample(matrix: torch.Tensor, max_weights: int) -> torch.Tensor:
    """Evenly spaced whole rows of `matrix`, at most `max_weights` weights (at least one row)."""
    rows, cols = matrix.shape
    take = max(1, min(rows, max_weights // max(cols, 1)))
    if take == rows:
        return matrix
    index = torch.linspace(0, rows - 1, take, device=matrix.device).round().long()
    return matrix[index]


def relative_errors(matrix: torch.Tensor, configs: list[GeneratorConfig], *, max_weights: int,
                    seed: int = 0) -> list[float]:
    """Relative squared error of each config on a row sample of `matrix` (the fp32 matrix view)."""
    sample = row_sample(matrix.float(), max_weights)
    energy = float(sample.pow(2).sum())
    if energy == 0.0:
        return [0.0] * len(configs)
    layout = MatrixLayout(tuple(sample.shape))
    errors = []
    with _one_thread():
        for config in configs:
            restored = decode(generator_for(config).encode(sample, layout, seed=seed)).float()
            errors.append(float((restored - sample).pow(2).sum()) / energy)
    return errors


@contextlib.contextmanager
def _one_thread():
    """Torch on one thread: a sample's few thousand weights gain nothing from more, and on a busy
    machine torch's thread pool costs many times over on such small operations (SmolLM2's curves on
    2 loaded cores: about 20 minutes on 2 threads, under 2 on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
