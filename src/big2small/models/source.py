"""What a model is and where it came from: the records every other part passes around.

`ModelSource` is stored in an artifact's manifest, so that the model's skeleton can be rebuilt
later; `LoadedModel` is a model ready to compress. Neither imports anything heavy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class ModelSource:
    """Where a model came from, enough to rebuild its skeleton (stored in the manifest)."""

    kind: str  # "hf", "module" or "state_dict"
    name: str  # what the user gave: a path or a bundled name
    task: str = "unknown"  # a name in big2small.models.tasks.TASKS, or "unknown"
    architecture: str | None = None  # transformers class name, for kind "hf"
    factory: str | None = None  # "module:function" that builds the skeleton, for bundled modules
    module_class: str | None = None  # informative only: the class of a user's nn.Module
    files_dir: Path | None = field(default=None, repr=False)  # config/tokenizer files (not stored)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "files_dir"}

    @classmethod
    def from_dict(cls, data: dict[str, Any], files_dir: Path | None = None) -> "ModelSource":
        return cls(**data, files_dir=files_dir if files_dir and files_dir.is_dir() else None)


@dataclass
class LoadedModel:
    """A model ready to compress: the module (or a bare state_dict), its tokenizer, its source."""

    model: nn.Module | None
    source: ModelSource
    tokenizer: Any = None
    state_dict: dict[str, torch.Tensor] | None = None

    @property
    def weights(self) -> nn.Module | dict[str, torch.Tensor]:
        return self.model if self.model is not None else self.state_dict


def module_source(model: nn.Module, name: str = "module") -> ModelSource:
    """The source record of a user's own nn.Module (reloaded later given its skeleton)."""
    cls = type(model)
    return ModelSource("module", name, module_class=f"{cls.__module__}.{cls.__qualname__}")


def offline() -> None:
    """The machines reach no model hub: never let transformers try."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
