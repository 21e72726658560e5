"""A folded model's artifact, when fold() was called directly (e.g. with your own data for
repair="data"): its tensors at their new shapes, stored raw or by any generator, with the fold
recorded in the manifest so that `restore` resizes the original skeleton. A recipe that lists the
fold does the same in one step: compress(model, Recipe(transforms=[FoldConfig(...)], ...))."""

from __future__ import annotations

from typing import Any

from big2small.compress import CompressedModel, compress
from big2small.folding.fold import FoldResult
from big2small.recipe import Recipe
from big2small.transforms.records import DistillRecord, FoldRecord


def to_compressed(result: FoldResult, *, source: Any = None, recipe: Recipe | None = None,
                  progress: bool = False, distilled: DistillRecord | None = None) -> CompressedModel:
    """Store the folded model: raw fp32 by default (the folded network exactly), or with `recipe`
    (e.g. make_recipe("uniform", bits=4): fold, then quantise; it lists no transforms, the fold is
    done). Sizes count against the original model's parameters, so bpw_all shows what folding
    saved as well. `distilled`: the report (big2small.distill's DistillReport) of a distillation that
    repaired result.model after folding, recorded in the manifest after the fold."""
    recipe = recipe or Recipe(default=None, raw_dtype="float32", min_numel=0)
    records = [FoldRecord.of(result.to_dict())] + ([distilled] if distilled is not None else [])
    return compress(result.model, recipe, source=source, progress=progress, transforms=records,
                    n_parameters=result.parameters_before)
