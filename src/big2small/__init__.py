"""big2small: make trained neural networks small without their training data.

    import big2small as b2s
    loaded = b2s.load_model("smollm2")                       # or an HF dir, a .gguf, a .safetensors
    cm = b2s.compress(loaded, "uniform", bits=4, group_size=64)
    print(cm.size().bpw_all)
    b2s.save(cm, "smollm2-4bit.b2s")
    model = b2s.restore("smollm2-4bit.b2s")                  # rebuilt from the artifact alone
    b2s.decompress("smollm2-4bit.b2s", "dense.safetensors")  # no model class needed
    print(b2s.inspect_artifact("smollm2-4bit.b2s").to_dict())  # what `big2small inspect` shows

The names below are imported on first use, so that importing the package (and the command
line's --help) does not load torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from big2small.errors import Big2SmallError
from big2small.version import __version__

# Public name -> the module that defines it.
_EXPORTS = {
    **dict.fromkeys(("ArtifactInfo", "decompress", "ensure_writable", "load", "read_manifest", "save"),
                    "big2small.artifact"),
    **dict.fromkeys(("CompressedModel", "SizeReport", "compress", "make_recipe"), "big2small.compress"),
    **dict.fromkeys(("ExportReport", "export"), "big2small.export"),
    "GeneratorConfig": "big2small.generators",
    **dict.fromkeys(("LoadedModel", "ModelSource", "load_model"), "big2small.models"),
    **dict.fromkeys(("Override", "Recipe"), "big2small.recipe"),
    **dict.fromkeys(("ArtifactSize", "CompressReport", "EvalReport", "FoldPlanReport", "FoldReport", "InspectReport",
                     "PlanReport", "VerifyReport", "evaluate_target", "inspect_artifact", "verify_artifact"),
                    "big2small.reports"),
    "restore": "big2small.restore",
}

if TYPE_CHECKING:
    from big2small.artifact import ArtifactInfo, decompress, ensure_writable, load, read_manifest, save
    from big2small.compress import CompressedModel, SizeReport, compress, make_recipe
    from big2small.export import ExportReport, export
    from big2small.generators import GeneratorConfig
    from big2small.models import LoadedModel, ModelSource, load_model
    from big2small.recipe import Override, Recipe
    from big2small.reports import (
        ArtifactSize, CompressReport, EvalReport, FoldPlanReport, FoldReport, InspectReport, PlanReport, VerifyReport,
        evaluate_target, inspect_artifact, verify_artifact,
    )
    from big2small.restore import restore


def __getattr__(name: str) -> Any:
    """A public name (imported from its module now), or a submodule (`b2s.models`)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


class _Package(types.ModuleType):
    """Importing a submodule binds it as an attribute of its package; the submodules `compress`
    and `restore` would then hide the functions of the same names. The functions keep the names."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return  # the submodule stays in sys.modules, where `from big2small.compress import ...` finds it
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = ["Big2SmallError", "__version__", *sorted(_EXPORTS)]
