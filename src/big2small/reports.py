"""What the library reports about a compression, an artifact and an evaluation, as typed objects.

The command line prints these and nothing else (big2small.cli.render), and `--json` writes their
`to_dict()`: what a user sees there is what Python gets from

    inspect_artifact(path)             -> InspectReport   (`big2small inspect`)
    verify_artifact(path, model=None)  -> VerifyReport    (`big2small verify`)
    evaluate_target(target)            -> EvalReport      (`big2small eval`)
    PlanReport.of(entries, recipe)     -> PlanReport      (`big2small compress --dry-run`)
    CompressReport.of(cm, info)        -> CompressReport  (`big2small compress`, after save)
    FoldPlanReport.of(groups)          -> FoldPlanReport  (`big2small fold --dry-run`)
    FoldReport(result, written)        -> FoldReport      (`big2small fold`)

Sizes are in bits (SizeReport) and bytes on disk (ArtifactInfo); shapes are tensor shapes.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from big2small.artifact import MANIFEST, ArtifactInfo, ArtifactReader, artifact_info, read_manifest
from big2small.compress import CompressedModel, SizeReport, count_parameters, planned_bits, size_of
from big2small.errors import Big2SmallError
from big2small.evaluate.suite import EvalSettings, MetricRow
from big2small.evaluate.weights import WeightErrorReport, error_row, report_of
from big2small.generators import decode
from big2small.manifest import Manifest
from big2small.models.checkpoint import open_model_tensors
from big2small.models.load import load_model, load_tokenizer_from
from big2small.models.originals import original_figures
from big2small.models.tasks import evaluate, get_task
from big2small.recipe import PlanEntry, Recipe, TensorInfo
from big2small.restore import restore

if TYPE_CHECKING:
    from torch import nn

    from big2small.folding import FoldResult, GroupReport


# --- size ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArtifactSize:
    """An artifact's size twice over: every stored bit (size) and the bytes its files take on disk."""

    size: SizeReport
    bytes_on_disk: ArtifactInfo

    @property
    def tensor_file_overhead_bytes(self) -> float:
        """Bytes of the tensor file(s) beyond the stored bits: their JSON headers and byte rounding."""
        return self.bytes_on_disk.tensor_file_bytes - self.size.bits_total / 8

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size.to_dict(),
                "bytes_on_disk": {**self.bytes_on_disk.to_dict(),
                                  "tensor_file_overhead_bytes": self.tensor_file_overhead_bytes}}


# Below this ratio against fp16 a setting "barely compresses", and the reports say so.
LITTLE_GAIN_VS_FP16 = 1.5


def ratio_text(bpw: float) -> str:
    """'4.16 bits per weight: 7.69x smaller than fp32, 3.85x than fp16'."""
    return f"{bpw:.2f} bits per weight: {32 / bpw:.2f}x smaller than fp32, {16 / bpw:.2f}x than fp16"


def gain_warnings(bpw: float, *, exact: bool = True) -> list[str]:
    """A warning when `bpw` (bits per original weight; with exact=False an upper bound) is less
    than LITTLE_GAIN_VS_FP16 times smaller than fp16; else none."""
    if 16 / bpw >= LITTLE_GAIN_VS_FP16:
        return []
    if exact:
        return [f"this setting barely compresses: {ratio_text(bpw)}"]
    return [f"this setting may barely compress: at worst {ratio_text(bpw)} (the size of some tensors "
            "is known only once they are encoded)"]


def plan_summary(entries: list[PlanEntry]) -> dict[str, int]:
    """Tensors per way of storing them: a method name, or "kept: <reason>" for those kept raw."""
    counts = Counter(e.config.method if e.compressed else f"kept: {e.reason}" for e in entries)
    return dict(sorted(counts.items()))


# --- compress --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanRow:
    """One tensor of a plan: what it is and how it will be stored (config: the method's options,
    "method" included; sized_to_target: its open options were chosen by the size target)."""

    name: str
    aliases: tuple[str, ...]
    shape: tuple[int, ...]
    kind: str
    config: dict[str, Any]
    reason: str
    sized_to_target: bool
    detail: str = ""  # the figures behind an allocated choice

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "aliases": list(self.aliases), "shape": list(self.shape), "kind": self.kind,
                "config": self.config, "reason": self.reason, "sized_to_target": self.sized_to_target,
                "detail": self.detail}


@dataclass(frozen=True)
class PlanReport:
    """What compress() will do to every tensor (the pre-flight report), under `recipe`."""

    recipe: Recipe
    rows: tuple[PlanRow, ...]
    summary: dict[str, int]  # plan_summary
    n_parameters: int  # of the original model, tied tensors once
    bits: int  # every bit the artifact will store (an upper bound when not `exact`)
    exact: bool  # False where a tensor's size follows its weights (lowrank's energy, hyper_ref)
    data_dependent: tuple[str, ...] = ()  # those tensors

    @classmethod
    def of(cls, entries: list[PlanEntry], recipe: Recipe, n_parameters: int | None = None) -> PlanReport:
        """The report of a plan from big2small.compress.plan_with_count (or plan_model; then
        `n_parameters`, default: the plan's own parameters, must be the original model's)."""
        rows = tuple(PlanRow(e.name, tuple(e.aliases), tuple(e.shape), e.kind, e.config.to_dict(), e.reason, e.budgeted, e.detail)
                     for e in entries)
        bounds = {e.name: planned_bits(e) for e in entries}
        return cls(recipe, rows, plan_summary(entries),
                   n_parameters if n_parameters is not None else count_parameters(entries),
                   sum(b for b, _ in bounds.values()), all(x for _, x in bounds.values()),
                   tuple(n for n, (_, x) in bounds.items() if not x))

    @property
    def bpw_all(self) -> float:
        """Bits per original weight the artifact will take (at most, when not exact)."""
        return self.bits / max(self.n_parameters, 1)

    @property
    def warnings(self) -> list[str]:
        return gain_warnings(self.bpw_all, exact=self.exact)

    def to_dict(self) -> dict[str, Any]:
        return {"recipe": self.recipe.to_dict(), "tensors": [r.to_dict() for r in self.rows], "summary": self.summary,
                "size": {"n_parameters": self.n_parameters, "bits": self.bits, "exact": self.exact,
                         "data_dependent": list(self.data_dependent), "bpw_all": self.bpw_all,
                         "ratio_vs_fp32": 32 / self.bpw_all, "ratio_vs_fp16": 16 / self.bpw_all},
                "warnings": self.warnings}


@dataclass(frozen=True)
class CompressReport:
    """An artifact just written: where, its size, and how its tensors are stored (plan_summary)."""

    artifact: Path
    stored: ArtifactSize
    stored_as: dict[str, int]
    distilled: dict[str, Any] | None = None  # the distill record (quantisation-aware distillation), if any

    @classmethod
    def of(cls, cm: CompressedModel, info: ArtifactInfo) -> CompressReport:
        """The report of `cm` as save() wrote it (`info`, its return value)."""
        distilled = next((t.to_dict() for t in cm.transforms if t.kind == "distill"), None)
        return cls(info.path, ArtifactSize(cm.size(), info), plan_summary(cm.plan), distilled)

    @property
    def warnings(self) -> list[str]:
        return gain_warnings(self.stored.size.bpw_all)

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": str(self.artifact), **self.stored.to_dict(), "stored_as": self.stored_as,
                "warnings": self.warnings, **({"distill": self.distilled} if self.distilled else {})}


# --- inspect ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorRow:
    """One stored tensor: its shape, method and stored bits."""

    name: str
    shape: tuple[int, ...]
    method: str
    bits: int
    numel: int

    @property
    def bits_per_weight(self) -> float:
        return self.bits / max(self.numel, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "shape": list(self.shape), "bits": self.bits,
                "bits_per_weight": self.bits_per_weight}


@dataclass(frozen=True)
class InspectReport:
    """What an artifact holds and where every bit goes (its integrity checked first).

    source: the manifest's record of the original model ({} when there is none);
    methods: stored tensors per method."""

    artifact: Path
    format_version: int
    library_version: str
    source: dict[str, Any]
    methods: dict[str, int]
    stored: ArtifactSize
    tensors: tuple[TensorRow, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": str(self.artifact), "format_version": self.format_version,
                "library_version": self.library_version, "source": self.source, "methods": self.methods,
                **self.stored.to_dict(), "tensors": {t.name: t.to_dict() for t in self.tensors}}


def inspect_artifact(path: str | os.PathLike) -> InspectReport:
    """Read the artifact at `path` (every array checked against its sha256) and report on it."""
    path = Path(path)
    reader = ArtifactReader(path)
    for name in reader.manifest.tensors:  # one tensor's arrays in memory at a time
        reader.tensor(name)
    reader.check_size()
    manifest = read_manifest(path)
    records = reader.records()
    tensors = tuple(TensorRow(name, tuple(enc.layout.shape), enc.method, enc.total_bits, enc.numel)
                    for name, enc in records.items())
    return InspectReport(path, manifest["format_version"], manifest["library_version"], manifest["source"] or {},
                         dict(sorted(Counter(t.method for t in tensors).items())),
                         ArtifactSize(size_of(records, reader.manifest.n_parameters), artifact_info(path, manifest)),
                         tensors)


# --- verify ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyReport:
    """An artifact checked: every array against its sha256, every tensor decoded, and the compressed
    tensors compared with the original model's weights where that is defined.

    transforms: architecture changes stored in the artifact (then the weights have other shapes
    and no weight error is defined); model: the original compared with (None: none given or
    found); weight_error: None when not measured."""

    artifact: Path
    tensors_checked: int
    transforms: tuple[str, ...]
    model: str | None
    weight_error: WeightErrorReport | None

    @property
    def outcome(self) -> str:
        """"architecture changed", "no original model", "nothing compressed" or "measured"."""
        if self.transforms:
            return "architecture changed"
        if self.model is None:
            return "no original model"
        return "nothing compressed" if self.weight_error is None else "measured"

    def to_dict(self) -> dict[str, Any]:
        return {"artifact": str(self.artifact), "tensors_checked": self.tensors_checked, "outcome": self.outcome,
                "transforms": list(self.transforms), "model": self.model,
                "weight_error": self.weight_error.table() if self.weight_error is not None else None}


def verify_artifact(path: str | os.PathLike, model: str | None = None) -> VerifyReport:
    """Check the artifact at `path` and compare its weights with `model` (a model spec, as for
    load_model; default: the artifact's source, if recorded).

    Tensor by tensor: each is read (its arrays checked), decoded, compared with the original's
    tensor of that name (read from the checkpoint's files, models.checkpoint; a bundled model is
    loaded whole) and dropped, so that the two models are never held together."""
    path = Path(path)
    reader = ArtifactReader(path)
    reader.check_size()
    manifest = reader.manifest
    source = reader.source()
    transforms = tuple(t.kind for t in manifest.transforms)
    spec = model or (source.name if source is not None else None)
    original, problem = None, None
    if not transforms and spec is not None:
        try:
            checkpoint = open_model_tensors(spec)
            original = {n: info for info in checkpoint.infos for n in [info.name, *info.aliases]}
            _check_matches(path, spec, manifest, original)
        except Big2SmallError as exc:  # said after the artifact's own checks, which come first
            original, problem = None, exc
    rows = []
    for name, record in reader.records().items():  # one tensor of each model in memory at a time
        decoded = decode(reader.tensor(name))
        if original is not None and record.compressed:
            rows.append(error_row(name, original[name].load().float(), decoded.float()))
        del decoded
    if problem is not None:
        raise problem
    weight_error = report_of(rows) if rows else None
    return VerifyReport(path, len(manifest.tensors), transforms, None if transforms else spec,
                        weight_error if original is not None else None)


def _check_matches(path: Path, spec: str, manifest: Manifest, original: dict[str, TensorInfo]) -> None:
    """The original model `spec` (its tensors by name, tied names included) has exactly the
    artifact's tensors and aliases, of the stored shapes."""
    shapes = {name: r.layout.shape for name, r in manifest.tensors.items()}
    shapes.update({alias: shapes[target] for alias, target in manifest.aliases.items() if target in shapes})
    missing = sorted(set(shapes) - set(original))
    if missing:
        raise Big2SmallError(f"{spec} does not match the artifact: it lacks {len(missing)} tensor(s), e.g. {missing[0]}")
    absent = sorted(set(original) - set(shapes))
    if absent:
        raise Big2SmallError(f"{path}: the artifact lacks {len(absent)} tensor(s) of {spec}, e.g. {absent[0]}")
    reshaped = [n for n, shape in shapes.items() if tuple(shape) != tuple(original[n].shape)]
    if reshaped:
        raise Big2SmallError(f"{path}: {reshaped[0]} is {list(shapes[reshaped[0]])} in the artifact, "
                             f"{list(original[reshaped[0]].shape)} in {spec}")


# --- eval ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricComparison:
    """One figure of a compressed model beside the original's, under the same protocol."""

    metric: str
    value: float
    original: float
    higher_is_better: bool

    @property
    def difference(self) -> float:
        """value - original (in the metric's unit)."""
        return self.value - self.original

    @property
    def relative(self) -> float | None:
        """The difference as a share of the original's value (None when that is 0)."""
        return self.difference / abs(self.original) if self.original else None

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value, "original": self.original,
                "difference": self.difference, "relative": self.relative, "higher_is_better": self.higher_is_better}


@dataclass(frozen=True)
class EvalReport:
    """A model measured on its task: `target` (an artifact or a model spec), its task, the
    original it is compared with (`reference`; None: none), and the figures.

    original: the original's figures under the same protocol (None when there is no original, or
    it could not be loaded: `original_note` says why); original_cached: they came from the cache
    (big2small.models.originals) rather than being measured in this call."""

    target: str
    task: str
    reference: str | None
    metrics: tuple[MetricRow, ...]
    original: tuple[MetricRow, ...] | None = None
    original_cached: bool = False
    original_note: str | None = None

    def comparisons(self) -> list[MetricComparison]:
        """Each figure beside the original's (the metrics both have)."""
        originals = {m.metric: m for m in self.original or ()}
        return [MetricComparison(m.metric, m.value, originals[m.metric].value, m.higher_is_better)
                for m in self.metrics if m.metric in originals]

    def to_dict(self) -> dict[str, Any]:
        original = None if self.original is None else {
            "metrics": [m.to_dict() for m in self.original], "cached": self.original_cached}
        return {"target": self.target, "task": self.task, "reference": self.reference,
                "metrics": [m.to_dict() for m in self.metrics], "original": original,
                "comparison": [c.to_dict() for c in self.comparisons()], "original_note": self.original_note}


def evaluate_target(target: str | os.PathLike, *, reference: str | None = None,
                    settings: EvalSettings | None = None, use_cache: bool = True) -> EvalReport:
    """Measure `target` (an artifact directory, restored, or a model spec) on its task, and its
    original under the same protocol, beside it.

    reference: the original model (default: an artifact's source). Its figures are measured once
    per model and protocol and cached on disk (big2small.models.originals; `use_cache=False`
    measures them again). A target that is a model, with no reference, is measured alone."""
    target = str(target)
    settings = settings or EvalSettings()
    runnable = _runnable(target)
    task, tokenizer = runnable.task, runnable.tokenizer
    ref_spec = reference or (runnable.source_spec if runnable.source_spec != target else None)
    figures, note = None, None
    if ref_spec:  # the original first, and let go of, so that one model is in memory at a time
        runnable.let_go()  # a target loaded to learn its task is loaded again once the original is gone
        try:
            ref = _runnable(ref_spec)
            ref_model = ref.make_model()
        except Big2SmallError as exc:
            if get_task(task).needs_reference:
                raise
            note = f"the original ({ref_spec}) was not measured: {exc}"
        else:
            figures = original_figures(ref_model, task, ref.tokenizer or tokenizer, settings, use_cache=use_cache)
            del ref_model, ref
    compared_with = figures.reference if figures is not None and figures.reference else None
    rows = evaluate(runnable.make_model(), task, tokenizer, reference=compared_with, settings=settings)
    return EvalReport(target, task, ref_spec, tuple(rows), figures.metrics if figures else None,
                      bool(figures and figures.cached), note)


@dataclass
class _Runnable:
    """A model to evaluate, with what is known of it before it runs: its tokenizer, task name and
    the spec of its source. `held`: the model, when it was loaded to learn these (a model spec);
    make_model() hands it over (or builds it: an artifact is restored, a model that was let go is
    loaded again), so that nothing else keeps it."""

    build: Callable[[], nn.Module]
    tokenizer: Any
    task: str
    source_spec: str
    held: list[nn.Module]

    def make_model(self) -> nn.Module:
        return self.held.pop() if self.held else self.build()

    def let_go(self) -> None:
        """Drop the model held (while another is measured); make_model() builds it again."""
        self.held.clear()


def _runnable(target: str) -> _Runnable:
    """A model to evaluate: an artifact (checked now, restored tensor by tensor when its model is
    asked for) or a model spec (loaded now, to learn its task and tokenizer)."""
    p = Path(target)
    if p.is_dir() and (p / MANIFEST).is_file():
        reader = ArtifactReader(p)
        reader.check_size()
        source = reader.source()
        if source is None:
            raise Big2SmallError(f"{p}: this artifact has no source model record: nothing to run")
        task = get_task(source.task, source.architecture).name  # resolves earlier versions' names
        return _Runnable(lambda: restore(p), load_tokenizer_from(source), task, source.name, [])
    loaded = load_model(target)
    if loaded.model is None:
        raise Big2SmallError(f"{target} is a bare state_dict: nothing to run (use verify for weight error)")
    return _Runnable(lambda: load_model(target).model, loaded.tokenizer, loaded.source.task, target, [loaded.model])


# --- fold ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldGroupRow:
    """One coupling group: units (channels, heads, MLP units) and why it cannot fold (None: it can)."""

    name: str
    kind: str
    units: int
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "units": self.units, "foldable": self.reason is None,
                "reason": self.reason}


@dataclass(frozen=True)
class FoldPlanReport:
    """The coupling groups of a model (fold --dry-run), and the structures left alone that are not
    groups, with why (`not_folded`)."""

    groups: tuple[FoldGroupRow, ...]
    not_folded: dict[str, str]

    @classmethod
    def of(cls, report: GroupReport) -> FoldPlanReport:
        """The report of big2small.folding.find_groups' result."""
        names = {g.name for g in report.groups}
        return cls(tuple(FoldGroupRow(g.name, g.kind, g.size, g.reason) for g in report.groups),
                   {n: why for n, why in report.unfolded.items() if n not in names})

    def to_dict(self) -> dict[str, Any]:
        return {"groups": [g.to_dict() for g in self.groups], "not_folded": self.not_folded}


@dataclass(frozen=True)
class FoldReport:
    """A folded model written as an artifact: what folding did (`result`), what was written, and
    the distillation that repaired it (DistillReport.to_dict(); None without --distill)."""

    result: FoldResult
    written: CompressReport
    distilled: dict[str, Any] | None = None

    @property
    def groups_folded(self) -> int:
        """Groups that lost at least one unit."""
        return sum(g.units_after < g.units_before for g in self.result.groups)

    @property
    def macs_removed(self) -> float | None:
        """Share of the multiply-accumulates per example removed (0-1; None when not counted)."""
        r = self.result
        return 1 - r.macs_after / r.macs_before if r.macs_before else None

    def to_dict(self) -> dict[str, Any]:
        return {**self.written.to_dict(), "fold": self.result.to_dict(), "groups_folded": self.groups_folded,
                "macs_removed": self.macs_removed, "distill": self.distilled}
