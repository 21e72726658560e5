"""Where units of work run: in this process, in a pool of worker processes on this machine, or on a
Ray cluster (Ray is an optional extra: pip install big2small[ray]).

Each runs a picklable function over picklable jobs and yields the results as they finish (in any
order: the caller puts them in order). A job's error (Big2SmallError included) is raised in the
caller, and the jobs not yet started are cancelled.

Workers run PyTorch with one thread each: N processes of N threads would fight over the cores, and
a process forked from one whose PyTorch has run a parallel operation inherits a thread pool it
cannot use. The pool therefore forks its workers from a fork server (multiprocessing's
"forkserver"): a fresh process that imports the job function's module (PyTorch and big2small, about
3 s of CPU) once and runs nothing, so that each worker starts with those imports done instead of
paying them again (spawn, where there is no fork server).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from multiprocessing import get_all_start_methods, get_context
from typing import TYPE_CHECKING, Any, TypeVar

from big2small.errors import Big2SmallError

if TYPE_CHECKING:
    from big2small.models.checkpoint import Checkpoint

J = TypeVar("J")
R = TypeVar("R")

# A pool's workers take seconds to start (the fork server imports PyTorch); under this many weights
# to encode, one process is done sooner, so the default executor stays in this process.
POOL_MIN_WEIGHTS = 1 << 24


def all_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_executor(checkpoint: Checkpoint | None, workers: int | None = None, ray: str | None = None,
                     gpu: bool = False) -> Executor:
    """`workers` processes (None: all cores, or one per GPU with `gpu`, or this process alone when
    the checkpoint has fewer than POOL_MIN_WEIGHTS weights), or Ray at `ray` with that many CPUs
    when it starts one here. The checkpoint is looked at only when neither `workers` nor `ray` is
    given: otherwise it may be None, so that the executor can start before the model is opened, or
    PyTorch imported (Executor.started). gpu: the jobs encode on "cuda" (Executor.gpu)."""
    if workers is None:
        if ray is None and checkpoint is None:
            raise TypeError("default_executor needs the checkpoint when neither workers nor ray is given")
        small = ray is None and sum(i.numel for i in checkpoint.infos) < POOL_MIN_WEIGHTS
        workers = 1 if small else gpu_count() if gpu else all_cores()
    return Executor(workers=workers, ray=ray, gpu=gpu)


def gpu_count() -> int:
    """The CUDA GPUs PyTorch sees on this host (at least 1: the caller asked for one)."""
    import torch

    return max(torch.cuda.device_count(), 1)


@dataclass(frozen=True)
class Executor:
    """How to run jobs. workers: processes on this machine (1: in this process); ray: None (no
    Ray), "local" (start Ray on this machine with `workers` CPUs) or a cluster's address
    ("auto", "ray://host:10001", ...). gpu: the jobs run on the device "cuda" (PyTorch's current
    GPU), so several GPUs share the work: each pool worker makes GPU (its number mod the host's
    GPUs) its current one, and each Ray task asks Ray for one GPU (Ray then shows it only that one).
    `_started`: the pool or Ray session started() holds (not part of the executor's identity)."""

    workers: int = 1
    ray: str | None = None
    gpu: bool = False
    _started: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise Big2SmallError(f"the number of workers must be at least 1, got {self.workers}")

    def describe(self) -> str:
        if self.ray is not None:
            return f"Ray ({self.ray})"
        return "this process" if self.workers == 1 else f"{self.workers} worker processes"

    @contextlib.contextmanager
    def started(self, module: str | None = None) -> Iterator[Executor]:
        """This executor with its workers starting now, for the runs made inside the block: the
        pool's processes (or Ray and its workers) start up, each importing `module` (the job
        function's, e.g. "big2small.streaming"), while the caller does its own work (importing
        PyTorch, opening and planning a model), instead of after it. The pool or Ray session goes
        at the end of the block."""
        if self._started is not None:
            yield self
        elif self.ray is not None:
            ray = _import_ray()
            started = not ray.is_initialized()
            if started:
                _init_ray(ray, self.ray, self.workers)
            try:
                remote = ray.remote(num_cpus=1, num_gpus=int(self.gpu), max_retries=0)(_call_single_threaded)
                if module is not None:
                    for _ in range(self.workers):
                        remote.remote(_import, module)
                yield replace(self, _started=remote)
            finally:
                if started:
                    ray.shutdown()
        elif self.workers == 1:
            yield self
        else:
            context = _worker_context(module)
            with ProcessPoolExecutor(max_workers=self.workers, mp_context=context, initializer=_start_worker,
                                     initargs=(context.Value("i", 0), self.gpu)) as pool:
                # Starting a process waits for the fork server to have imported `module` (seconds):
                # a thread waits, so that the caller does its own work meanwhile.
                starting = threading.Thread(target=_start_processes, args=(pool, module, self.workers),
                                            name="big2small-pool-start", daemon=True)
                starting.start()
                try:
                    yield replace(self, _started=pool)
                finally:
                    starting.join()
                    pool.shutdown(wait=True, cancel_futures=True)

    def run(self, fn: Callable[[J], R], jobs: list[J]) -> Iterator[R]:
        """fn(job) for every job, yielded as each finishes."""
        if self._started is None and (self.ray is not None or (self.workers > 1 and len(jobs) > 1)):
            workers = self.workers if self.ray is not None else min(self.workers, len(jobs))  # no idle processes
            with replace(self, workers=workers).started(fn.__module__) as running:
                yield from running.run(fn, jobs)
        elif self.ray is not None:
            yield from _run_ray(self._started, jobs, fn)
        elif self._started is None:
            for job in jobs:
                yield fn(job)
        else:
            yield from _run_pool(self._started, fn, jobs)


def _worker_context(module: str | None):
    """How the pool starts its workers (see the module docstring): forked from a fork server that
    has imported `module`, or spawned where there is no fork server."""
    if "forkserver" not in get_all_start_methods():
        return get_context("spawn")
    context = get_context("forkserver")
    if module is not None:  # read when the fork server starts (once per process: later pools share it)
        context.set_forkserver_preload([module])
    return context


def single_threaded() -> None:
    """One PyTorch thread for a worker (see the module docstring)."""
    import torch

    torch.set_num_threads(1)


# A pool worker's number, 0..workers-1 in the order the workers started (None outside a pool).
WORKER_NUMBER: int | None = None


def _start_worker(counter, gpu: bool) -> None:
    """A pool worker's initialiser: take the next number from the pool's `counter`; with `gpu`, make
    GPU (number mod GPUs) the worker's current device, which the jobs' "cuda" then means; one thread."""
    global WORKER_NUMBER
    with counter.get_lock():
        WORKER_NUMBER = counter.value
        counter.value += 1
    if gpu:
        import torch

        torch.cuda.set_device(WORKER_NUMBER % gpu_count())
    single_threaded()


def _call_single_threaded(fn: Callable[[J], R], job: J) -> R:
    single_threaded()
    return fn(job)


def _start_processes(pool: ProcessPoolExecutor, module: str | None, workers: int) -> None:
    """Start the pool's `workers` processes, each importing `module` (a warm-up job each: a submit
    starts a process while none is idle). A pool that breaks meanwhile says so at the next submit."""
    with contextlib.suppress(RuntimeError):  # shut down (the caller's block ended first) or broken
        for _ in range(workers):
            pool.submit(_import, module)


def _import(module: str | None) -> None:
    """A warm-up job: import `module` in the worker (a no-op where the fork server has)."""
    if module is not None:
        importlib.import_module(module)


def _run_pool(pool: ProcessPoolExecutor, fn: Callable[[J], R], jobs: list[J]) -> Iterator[R]:
    pending = {pool.submit(fn, job) for job in jobs}
    try:
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()
    finally:
        for future in pending:
            future.cancel()


def _import_ray():
    try:
        import ray
    except ImportError:
        raise Big2SmallError("--ray needs Ray: pip install 'big2small[ray]'") from None
    return ray


def _init_ray(ray, address: str, workers: int) -> None:
    options: dict[str, Any] = {"num_cpus": workers} if address == "local" else {"address": address}
    try:
        ray.init(include_dashboard=False, log_to_driver=False, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise Big2SmallError(f"cannot start or reach Ray at {address} ({str(exc).splitlines()[0]})") from None


def _run_ray(remote, jobs: list[J], fn: Callable[[J], R]) -> Iterator[R]:
    import ray

    pending = [remote.remote(fn, job) for job in jobs]
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                yield ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, BaseException):
                    raise cause from None
                raise
    finally:
        for ref in pending:
            ray.cancel(ref)
