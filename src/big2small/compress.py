"""compress(): apply a recipe to a model (or a bare state_dict) and account for every stored bit.

A recipe's structural transforms (folding) run first, on a copy of the model; their records and
the original parameter count go into the result.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, asdict
from typing import Any

import torch
from torch import nn

from big2small.allocation.config import AllocationConfig
from big2small.distill.config import DistillConfig
from big2small.errors import Big2SmallError
from big2small.evaluate.weights import WeightErrorReport, weight_error
from big2small.fill import fill
from big2small.folding.config import FoldConfig
from big2small.folding.fold import fold
from big2small.generators import REGISTRY, Encoded, GeneratorConfig, RawConfig, decode, generator_for
from big2small.models.source import LoadedModel, ModelSource, module_source
from big2small.models.tasks import get_task, task_of_architecture
from big2small.progress import progress_bar
from big2small.transforms.records import FoldRecord, TransformRecord
from big2small.recipe import (
    Override, PlanEntry, Recipe, TensorInfo, describe_module_tensors, describe_state_dict, plan,
)


@dataclass
class SizeReport:
    """Every stored bit, and the ratios derived from it.

    bpw_all counts all stored bits over the original model's parameters (tied tensors once);
    bpw_scope counts the compressed tensors' bits over their own element count.
    """

    n_parameters: int
    n_compressed: int
    bits_total: int
    bits_compressed: int
    bits_raw: int
    bits_by_item: dict[str, int] = field(default_factory=dict)

    @property
    def bpw_all(self) -> float:
        return self.bits_total / max(self.n_parameters, 1)

    @property
    def bpw_scope(self) -> float:
        return self.bits_compressed / self.n_compressed if self.n_compressed else float("nan")

    @property
    def ratio_vs_fp32(self) -> float:
        return 32.0 / self.bpw_all if self.bpw_all else math.inf

    @property
    def ratio_vs_fp16(self) -> float:
        return 16.0 / self.bpw_all if self.bpw_all else math.inf

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(bpw_all=self.bpw_all, bpw_scope=self.bpw_scope, ratio_vs_fp32=self.ratio_vs_fp32,
                 ratio_vs_fp16=self.ratio_vs_fp16)
        return d


@dataclass
class CompressedModel:
    """The compact form of a model: one stored record per tensor, plus where the model came from."""

    tensors: dict[str, Encoded]
    plan: list[PlanEntry]
    recipe: Recipe
    source: ModelSource | None = None  # None for a bare module/state_dict
    aliases: dict[str, str] = field(default_factory=dict)  # tied name -> stored name
    n_parameters: int = 0  # of the original model (before any transform)
    # Architecture changes applied before storage (e.g. channels removed); when present, the stored
    # tensor shapes differ from the original model's and apply_to adopts them.
    transforms: list[TransformRecord] = field(default_factory=list)

    def size(self) -> SizeReport:
        return size_of(self.tensors, self.n_parameters)

    def state_dict(self, *, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Decode to a dense state_dict in the original dtypes (tied tensors share storage)."""
        out = {name: decode(enc) for name, enc in self.tensors.items() if names is None or name in names}
        for alias, target in self.aliases.items():
            if target in out:
                out[alias] = out[target]
        return out

    def weight_error(self, original: dict[str, torch.Tensor],
                     decoded: dict[str, torch.Tensor] | None = None) -> WeightErrorReport | None:
        """Error of the compressed (non-raw) tensors against `original` (a state_dict), or None
        when nothing is compressed. Pass `decoded` (from state_dict()) to reuse tensors already
        decoded."""
        names = [n for n, e in self.tensors.items() if e.compressed]
        if not names:
            return None
        missing = [n for n in names if n not in original]
        if missing:
            raise Big2SmallError(f"the original model lacks {len(missing)} compressed tensor(s), e.g. {missing[0]}")
        decoded = decoded if decoded is not None else self.state_dict(names=names)
        return weight_error({n: original[n].float() for n in names}, {n: decoded[n].float() for n in names})

    def apply_to(self, model: nn.Module, *, on_the_fly: bool = False, unpack: bool = False,
                 fused: bool = False) -> nn.Module:
        """Load the decoded weights into `model` (same architecture; its parameters may be on the
        meta device) one tensor at a time (big2small.fill) and return it.

        If a transform narrowed the model or dropped blocks, `model` may have the original widths
        and depth: its blocks are dropped and its layers resized to the stored ones first.
        on_the_fly, unpack, fused: as for restore()."""
        return fill(model, self.tensors, self.tensors.__getitem__, self.aliases, transforms=self.transforms,
                    on_the_fly=on_the_fly, unpack=unpack, fused=fused)


def size_of(tensors: dict[str, Encoded], n_parameters: int) -> SizeReport:
    by_item: dict[str, int] = {}
    bits_c = n_c = bits_raw = 0
    for enc in tensors.values():
        for k, v in enc.bits.items():
            key = k if enc.compressed else "raw"
            by_item[key] = by_item.get(key, 0) + v
        if not enc.compressed:
            bits_raw += enc.total_bits
        else:
            bits_c += enc.total_bits
            n_c += enc.numel
    return SizeReport(n_parameters, n_c, bits_c + bits_raw, bits_c, bits_raw, by_item)


def count_parameters(entries: list[PlanEntry]) -> int:
    return sum(e.numel for e in entries if e.is_parameter)


ALLOCATE = ("auto", "output", "weights", "equal")
# The default when a size target comes without a method: the trellis codec at every width, or a
# tensor kept at 16 bits, chosen per tensor by allocation. L=10 rather than the trellis's own
# default 12: 0.3-0.4 dB less, but 3x faster to encode (docs/allocation.md).
AUTO_STATE_BITS = 10


def auto_candidates() -> list[GeneratorConfig]:
    """The configurations `--bpw` with no method chooses among for each tensor (plus keeping it)."""
    from big2small.generators.trellis import TrellisConfig

    return [TrellisConfig(bits=k, state_bits=AUTO_STATE_BITS) for k in range(1, 9)]


def make_recipe(method: str | None = None, *, bpw: float | None = None,
                overrides: list[tuple[str, GeneratorConfig | None]] | None = None,
                include_embeddings: bool = False, min_numel: int = 4096, raw_dtype: str = "float16",
                seed: int = 0, allocate: str = "auto", target_over: str = "model", **options: Any) -> Recipe:
    """A recipe from a method name and its options, e.g. make_recipe("uniform", bits=3, group_size=64).

    With `bpw`, the options not given are chosen to fill that many bits per original weight.
    allocate: how, for methods whose sizes allocation can mix (uniform, trellis, hyper): "auto"
        (by output error where the model has a data-free probe, else by weight error), "output",
        "weights", or "equal" (the same share for every tensor; each lands under it). Allocation
        brings the embeddings and LM head into scope and may keep any tensor at `raw_dtype`.
        Other methods size every tensor equally. With `bpw` and no method, each tensor gets the best of the
        trellis codec's widths or is kept at 16 bits, embeddings included (`auto_candidates`).
    target_over: what `bpw` counts: "model" (every stored bit over the original parameters) or
        "compressed" (the compressed tensors' bits over their own weights: bpw_scope). With
        "compressed", allocation keeps the recipe's scope (`include_embeddings` as given) and never
        keeps a tensor uncompressed, so that the tensors it sizes are exactly the compressed ones.
    """
    if allocate not in ALLOCATE:
        raise Big2SmallError(f"allocate must be one of {', '.join(ALLOCATE)}, got {allocate!r}")
    default, allocation = None, None
    whole = target_over == "model"  # a whole-model target: embeddings in scope, any tensor may stay raw
    if method is None and options:
        raise Big2SmallError(f"options {sorted(options)} need a method")
    if method is None and bpw is not None:
        if allocate == "equal":
            raise Big2SmallError("a size target without a method is filled by allocation: give a method for allocate='equal'")
        default = auto_candidates()[3]
        allocation = AllocationConfig(objective=allocate, candidates=auto_candidates(), keep_candidate=whole)
        include_embeddings = include_embeddings or whole
    elif method is not None:
        if method not in REGISTRY or REGISTRY[method].config_type.stores_dense:
            known = sorted(m for m, g in REGISTRY.items() if not g.config_type.stores_dense)
            raise Big2SmallError(f"unknown method {method!r}; known: {', '.join(known)}")
        default = GeneratorConfig.from_dict({"method": method, **options})
        if bpw is not None and allocate != "equal" and type(default).allocatable:
            # Every bit counts: embeddings and head are in scope, and any tensor may stay at 16
            # bits where that buys more than compressing it (decided by the allocation).
            allocation = AllocationConfig(objective=allocate, keep_candidate=whole)
            include_embeddings = include_embeddings or whole
    return Recipe(default=default, overrides=[Override(p, c) for p, c in (overrides or [])],
                  min_numel=min_numel, include_embeddings=include_embeddings, raw_dtype=raw_dtype,
                  target_bpw=bpw, target_over=target_over, budget_fixed=dict(options), seed=seed,
                  allocation=allocation)


def plan_model(model: Any, recipe: Recipe, *, source: ModelSource | None = None,
               progress: bool = False) -> tuple[list[TensorInfo], list[PlanEntry]]:
    """What compress() will do to each tensor, size target applied, without encoding anything.

    model: as for compress(). A recipe's transforms are applied first (to a copy), so the plan is
    that of the model that will be stored. Raises Big2SmallError for a size target that cannot be
    met, as compress() would.
    """
    infos, entries, _ = plan_with_count(model, recipe, source=source, progress=progress)
    return infos, entries


def plan_with_count(model: Any, recipe: Recipe, *, source: ModelSource | None = None,
                    progress: bool = False) -> tuple[list[TensorInfo], list[PlanEntry], int]:
    """plan_model's result and the parameter count that bits per weight count against (the
    original model's, before any transform; tied tensors once)."""
    model, source = _unwrap(model, source)
    model, _, n_parameters = apply_transforms(model, recipe.transforms, source=source, progress=progress)
    infos, entries = _plan(model, recipe, n_parameters, source=source, progress=progress)
    return infos, entries, n_parameters if n_parameters is not None else count_parameters(entries)


def apply_transforms(model: nn.Module | dict[str, torch.Tensor], transforms: list[FoldConfig], *,
                      source: ModelSource | None = None, progress: bool = False,
                      ) -> tuple[nn.Module | dict[str, torch.Tensor], list[TransformRecord], int | None]:
    """Apply a recipe's structural transforms, in order, to a copy of `model`: the transformed
    model, what each transform did, and the original model's parameter count (None when there is
    no transform). `source` names the model's task, whose example input counts MACs and whose
    built-in inputs feed folding's repair="data"."""
    if not transforms:
        return model, [], None
    if not isinstance(model, nn.Module):
        raise Big2SmallError("the recipe lists transforms (e.g. fold): they need the model's structure, "
                             "not a bare state_dict (give an HF dir or a bundled model)")
    task = get_task(source.task if source else None, source.architecture if source else None)
    records: list[TransformRecord] = []
    n_parameters = None
    for config in transforms:
        data = task.calibration_batches() if config.repair == "data" else None
        result = fold(model, config, data=data, example_input=task.example_input(model), progress=progress)
        model = result.model
        records.append(FoldRecord.of(result.to_dict()))
        n_parameters = result.parameters_before if n_parameters is None else n_parameters
    return model, records, n_parameters


def _unwrap(model: Any, source: ModelSource | None) -> tuple[nn.Module | dict[str, torch.Tensor], ModelSource | None]:
    """The weights of `model` (a LoadedModel's module or state_dict) and its source."""
    if isinstance(model, LoadedModel):
        return model.weights, source or model.source
    if source is None and isinstance(model, nn.Module):
        source = module_source(model)  # records the class, so that a reload can say what skeleton it needs
    return model, source


def _plan(model: nn.Module | dict[str, torch.Tensor], recipe: Recipe, n_parameters: int | None, *,
          source: ModelSource | None = None, progress: bool = False) -> tuple[list[TensorInfo], list[PlanEntry]]:
    """The plan of `model` (already transformed); a size target counts against `n_parameters`
    (the original model's; None: this model's)."""
    infos = describe_state_dict(model) if isinstance(model, dict) else describe_module_tensors(model)
    return infos, plan_infos(infos, recipe, n_parameters, model=model, source=source, progress=progress)


def plan_infos(infos: list[TensorInfo], recipe: Recipe, n_parameters: int | None = None, *,
               model: nn.Module | Callable[[], nn.Module] | dict[str, torch.Tensor] | None = None,
               source: ModelSource | None = None, progress: bool = False,
               check_values: bool = True) -> list[PlanEntry]:
    """The plan of the tensors `infos` describes, size target applied (the tensors are read one
    at a time for the planner's checks, and for allocation's error curves); a size target counts
    against `n_parameters` (None: these tensors' parameters). check_values=False: as for
    recipe.plan (NaN and Inf left to encoding); allocation by error, which reads every tensor,
    checks them all anyway.

    model, source: for allocation by output error, the model to probe (a module in memory, or a
    callable that loads it: a streamed checkpoint is loaded whole only if output error is asked
    for explicitly) and where it came from (its task)."""
    entries = plan(infos, recipe, check_values=check_values or (recipe.target_bpw is not None
                                                                and recipe.allocation is not None))
    if recipe.target_bpw is not None:
        n_params = n_parameters if n_parameters is not None else count_parameters(entries)
        if recipe.allocation is None:
            _size_to_target(entries, recipe, n_params)
        else:
            _allocate(entries, {i.name: i.load for i in infos}, recipe, n_params, model, source, progress)
    return entries


def compress(model: Any, recipe: Recipe | str | None = None, *, source: ModelSource | None = None, progress: bool = True,
             device: str | torch.device | None = None, pre_encoded: dict[str, Encoded] | None = None,
             pre_encoded_reason: str = "given in stored form", transforms: list[TransformRecord] | None = None,
             n_parameters: int | None = None, distill: DistillConfig | None = None, **options: Any) -> CompressedModel:
    """Compress every tensor of `model` and account for every stored bit: the one way to build a
    CompressedModel (artifact.load only reads one back).

    model: an nn.Module, a state_dict, or a LoadedModel.
    recipe: a Recipe, or a method name ("uniform", "lowrank", "prune", "inr", ...) with `options` for
        it and for make_recipe (bpw=..., overrides=..., include_embeddings=...). The recipe's
        transforms (folding) are applied first, to a copy of the model.
    device: where encoding runs ("cuda" makes INR fitting much faster); the result is on the CPU.
    pre_encoded: tensors already in stored form (self-compression's trained integers, INR fits made
        elsewhere), used as they are; the plan gives them `pre_encoded_reason`. Where the plan has
        the same config for one, its bits must be what the plan predicts.
    transforms, n_parameters: for a model a structural transform already produced (not one the
        recipe lists): its records, and the original model's parameter count (bits per weight
        count against it).
    distill: quantisation-aware distillation (big2small.distill.qat): what the codecs store (the
        scales of uniform, hyper or trellis codes, their codes re-chosen; the INR's SIRENs) is
        trained against the original model on its synthetic inputs, stored bits unchanged;
        recorded as a `distill` transform. Needs the model's structure (a module or a LoadedModel, whose tokenizer it uses).
    Raises Big2SmallError for user errors: NaN/Inf weights, a size target that cannot be met, a
    recipe with transforms for a bare state_dict.
    """
    if not isinstance(recipe, Recipe):
        recipe = make_recipe(recipe, **options)
    elif options:
        raise TypeError("pass options either in the Recipe or as keywords with a method name, not both")
    if recipe.transforms and (transforms or n_parameters is not None):
        raise TypeError("a recipe that lists transforms applies them: do not pass transform records too")
    tokenizer = model.tokenizer if isinstance(model, LoadedModel) else None
    model, source = _unwrap(model, source)
    device = resolve_device(device)
    teacher, task = model, _task_of(model, source)
    if distill is not None:
        _check_distill(model, task, distill)
    if recipe.transforms:
        model, transforms, n_parameters = apply_transforms(model, recipe.transforms, source=source, progress=progress)
    infos, entries = _plan(model, recipe, n_parameters, source=source, progress=progress)
    if distill is not None and not any(e.compressed and REGISTRY[e.config.method].trains(e.config) for e in entries):
        from big2small.distill.qat import nothing_to_train  # refused before anything is encoded

        raise nothing_to_train([e.config.method for e in entries if e.compressed])
    loads = {i.name: i.load for i in infos}
    encoded = _adopt(entries, pre_encoded or {}, pre_encoded_reason)
    units = encoding_units(entries, set(encoded))
    with progress_bar("compressing", total=sum(e.numel for u in units for e in u), enabled=progress) as advance:
        for unit in units:
            results = encode_unit(unit, [loads[e.name]() for e in unit], seed=recipe.seed, device=device,
                                  advance=advance)
            encoded.update({e.name: r for e, r in zip(unit, results)})
    encoded = {e.name: encoded[e.name] for e in entries}  # plan order
    aliases = {a: e.name for e in entries for a in e.aliases}
    if distill is not None:
        from big2small.distill.qat import distill_codecs

        encoded, report = distill_codecs(teacher, model, encoded, aliases, task=task.name, tokenizer=tokenizer,
                                         config=distill, example_input=task.example_input(teacher), progress=progress)
        transforms = [*(transforms or []), report]
    n_params = n_parameters if n_parameters is not None else count_parameters(entries)
    result = CompressedModel(encoded, entries, recipe, source, aliases, n_params, list(transforms or []))
    check_size_target(result)
    return result


def _task_of(model: Any, source: ModelSource | None):
    """The task of the model being compressed (a user's own HF module by its class name)."""
    task = get_task(source.task if source else None, source.architecture if source else None)
    if task.name == "unknown" and isinstance(model, nn.Module):
        task = get_task(task_of_architecture(type(model).__name__))
    return task


def _check_distill(model: Any, task: Any, config: DistillConfig) -> None:
    """Refuse, before anything is encoded, a distillation that cannot run on this model."""
    from big2small.distill import resolve_source

    if not isinstance(model, nn.Module):
        raise Big2SmallError("distillation needs the model's structure, not a bare state_dict "
                             "(give an HF dir or a bundled model)")
    config.validate()
    resolve_source(model, task.name, config.source)


def check_size_target(cm: CompressedModel) -> None:
    """Refuse a result that misses its recipe's size target. The sizing (_size_to_target) is exact
    by construction; this guards the promise made to the user."""
    target, size = cm.recipe.target_bpw, cm.size()
    reached = size.bpw_all if cm.recipe.target_over == "model" else size.bpw_scope
    if target is not None and reached > target + 1e-9:
        raise Big2SmallError(f"internal: size target {target} bpw ({cm.recipe.target_over}) missed ({reached:.4f}); "
                             "please report")


def encoding_units(entries: list[PlanEntry], done: set[str] = frozenset()) -> list[list[PlanEntry]]:
    """The plan's entries not in `done`, as units of work: one tensor each, except that the tensors
    of a method that encodes jointly (the INR) form one unit, placed at its first tensor."""
    units: list[list[PlanEntry]] = []
    joint: dict[str, list[PlanEntry]] = {}
    for e in entries:
        if e.name in done:
            continue
        if REGISTRY[e.config.method].encodes_jointly:
            if e.config.method not in joint:
                joint[e.config.method] = []
                units.append(joint[e.config.method])
            joint[e.config.method].append(e)
        else:
            units.append([e])
    return units


def encode_unit(unit: list[PlanEntry], tensors: list[torch.Tensor], *, seed: int, device: torch.device,
                advance: Callable[[float], None] | None = None) -> list[Encoded]:
    """Encode one unit of encoding_units (its tensors' values given in order) on `device`; the
    stored form comes back on the CPU. `advance(n)` reports n weights done."""
    if len(unit) == 1 and not REGISTRY[unit[0].config.method].encodes_jointly:
        e = unit[0]
        try:
            enc = _on_cpu(generator_for(e.config).encode(tensors[0].to(device), e.layout, seed=seed))
        except Big2SmallError as exc:
            raise Big2SmallError(f"{e.name}: {exc}") from None
        if advance:
            advance(e.numel)
        return [enc]
    method = unit[0].config.method
    for e, tensor in zip(unit, tensors):
        try:
            REGISTRY[method].check_input(tensor, e.layout)  # here, where the name is known
        except Big2SmallError as exc:
            raise Big2SmallError(f"{e.name}: {exc}") from None
    items = [(e.config, tensor.to(device), e.layout) for e, tensor in zip(unit, tensors)]
    try:
        results = REGISTRY[method].encode_many(items, seed=seed, advance=advance)
    except Big2SmallError as exc:
        raise Big2SmallError(f"{method} ({len(unit)} tensors): {exc}") from None
    return [_on_cpu(r) for r in results]


def _adopt(entries: list[PlanEntry], pre_encoded: dict[str, Encoded], reason: str) -> dict[str, Encoded]:
    """Put tensors given in stored form into the plan (their config and `reason`), checked against it."""
    by_name = {e.name: e for e in entries}
    unknown = sorted(set(pre_encoded) - set(by_name))
    if unknown:
        raise Big2SmallError(f"{len(unknown)} pre-encoded tensor(s) are not in the model, e.g. {unknown[0]}")
    for name, enc in pre_encoded.items():
        e = by_name[name]
        if enc.layout.shape != e.shape:
            raise Big2SmallError(f"{name}: pre-encoded shape {enc.layout.shape} is not the model's {e.shape}")
        if e.config == enc.config and enc.total_bits != _planned_bits(e):
            raise Big2SmallError(f"{name}: pre-encoded tensor has {enc.total_bits} bits, the plan says {_planned_bits(e)}")
        e.config, e.reason = enc.config, reason
    return dict(pre_encoded)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device `device` names (None: the CPU); one that this machine or this PyTorch build
    lacks is a Big2SmallError."""
    if device is None:
        return torch.device("cpu")
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise Big2SmallError(f"unknown device {device!r} ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Big2SmallError("device 'cuda' was asked for, but no CUDA GPU is available")
    try:  # any other kind (mps, xpu, ...) is tried once: a build or machine without it raises here
        usable = device.type != "meta" and torch.empty(1, device=device).device.type == device.type
    except (RuntimeError, AssertionError, AttributeError):
        usable = False
    if not usable:
        raise Big2SmallError(f"device {str(device)!r} is not available on this machine or in this PyTorch build "
                             "(use cpu, or cuda where there is a GPU)")
    return device


def _on_cpu(enc: Encoded) -> Encoded:
    enc.tensors = {k: v.cpu() for k, v in enc.tensors.items()}
    return enc


def planned_bits(e: PlanEntry) -> tuple[int, bool]:
    """(bits, exact) of a plan entry before encoding: exact, or an upper bound where the size
    follows the data (lowrank's energy, hyper_ref)."""
    if isinstance(e.config, RawConfig):
        return _planned_bits(e), True
    return REGISTRY[e.config.method].bits_bound(e.config, e.layout)


def _planned_bits(e: PlanEntry) -> int:
    """Exact stored bits of a plan entry whose config is already fixed."""
    if isinstance(e.config, RawConfig) and e.config.dtype == "same":
        return e.numel * torch.empty(0, dtype=e.dtype).element_size() * 8
    return REGISTRY[e.config.method].bits_for(e.config, e.layout)


def _size_to_target(entries: list[PlanEntry], recipe: Recipe, n_params: int) -> None:
    """Choose the default method's open options so that the whole model fits recipe.target_bpw.

    Tensors with a fixed config (raw, overrides) are charged first; what is left is shared out
    evenly per weight among the tensors that use the default method.
    """
    sized, fixed_bits, count = _sized_entries(entries, recipe, n_params)
    gen_cls = REGISTRY[recipe.default.method]
    budget = recipe.target_bpw * count - fixed_bits
    n_sized = sum(e.numel for e in sized)
    beta = budget / n_sized
    floor = fixed_bits / count
    if beta <= 0:
        raise Big2SmallError(
            f"target {recipe.target_bpw} bpw is impossible: the tensors kept uncompressed already take "
            f"{floor:.3f} bpw (compress more tensors, e.g. the embeddings with --include-embeddings, "
            "or store the kept ones in lower precision with --raw-dtype)"
        )
    fixed = dict(recipe.budget_fixed)
    for e in sized:
        try:
            e.config = gen_cls.for_budget(beta, e.layout, fixed)
        except Big2SmallError as exc:
            raise Big2SmallError(
                f"target {recipe.target_bpw} bpw is impossible with {recipe.default.method}: it leaves "
                f"{beta:.3f} bits per compressed weight ({exc})"
            ) from None
        e.budgeted = True


def _sized_entries(entries: list[PlanEntry], recipe: Recipe, n_params: int) -> tuple[list[PlanEntry], int, int]:
    """The entries a size target sizes (those of the default method), the bits the other entries
    it counts take (charged first), and the weights it counts them over: with target_over="model",
    every entry over `n_params`; with "compressed", the compressed entries over their own weights."""
    sized = [e for e in entries if e.compressed and e.config is recipe.default]
    if not sized:
        raise Big2SmallError("a size target needs a compression method for at least one tensor")
    counted = _counted(entries, recipe)
    count = n_params if recipe.target_over == "model" else sum(e.numel for e in counted)
    return sized, sum(_planned_bits(e) for e in counted if e not in sized), count


def _counted(entries: list[PlanEntry], recipe: Recipe) -> list[PlanEntry]:
    """The entries whose bits a size target counts (recipe.target_over)."""
    return entries if recipe.target_over == "model" else [e for e in entries if e.compressed]


def _allocate(entries: list[PlanEntry], loads: dict[str, Callable[[], torch.Tensor]], recipe: Recipe,
              n_params: int, model: Any, source: ModelSource | None, progress: bool) -> None:
    """Fill the size target: each sized entry gets the config the allocator chooses (with why).
    A target outside what the model can take is a Big2SmallError naming the feasible range."""
    from big2small.allocation.allocate import Allotment, allocate, describe, smallest_bits

    task = _task_of(model, source)
    sized, fixed_bits, count = _sized_entries(entries, recipe, n_params)
    items = [Allotment(e.name, e.layout, loads[e.name]) for e in sized]
    kwargs = dict(method=recipe.default.method, fixed=dict(recipe.budget_fixed), raw_dtype=recipe.raw_dtype)
    lowest = (fixed_bits + smallest_bits(items, recipe.allocation, **kwargs)) / count
    original = sum(e.numel * e.dtype.itemsize * 8 for e in _counted(entries, recipe)) / count
    what = "the model takes" if recipe.target_over == "model" else "the compressed tensors take"
    if not lowest <= recipe.target_bpw < original:
        raise Big2SmallError(
            f"target {recipe.target_bpw:g} bpw is impossible: with this recipe {what} {lowest:.3f} bpw "
            f"at the least, and the original takes {original:.3f} (give a target in between)")
    budget = math.floor(recipe.target_bpw * count) - fixed_bits
    result = allocate(items, budget, recipe.allocation, model=model, task=task, seed=recipe.seed,
                      progress=progress, **kwargs)
    total = sum(result.costs.values()) or 1.0
    unit = "nats per output" if result.objective == "output" else "squared weight error"
    for e in sized:
        e.config = result.configs[e.name]
        e.budgeted = True
        e.reason = f"allocated by {result.objective} error"
        e.detail = (f"{describe(e.config)}: predicted {result.costs[e.name]:.3g} {unit}, "
                    f"{100 * result.costs[e.name] / total:.1f}% of the total")
