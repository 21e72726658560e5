"""Where units of work run: in this process, in a pool of worker processes on this machine, or on a
Ray cluster (Ray is an optional extra: pip install big2small[ray]).

Each runs a picklable function over picklable jobs and yields the results as they finish (in any
order: the caller puts them in order). A job's error (Big2SmallError included) is raised in the
caller, and the jobs not yet started are cancelled.

Workers run PyTorch with one thread each: N processes of N threads would fight over the cores, and
a forked process inherits a thread pool it cannot use; the pool therefore spawns its workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any, TypeVar

from big2small.errors import Big2SmallError

J = TypeVar("J")
R = TypeVar("R")


def all_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Executor:
    """How to run jobs. workers: processes on this machine (1: in this process); ray: None (no
    Ray), "local" (start Ray on this machine with `workers` CPUs) or a cluster's address
    ("auto", "ray://host:10001", ...)."""

    workers: int = 1
    ray: str | None = None

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise Big2SmallError(f"the number of workers must be at least 1, got {self.workers}")

    def describe(self) -> str:
        if self.ray is not None:
            return f"Ray ({self.ray})"
        return "this process" if self.workers == 1 else f"{self.workers} worker processes"

    def run(self, fn: Callable[[J], R], jobs: list[J]) -> Iterator[R]:
        """fn(job) for every job, yielded as each finishes."""
        if self.ray is not None:
            yield from _run_ray(fn, jobs, self.ray, self.workers)
        elif self.workers == 1 or len(jobs) <= 1:
            for job in jobs:
                yield fn(job)
        else:
            yield from _run_pool(fn, jobs, min(self.workers, len(jobs)))


def single_threaded() -> None:
    """A worker's initialiser: one PyTorch thread (see the module docstring)."""
    import torch

    torch.set_num_threads(1)


def _call_single_threaded(fn: Callable[[J], R], job: J) -> R:
    single_threaded()
    return fn(job)


def _run_pool(fn: Callable[[J], R], jobs: list[J], workers: int) -> Iterator[R]:
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=single_threaded) as pool:
        pending = {pool.submit(fn, job) for job in jobs}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield future.result()
        finally:
            for future in pending:
                future.cancel()


def _run_ray(fn: Callable[[J], R], jobs: list[J], address: str, workers: int) -> Iterator[R]:
    try:
        import ray
    except ImportError:
        raise Big2SmallError("--ray needs Ray: pip install 'big2small[ray]'") from None
    started = not ray.is_initialized()
    if started:
        options: dict[str, Any] = {"num_cpus": workers} if address == "local" else {"address": address}
        try:
            ray.init(include_dashboard=False, log_to_driver=False, **options)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise Big2SmallError(f"cannot start or reach Ray at {address} ({str(exc).splitlines()[0]})") from None
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(_call_single_threaded)
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
    finally:
        if started:
            ray.shutdown()
