"""Which tensors get which method: a default, per-layer overrides by name or regex, and a plan.

A recipe may also list structural transforms (folding) that change the architecture first; the
default and overrides then apply to the transformed model. It is a versioned config
(big2small.config), so a recipe file is its JSON form.

The plan is the pre-flight report: every tensor of the model, what will happen to it, and why.
Nothing is skipped silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from big2small.allocation.config import AllocationConfig
from big2small.config import Config
from big2small.errors import Big2SmallError
from big2small.dtypes import STORED_DTYPES, dtype_name
from big2small.folding.config import FoldConfig
from big2small.generators import GeneratorConfig, RawConfig
from big2small.generators.base import finite_range
from big2small.generators.raw import STORAGE_DTYPES
from big2small.layout import MatrixLayout
from big2small.specs import TARGET_OVER

# Layer kinds whose `weight` the storage codecs understand. Subclasses count (EfficientNet's
# Conv2dStaticSamePadding is a Conv2d); transformers' Conv1D, which stores [in, out], is matched by
# class name so that transformers need not be imported.
_KINDS_BY_TYPE = ((nn.Linear, "linear"), (nn.Conv1d, "conv"), (nn.Conv2d, "conv"), (nn.Conv3d, "conv"),
                  (nn.Embedding, "embedding"))


def layer_kind(module: nn.Module) -> str:
    """linear, conv, embedding or conv1d_hf; "unsupported:<Class>" for any other layer."""
    if type(module).__name__ == "Conv1D":
        return "conv1d_hf"
    for cls, kind in _KINDS_BY_TYPE:
        if isinstance(module, cls):
            return kind
    return f"unsupported:{type(module).__name__}"


@dataclass
class Override(Config):
    """Tensors whose name matches `pattern` (exact name, module name, or full regex match) get
    `config`; `config=None` keeps them uncompressed."""

    pattern: str
    config: GeneratorConfig | None

    def matches(self, tensor_name: str) -> bool:
        module_name = tensor_name.rsplit(".", 1)[0]
        if self.pattern in (tensor_name, module_name):
            return True
        try:
            return re.fullmatch(self.pattern, tensor_name) is not None or re.fullmatch(self.pattern, module_name) is not None
        except re.error as exc:
            raise Big2SmallError(f"bad override pattern {self.pattern!r}: {exc}") from None


@dataclass
class Recipe(Config):
    """What to do with a model.

    default: the method for every weight in scope (conv/linear weights with >= min_numel elements,
        plus embeddings and the LM head if include_embeddings).
    overrides: first match wins; they may also bring a tensor outside the default scope in.
    raw_dtype: how uncompressed floating tensors are stored ("float16", "float32", "bfloat16", "same").
    target_bpw: if set, method options left open are chosen so that the whole artifact takes at most
        this many bits per original parameter (every stored bit counted).
    target_over: what target_bpw counts: "model" (every stored bit over the original model's
        parameters) or "compressed" (the compressed tensors' stored bits over their own element
        count, the artifact's bpw_scope; tensors kept uncompressed are outside the budget).
    transforms: structural transforms applied in order before anything is stored (JSON:
        {"transform": "fold", ...}); the rest of the recipe applies to the transformed model, and
        bits per weight count against the original model's parameters.
    allocation: with target_bpw, how the bits are shared out: None gives every tensor of the
        default method the same share (each lands under it); an AllocationConfig fills the target
        by choosing each tensor's config for the least predicted output error (big2small.allocation).
    """

    default: GeneratorConfig | None = None
    overrides: list[Override] = field(default_factory=list)
    min_numel: int = 4096
    include_embeddings: bool = False
    raw_dtype: str = "float16"
    target_bpw: float | None = None
    target_over: str = "model"
    budget_fixed: dict[str, Any] = field(default_factory=dict)  # default's options the user pinned
    seed: int = 0
    transforms: list[FoldConfig] = field(default_factory=list)
    allocation: AllocationConfig | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        RawConfig(dtype=self.raw_dtype).validate()
        if self.target_bpw is not None and not (math.isfinite(self.target_bpw) and self.target_bpw > 0):
            raise Big2SmallError(f"target bits per weight must be a positive number, got {self.target_bpw}")
        if self.target_over not in TARGET_OVER:
            raise Big2SmallError(f"target_over must be one of {', '.join(TARGET_OVER)}, got {self.target_over!r}")


@dataclass
class PlanEntry:
    """One stored tensor and what will happen to it."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str  # linear, conv, conv1d_hf, embedding, lm_head, norm/bias/other, buffer
    is_parameter: bool
    config: GeneratorConfig  # RawConfig when kept uncompressed
    reason: str
    aliases: list[str] = field(default_factory=list)
    budgeted: bool = False  # the config's open options are chosen by the size target
    detail: str = ""  # figures behind the choice (allocation's sensitivity and predicted error)

    @property
    def compressed(self) -> bool:
        return not self.config.stores_dense

    @property
    def layout(self) -> MatrixLayout:
        return MatrixLayout(self.shape, transposed=self.kind == "conv1d_hf")

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class TensorInfo:
    """What the planner needs to know about one stored tensor of a model: its shape and dtype, and
    `load`, which returns its values when called (a checkpoint on disk is read then, one tensor at
    a time; a picklable callable, so that worker processes can read it themselves)."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    load: Callable[[], torch.Tensor]
    kind: str
    is_parameter: bool
    aliases: list[str] = field(default_factory=list)
    stored_dtype: torch.dtype | None = None  # the dtype its file stores, where `dtype` differs (load casts)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def dtype_as_stored(self) -> torch.dtype:
        """The dtype of load_as_stored(), known without reading the values."""
        return self.stored_dtype or self.dtype

    def load_as_stored(self) -> torch.Tensor:
        """Its values in the dtype they are stored in (see as_stored)."""
        return as_stored(self.load)

    @classmethod
    def held(cls, name: str, tensor: torch.Tensor, kind: str, is_parameter: bool) -> TensorInfo:
        """The info of a tensor already in memory."""
        return cls(name, tuple(tensor.shape), tensor.dtype, Held(tensor), kind, is_parameter)


def as_stored(load: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The values a TensorInfo.load returns, in the dtype they are stored in: a checkpoint's fp16
    tensor without the float32 copy `load` makes (the same values: a check for NaN, Inf or range,
    or a hash of the input, gives the same answer on either, at a fraction of the cost). A load
    that keeps no other dtype (a tensor in memory) returns what load() returns."""
    stored = getattr(load, "as_stored", None)
    return stored() if callable(stored) else load()


@dataclass(frozen=True)
class Held:
    """A TensorInfo.load for a tensor in memory: returns it."""

    tensor: torch.Tensor

    def __call__(self) -> torch.Tensor:
        return self.tensor


def describe_module_tensors(model: nn.Module) -> list[TensorInfo]:
    """Every tensor of `model.state_dict()`, tied tensors once (the others as aliases)."""
    param_ids = {id(p) for p in model.parameters()}
    modules = dict(model.named_modules())
    lm_head = None
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        try:
            lm_head = get_out()
        except (AttributeError, NotImplementedError):
            lm_head = None
    by_identity: dict[tuple, TensorInfo] = {}
    infos: list[TensorInfo] = []
    for name, tensor in model.state_dict(keep_vars=True).items():
        # Tied tensors share memory; a model built on the meta device (a checkpoint's skeleton,
        # models.checkpoint) has none, and its tied tensors are the same objects.
        if tensor.is_meta:
            key = (id(tensor),)
        else:
            key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype) if tensor.numel() else (name,)
        if key in by_identity:
            by_identity[key].aliases.append(name)
            continue
        module_name, _, leaf = name.rpartition(".")
        module = modules.get(module_name)
        kind = "other"
        if tensor.ndim < 2:
            kind = "bias" if leaf == "bias" else "vector"
        elif module is not None and leaf == "weight":
            kind = layer_kind(module)
            if module is lm_head:
                kind = "lm_head"
        info = TensorInfo.held(name, tensor.detach(), kind, id(tensor) in param_ids)
        by_identity[key] = info
        infos.append(info)
    # An LM head tied to the embedding shows up under the embedding's name: it is both.
    return infos


def describe_state_dict(state: dict[str, torch.Tensor]) -> list[TensorInfo]:
    """Model-free: infer each tensor's kind from its rank and name (no module classes)."""
    return [TensorInfo.held(name, t, state_dict_kind(name, tuple(t.shape)), True) for name, t in state.items()]


def state_dict_kind(name: str, shape: tuple[int, ...]) -> str:
    """The kind of a tensor known only by its name and shape: embedding, linear, conv or other."""
    if len(shape) == 2 and re.search(r"(embed|wte|wpe|lm_head|shared)", name.lower()):
        return "embedding"
    if len(shape) == 2:
        return "linear"
    return "conv" if 3 <= len(shape) <= 5 else "other"


def plan(infos: list[TensorInfo], recipe: Recipe, *, check_values: bool = True) -> list[PlanEntry]:
    """Decide, for every tensor, the method (or raw storage) and the reason. Each tensor's values
    are loaded once, in turn, for the checks that need them (finite, within the raw dtype's range):
    a checkpoint streams through, never held whole.

    check_values=False: only the tensors whose decision depends on their values are read (kept
    ones stored in a dtype of a wider range than the raw dtype's, e.g. bfloat16 kept as float16);
    NaN and Inf in the others are left to the caller, which checks them where it reads the tensors
    to encode them (finite_absmax; streaming.run_unit does), so that a run on workers reads each
    tensor once, there."""
    if sum(info.numel for info in infos) == 0:
        raise Big2SmallError("nothing to compress: the model has no tensors with any elements")
    raw = RawConfig(dtype=recipe.raw_dtype)
    entries = []
    for info in infos:
        floating = info.dtype.is_floating_point
        _check_dtype(info.name, info.dtype_as_stored)
        config, reason = _decide(info, recipe)
        narrows = (config is None and floating and raw.dtype != "same"
                   and torch.finfo(info.dtype_as_stored).max > torch.finfo(STORAGE_DTYPES[raw.dtype]).max)
        absmax = finite_absmax(info.name, info.load_as_stored()) if check_values or narrows else 0.0
        encodes = config is not None and not isinstance(config, RawConfig)
        if encodes and not floating:
            raise Big2SmallError(f"{info.name}: cannot compress a {info.dtype} tensor")
        if encodes and not info.shape:
            raise Big2SmallError(f"{info.name}: cannot compress a scalar")
        if config is None and not floating:
            config_raw = RawConfig(dtype="same")
        elif config is None and raw.dtype != "same" and absmax > torch.finfo(STORAGE_DTYPES[raw.dtype]).max:
            config_raw = RawConfig(dtype="float32")
            reason += f" (stored as float32: values beyond {raw.dtype}'s range)"
        else:
            config_raw = raw
        entries.append(
            PlanEntry(
                name=info.name, shape=tuple(info.shape), dtype=info.dtype, kind=info.kind,
                is_parameter=info.is_parameter, config=config or config_raw, reason=reason,
                aliases=list(info.aliases),
            )
        )
    return entries


def _check_dtype(name: str, dtype: torch.dtype) -> None:
    """Refuse a dtype no artifact stores."""
    if dtype_name(dtype) not in STORED_DTYPES:
        raise Big2SmallError(f"{name}: {dtype_name(dtype)} tensors are not supported "
                             f"(supported: {', '.join(STORED_DTYPES)})")


def finite_absmax(name: str, t: torch.Tensor) -> float:
    """Refuse NaN or Inf values (the plan's check, or encoding's where the plan leaves it:
    streaming.run_unit); return the largest absolute value of a floating tensor (0 for
    others and empty ones), which says whether a kept tensor fits a narrower dtype (fp16 ends at
    65504). One pass over the values: min and max (torch.aminmax) carry NaN and Inf along, and
    cost a tenth of an isfinite mask."""
    if not t.is_floating_point():
        return 0.0
    bounds = finite_range(t)
    if bounds is None:
        raise Big2SmallError(f"{name}: NaN or Inf values; refusing to store them")
    return max(-bounds[0], bounds[1])


def _decide(info: TensorInfo, recipe: Recipe) -> tuple[GeneratorConfig | None, str]:
    names = [info.name, *info.aliases]
    for o in recipe.overrides:
        if any(o.matches(n) for n in names):
            if o.config is None or isinstance(o.config, RawConfig):
                return o.config, f"override {o.pattern!r}: kept"
            return o.config, f"override {o.pattern!r}"
    if recipe.default is None:
        return None, "no method given"
    if not info.dtype.is_floating_point:
        return None, "integer buffer"
    if not info.is_parameter:
        return None, "buffer"
    kind = info.kind
    if kind.startswith("unsupported:"):
        return None, f"unsupported layer type {kind.split(':', 1)[1]} (override to compress it)"
    if kind in ("embedding", "lm_head") and not recipe.include_embeddings:
        return None, f"{kind} kept (include_embeddings is off)"
    if kind not in ("linear", "conv", "conv1d_hf", "embedding", "lm_head"):
        return None, {"bias": "bias", "vector": "1-D (norm, scale)"}.get(kind, "not a layer weight")
    if info.numel < recipe.min_numel:
        return None, f"small (< min_numel {recipe.min_numel})"
    return recipe.default, "in scope"
