"""Compressing a checkpoint tensor by tensor into an artifact, resumably, on every core or a Ray
cluster, without ever holding the model.

    plan        from the checkpoint's headers; a tensor is read only where the plan depends on
                its values (a kept tensor whose values may not fit the raw dtype; all of them for
                allocation by error, which reads them anyway); a size target without allocation
                works from shapes alone. NaN and Inf are found where a worker reads the tensor
                to encode it (run_unit, the planner's check): a one-line error naming the tensor,
                no artifact, and the units done so far kept, valid, for a run on fixed weights
    encode      one unit of work (one tensor; the INR's tensors, which it fits jointly, as one) at a
                time per worker: read the tensor (memory-mapped, from its shard), encode it, write
                its stored form to its own file in the resume directory, drop it
    assemble    the manifest from the units' records, then the artifact's tensor file, each array's
                bytes copied from its unit's file as they lie there (big2small.tensorfile, in the
                kernel: nothing is decoded or held), put in place in one step
                (artifact.write_artifact, the writer save() uses too); the resume directory goes

Resuming: the resume directory, `.NAME.resume` beside the artifact NAME, holds `run.json` (a
fingerprint of the plan: recipe, every tensor's name, shape, dtype and config, the source, the
library version) and one `unit-NNNNNN.safetensors` per unit done, written under a temporary name
and renamed when complete, so that a kill never leaves a half unit under a unit's name. A unit
file records the sha256 of each input tensor (of its bytes as the checkpoint stores them) and of
each stored array; a run of the same command (same fingerprint) reuses a unit only when its inputs
hash the same and its arrays still match their hashes, and encodes it again otherwise. Unit files
are not fsynced: a killed process leaves them in the page cache, and after a power cut a unit the
disk did not get whole fails those hashes and is encoded again; so the units of a run that
finishes are mostly never written to the disk at all (the resume directory goes first), and the
artifact's data is written to it once. The artifact itself is fsynced before it is put in place.
Encoding is deterministic (same seed per tensor), and the units are assembled in plan order
whatever order they finished in, so a resumed run, a run on N workers and a run on Ray write the
same bytes as one uninterrupted serial run. A run with another
fingerprint discards the old resume data.

Memory: a worker holds one unit's input (as stored, plus its float32 working copy) and its
encoded form; the driver holds the plan and the records. Peak resident memory is therefore about
the interpreter and PyTorch, plus a few times the largest tensor per worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from big2small import atomic, tensorfile
from big2small.artifact import (
    DEFAULT_MAX_SHARD_BYTES, ArtifactInfo, ensure_writable, stored_form, tensor_sha256, write_artifact,
)
from big2small.compress import (
    CompressedModel, check_size_target, count_parameters, encode_unit, encoding_units, plan_infos, resolve_device,
)
from big2small.dtypes import dtype_name
from big2small.errors import Big2SmallError
from big2small.executors import Executor
from big2small.generators import Encoded
from big2small.manifest import FORMAT_VERSION, tensor_record
from big2small.models.checkpoint import Checkpoint
from big2small.progress import progress_bar
from big2small.recipe import PlanEntry, Recipe, as_stored, finite_absmax
from big2small.transforms.records import TransformRecord
from big2small.version import __version__

UNIT_KEY = "big2small.unit"  # a unit file's metadata: its records and its inputs' sha256
RUN_FILE = "run.json"


def resume_dir(path: Path) -> Path:
    """Where the units of an unfinished compression to `path` are kept."""
    return path.with_name(f".{path.name}.resume")


@dataclass(frozen=True)
class UnitJob:
    """One unit to encode (picklable: it goes to worker processes and Ray workers): its plan
    entries, how to read each one's tensor, and where its file goes."""

    index: int
    entries: list[PlanEntry]
    loads: list[Callable[[], torch.Tensor]]
    seed: int
    device: str
    directory: str

    @property
    def path(self) -> Path:
        return Path(self.directory) / f"unit-{self.index:06d}.safetensors"

    @property
    def numel(self) -> int:
        return sum(e.numel for e in self.entries)


@dataclass(frozen=True)
class UnitResult:
    """What a unit's file holds: its tensors' manifest records; `reused`: from an earlier run."""

    index: int
    records: dict[str, dict[str, Any]]
    reused: bool


def run_unit(job: UnitJob) -> UnitResult:
    """Encode `job`'s tensors into its unit file, or reuse the file an earlier run left when it is
    this unit's, from the same inputs (see the module docstring)."""
    inputs = {e.name: _checked_sha256(e.name, as_stored(load)) for e, load in zip(job.entries, job.loads)}
    records = _reusable(job, inputs)
    if records is not None:
        return UnitResult(job.index, records, reused=True)
    tensors = [load() for load in job.loads]
    encoded = encode_unit(job.entries, tensors, seed=job.seed, device=torch.device(job.device))
    del tensors
    arrays, records = stored_form((e.name, enc) for e, enc in zip(job.entries, encoded))
    tmp = job.path.with_name(f"{job.path.name}.tmp-{os.getpid()}")
    try:
        tensorfile.write_arrays(tmp, arrays, {UNIT_KEY: json.dumps({"records": records, "inputs": inputs})})
        os.replace(tmp, job.path)  # not fsynced: see the module docstring
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise Big2SmallError(_write_failure(job.path, exc, Path(job.directory))) from None
    return UnitResult(job.index, records, reused=False)


def _checked_sha256(name: str, t: torch.Tensor) -> str:
    """The sha256 of an input tensor as stored, once its values pass the planner's check (NaN, Inf:
    recipe.finite_absmax), which the plan of compress_to_artifact leaves to here."""
    finite_absmax(name, t)
    return tensor_sha256(t)


def _reusable(job: UnitJob, inputs: dict[str, str]) -> dict[str, dict[str, Any]] | None:
    """The records of the unit file an earlier run left for `job`, or None when there is none or
    it is not this unit's encoding of these inputs (other inputs, configs or tensors, an array that
    fails its hash, a file safetensors cannot read)."""
    if not job.path.is_file():
        return None
    try:
        with safe_open(str(job.path), "pt") as f:
            unit = json.loads((f.metadata() or {})[UNIT_KEY])
            records = unit["records"]
            if unit["inputs"] != inputs or list(records) != [e.name for e in job.entries]:
                return None
            if any(records[e.name]["config"] != e.config.to_dict() for e in job.entries):
                return None
            for record in records.values():
                for a in record["stored"].values():
                    if tensor_sha256(f.get_tensor(a["key"])) != a["sha256"]:
                        return None
            return records
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None


def compress_to_artifact(checkpoint: Checkpoint, recipe: Recipe, path: str | os.PathLike, *,
                         overwrite: bool = False, device: str | torch.device | None = None,
                         executor: Executor = Executor(), progress: bool = True,
                         transforms: list[TransformRecord] | None = None,
                         n_parameters: int | None = None,
                         max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> tuple[CompressedModel, ArtifactInfo]:
    """Compress `checkpoint` with `recipe` into an artifact at `path` (see the module docstring);
    return the model's records (its tensors without their arrays: size() and plan work, decoding
    does not; artifact.load reads it whole) and what was written.

    device: where encoding runs, in each worker. transforms, n_parameters: as for compress(), for
    a checkpoint a structural transform produced. max_shard_bytes: as for write_artifact (the
    units do not depend on it: a run resumed with another shard size reuses them). Big2SmallError for what compress() refuses, and
    for a disk that fills up (the resume data is kept: run the same command again).
    """
    path = ensure_writable(path, overwrite=overwrite)
    device = resolve_device(device)
    entries = plan_infos(checkpoint.infos, recipe, n_parameters, model=checkpoint.probe_model(),
                         source=checkpoint.source, progress=progress, check_values=False)  # in run_unit
    work = _prepare_resume_dir(path, _fingerprint(entries, recipe, checkpoint))
    loads = {i.name: i.load for i in checkpoint.infos}
    jobs = [UnitJob(k, unit, [loads[e.name] for e in unit], recipe.seed, str(device), str(work))
            for k, unit in enumerate(encoding_units(entries))]
    results: dict[int, UnitResult] = {}
    total = sum(job.numel for job in jobs)
    with progress_bar(f"compressing ({executor.describe()})", total=total, enabled=progress) as advance:
        for result in executor.run(run_unit, jobs):
            results[result.index] = result
            advance(jobs[result.index].numel)
    unit_of = {name: job for job in jobs for name in results[job.index].records}
    records = {e.name: results[unit_of[e.name].index].records[e.name] for e in entries}  # plan order
    tensors = {name: _without_arrays(name, record) for name, record in records.items()}
    aliases = {a: e.name for e in entries for a in e.aliases}
    n_params = n_parameters if n_parameters is not None else count_parameters(entries)
    cm = CompressedModel(tensors, entries, recipe, checkpoint.source, aliases, n_params, list(transforms or []))
    check_size_target(cm)
    try:  # each array's bytes are copied from its unit's file as they lie there
        where = {key: array for job in jobs for key, array in tensorfile.arrays_in(job.path).items()}
        info = write_artifact(cm, records, where.__getitem__, path, overwrite=overwrite, max_shard_bytes=max_shard_bytes)
    except OSError as exc:
        raise Big2SmallError(_write_failure(path, exc, work)) from None
    except ValueError as exc:  # a unit file that changed under us since its unit was done
        raise Big2SmallError(f"{work}: a unit file is not what was written ({exc}); run the same command again") from None
    shutil.rmtree(work, ignore_errors=True)
    return cm, info


def open_model(spec: str | os.PathLike, recipe: Recipe, *, progress: bool = True,
               ) -> tuple[Checkpoint, list[TransformRecord], int | None]:
    """The model `spec` names (models.load_model's names), ready for compress_to_artifact: streamed
    from its files where models.checkpoint can, else loaded whole; with the recipe's transforms
    (which need the whole model) applied, their records, and the original parameter count (None
    without transforms)."""
    from big2small.compress import apply_transforms
    from big2small.models import load_model
    from big2small.models.checkpoint import in_memory, open_model_tensors
    from big2small.models.source import LoadedModel

    if not recipe.transforms:
        return open_model_tensors(spec), [], None
    loaded = load_model(spec)
    model, records, n_parameters = apply_transforms(loaded.weights, recipe.transforms, source=loaded.source,
                                                    progress=progress)
    return in_memory(LoadedModel(model, loaded.source)), records, n_parameters


def _without_arrays(name: str, record: dict[str, Any]) -> Encoded:
    """A tensor's stored form from its manifest record, without its arrays."""
    r = tensor_record(record, f"unit record {name!r}")
    return Encoded(r.method, r.config, r.layout, r.dtype, {}, dict(r.bits), r.meta)


def _fingerprint(entries: list[PlanEntry], recipe: Recipe, checkpoint: Checkpoint) -> str:
    """What a run must share with an earlier one to reuse its units (see the module docstring)."""
    record = {
        "format_version": FORMAT_VERSION, "library_version": __version__, "recipe": recipe.to_dict(),
        "source": checkpoint.source.to_dict(),
        "plan": [[e.name, list(e.shape), dtype_name(e.dtype), e.kind, e.config.to_dict()] for e in entries],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def _prepare_resume_dir(path: Path, fingerprint: str) -> Path:
    """The resume directory of `path`, kept when an earlier run of this fingerprint left it,
    emptied otherwise."""
    work = resume_dir(path)
    run_file = work / RUN_FILE
    try:
        if run_file.is_file() and json.loads(run_file.read_text()).get("fingerprint") == fingerprint:
            return work
    except (OSError, ValueError, AttributeError):
        pass
    try:
        if work.exists():
            shutil.rmtree(work)
        path.parent.mkdir(parents=True, exist_ok=True)
        work.mkdir()
        run_file.write_text(json.dumps({"fingerprint": fingerprint, "artifact": path.name}) + "\n")
    except OSError as exc:
        raise Big2SmallError(_write_failure(work, exc, work)) from None
    return work


def _write_failure(path: Path, exc: OSError, work: Path) -> str:
    """One line for a write that failed (disk full, ...), saying that the resume data is kept."""
    return (f"{atomic.write_failure(path, exc)}; the tensors encoded so far are kept in {work}: "
            "run the same command again to resume")
