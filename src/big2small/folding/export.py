"""A folded model's artifact: its tensors at their new shapes, stored raw or by any generator,
with the fold recorded in the manifest so that `restore` resizes the original skeleton."""

from __future__ import annotations

from typing import Any

from big2small.compress import CompressedModel, compress
from big2small.folding.fold import FoldResult
from big2small.recipe import Recipe
from big2small.transforms.records import FoldRecord


def to_compressed(result: FoldResult, *, source: Any = None, recipe: Recipe | None = None,
                  progress: bool = False) -> CompressedModel:
    """Store the folded model: raw fp32 by default (the folded network exactly), or with `recipe`
    (e.g. make_recipe("uniform", bits=4): fold, then quantise). Sizes count against the original
    model's parameters, so bpw_all shows what folding saved as well."""
    recipe = recipe or Recipe(default=None, raw_dtype="float32", min_numel=0)
    record = FoldRecord(**{k: v for k, v in result.to_dict().items() if k != "unfolded"})
    return compress(result.model, recipe, source=source, progress=progress, transforms=[record],
                    n_parameters=result.parameters_before)
