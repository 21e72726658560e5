"""Every executor writes the serial run's artifact, byte for byte: a pool of worker processes, and
Ray on this machine (the optional extra)."""

import os

import pytest
import torch
from safetensors.torch import save_file

import big2small as b2s
from big2small.errors import Big2SmallError
from big2small.executors import Executor
from big2small.models.checkpoint import open_checkpoint
from big2small.streaming import compress_to_artifact


def _run(tmp_path, name, executor, method="uniform", **options):
    model = tmp_path / "model.safetensors"
    if not model.exists():
        g = torch.Generator().manual_seed(0)
        save_file({f"l{i}.weight": torch.randn(128, 256, generator=g).half() for i in range(6)} |
                  {"norm.weight": torch.ones(256)}, str(model))
    out = tmp_path / name
    compress_to_artifact(open_checkpoint(model), b2s.make_recipe(method, **options), out, progress=False,
                         executor=executor)
    return {f.name: f.read_bytes() for f in out.iterdir()}


def test_fewer_than_one_worker_is_refused():
    with pytest.raises(Big2SmallError, match="at least 1"):
        Executor(workers=0)


@pytest.mark.slow
@pytest.mark.parametrize("method,options", [("uniform", dict(bits=3, group_size=64)),
                                            ("hyper", dict(bits=4, group_size=64))])
def test_two_worker_processes_write_the_serial_bytes(tmp_path, method, options):
    serial = _run(tmp_path, "serial.b2s", Executor(workers=1), method, **options)
    assert _run(tmp_path, "pool.b2s", Executor(workers=2), method, **options) == serial


@pytest.mark.slow
def test_ray_on_this_machine_writes_the_serial_bytes(tmp_path):
    pytest.importorskip("ray")
    serial = _run(tmp_path, "serial.b2s", Executor(workers=1), bits=4, group_size=64)
    assert _run(tmp_path, "ray.b2s", Executor(workers=2, ray="local"), bits=4, group_size=64) == serial


@pytest.mark.slow
def test_a_started_pool_runs_every_job_once_on_its_numbered_worker_processes():
    with Executor(workers=2).started("big2small.executors") as running:
        assert running._started is not None  # started before any job was given
        done = list(running.run(_pid_number_and_job, list(range(6))))
    assert sorted(job for _, _, job in done) == list(range(6))
    assert os.getpid() not in {pid for pid, _, _ in done}
    number_of = {pid: number for pid, number, _ in done}
    assert len(set(number_of.values())) == len(number_of) and set(number_of.values()) <= {0, 1}  # what picks a GPU


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_gpu_workers_each_take_their_own_gpu():
    with Executor(workers=2, gpu=True).started("big2small.executors") as running:
        done = list(running.run(_pid_and_gpu, list(range(8))))
    gpu_of = dict(done)
    assert len(gpu_of) == 2 and set(gpu_of.values()) == {0, 1}


def _pid_number_and_job(job):
    from big2small import executors

    return os.getpid(), executors.WORKER_NUMBER, job


def _pid_and_gpu(job):
    return os.getpid(), torch.cuda.current_device()
