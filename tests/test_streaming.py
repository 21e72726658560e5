"""Streaming compression: the artifact of a checkpoint read tensor by tensor is the in-memory
path's, byte for byte; the model is never held; a run that stops resumes to the same bytes; a full
disk is a one-line error that leaves nothing that looks whole (bad checkpoints:
tests/models/test_checkpoint.py)."""

import errno
import weakref

import pytest
import torch
from safetensors.torch import save_file

import big2small as b2s
import big2small.streaming as streaming
from big2small.errors import Big2SmallError
from big2small.models.checkpoint import open_checkpoint
from big2small.streaming import compress_to_artifact, resume_dir

RECIPE = dict(bits=4, group_size=64, min_numel=256)


def _state(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    state = {f"layers.{i}.weight": torch.randn(96, 128, generator=g).half() for i in range(n)}
    state.update({"embed.weight": torch.randn(80, 64, generator=g).half(), "norm.weight": torch.ones(64).half(),
                  "steps": torch.arange(5)})
    return state


def _bytes(path):
    return {f.relative_to(path).as_posix(): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture
def state_file(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_state(), str(path))
    return path


def test_a_streamed_safetensors_file_gives_the_in_memory_artifact_byte_for_byte(state_file, tmp_path):
    recipe = b2s.make_recipe("uniform", bpw=4.5, group_size=64, min_numel=256)
    b2s.save(b2s.compress(b2s.load_model(state_file), recipe, progress=False), tmp_path / "memory.b2s")
    cm, info = compress_to_artifact(open_checkpoint(state_file), recipe, tmp_path / "stream.b2s", progress=False)
    assert _bytes(tmp_path / "stream.b2s") == _bytes(tmp_path / "memory.b2s")
    assert cm.size().bpw_all <= 4.5 and info.tensor_file_bytes == (tmp_path / "stream.b2s/tensors.safetensors").stat().st_size
    assert not resume_dir(tmp_path / "stream.b2s").exists()  # finished: no resume data left
    b2s.load(tmp_path / "stream.b2s")  # and it reads back, every hash checked


@pytest.mark.parametrize("tied", [False, True])
def test_a_sharded_hf_directory_streams_to_the_in_memory_artifact(tmp_path, tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, max_position_embeddings=64, tie_word_embeddings=tied)
    model_dir = tmp_path / "llama"
    LlamaForCausalLM(config).half().save_pretrained(model_dir, max_shard_size="40KB")
    assert (model_dir / "model.safetensors.index.json").is_file()
    recipe = b2s.make_recipe("uniform", include_embeddings=True, **RECIPE)
    b2s.save(b2s.compress(b2s.load_model(model_dir), recipe, progress=False), tmp_path / "memory.b2s")
    checkpoint = open_checkpoint(model_dir)
    assert checkpoint.streamed and any(i.aliases for i in checkpoint.infos) == tied
    compress_to_artifact(checkpoint, recipe, tmp_path / "stream.b2s", progress=False)
    assert _bytes(tmp_path / "stream.b2s") == _bytes(tmp_path / "memory.b2s")


def test_streaming_holds_one_input_tensor_at_a_time(state_file, tmp_path):
    """The property behind bounded memory: each tensor is read when its turn comes and dropped
    before the next is read (the plan's pass and the encoding pass alike)."""
    checkpoint = open_checkpoint(state_file)
    live, most = set(), [0]

    def counted(load):
        def read():
            t = load()
            key = id(t)
            live.add(key)
            most[0] = max(most[0], len(live))
            weakref.finalize(t, live.discard, key)
            return t
        return read

    for info in checkpoint.infos:
        info.load = counted(info.load)
    compress_to_artifact(checkpoint, b2s.make_recipe("uniform", **RECIPE), tmp_path / "a.b2s", progress=False)
    assert len(checkpoint.infos) == 9 and most[0] == 1


def test_a_stopped_run_resumes_reusing_its_units_and_writes_the_same_bytes(state_file, tmp_path, monkeypatch):
    recipe = b2s.make_recipe("uniform", **RECIPE)
    compress_to_artifact(open_checkpoint(state_file), recipe, tmp_path / "clean.b2s", progress=False)
    encoded = []
    real_encode = streaming.encode_unit

    def encode_then_die(unit, *args, **kwargs):
        if len(encoded) == 4:
            raise KeyboardInterrupt  # stands for a kill: the run stops between two units
        encoded.append(unit[0].name)
        return real_encode(unit, *args, **kwargs)

    monkeypatch.setattr(streaming, "encode_unit", encode_then_die)
    out = tmp_path / "out.b2s"
    with pytest.raises(KeyboardInterrupt):
        compress_to_artifact(open_checkpoint(state_file), recipe, out, progress=False)
    assert not out.exists() and len(list(resume_dir(out).glob("unit-*.safetensors"))) == 4
    encoded.clear()
    monkeypatch.setattr(streaming, "encode_unit", lambda unit, *a, **k: encoded.append(unit[0].name) or real_encode(unit, *a, **k))
    compress_to_artifact(open_checkpoint(state_file), recipe, out, progress=False)
    assert len(encoded) == 9 - 4  # the four units done are reused, not encoded again
    assert _bytes(out) == _bytes(tmp_path / "clean.b2s")
    assert not resume_dir(out).exists()


def test_a_unit_is_reused_only_when_its_input_and_its_arrays_hash_the_same(state_file, tmp_path, monkeypatch):
    recipe = b2s.make_recipe("uniform", **RECIPE)
    out = tmp_path / "out.b2s"
    real_write = streaming.write_artifact
    monkeypatch.setattr(streaming, "write_artifact", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        compress_to_artifact(open_checkpoint(state_file), recipe, out, progress=False)
    units = sorted(resume_dir(out).glob("unit-*.safetensors"))
    assert len(units) == 9
    # Another model of the same shapes (same plan, same fingerprint), and one unit file damaged.
    save_file(_state(seed=1), str(state_file))
    data = bytearray(units[1].read_bytes())
    data[-1] ^= 0xFF
    units[1].write_bytes(bytes(data))
    monkeypatch.setattr(streaming, "write_artifact", real_write)
    compress_to_artifact(open_checkpoint(state_file), recipe, out, progress=False)
    b2s.save(b2s.compress(b2s.load_model(state_file), recipe, progress=False), tmp_path / "clean.b2s")
    assert _bytes(out) == _bytes(tmp_path / "clean.b2s")


def test_a_full_disk_is_one_line_keeps_the_resume_data_and_leaves_no_artifact(state_file, tmp_path, monkeypatch):
    recipe = b2s.make_recipe("uniform", **RECIPE)
    compress_to_artifact(open_checkpoint(state_file), recipe, tmp_path / "clean.b2s", progress=False)
    real_write, calls = streaming.tensorfile.write_arrays, []

    def fill_up(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(streaming.tensorfile, "write_arrays", fill_up)
    out = tmp_path / "out.b2s"
    with pytest.raises(Big2SmallError, match="disk is full.*run the same command again") as err:
        compress_to_artifact(open_checkpoint(state_file), recipe, out, progress=False)
    assert "\n" not in str(err.value)
    assert not out.exists() and len(list(resume_dir(out).glob("unit-*"))) == 2  # no half-written unit
    monkeypatch.setattr(streaming.tensorfile, "write_arrays", real_write)
    compress_to_artifact(open_checkpoint(state_file), recipe, out, progress=False)
    assert _bytes(out) == _bytes(tmp_path / "clean.b2s")


@pytest.mark.slow
def test_a_killed_command_rerun_gives_the_bytes_of_an_uninterrupted_run(tmp_path):
    """The command killed (SIGKILL) once some units are on disk, then run again: the artifact is
    the uninterrupted run's, byte for byte."""
    import os
    import signal
    import subprocess
    import sys
    import time

    g = torch.Generator().manual_seed(0)
    model = tmp_path / "model.safetensors"
    save_file({f"l{i:02d}.weight": torch.randn(256, 256, generator=g) for i in range(60)}, str(model))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

    def command(out):
        return [sys.executable, "-m", "big2small.cli", "compress", str(model), "-o", str(out), "--bits", "3",
                "--group-size", "64", "--workers", "1"]

    subprocess.run(command(tmp_path / "clean.b2s"), check=True, env=env, capture_output=True)
    out = tmp_path / "out.b2s"
    proc = subprocess.Popen(command(out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(resume_dir(out).glob("unit-*.safetensors"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(resume_dir(out).glob("unit-*.safetensors")))
    assert not out.exists() and 3 <= done < 60  # killed mid-run, with units on disk
    subprocess.run(command(out), check=True, env=env, capture_output=True)
    assert _bytes(out) == _bytes(tmp_path / "clean.b2s")


def test_files_stream_and_a_small_model_stays_in_the_process_by_default(state_file):
    from big2small.executors import POOL_MIN_WEIGHTS, default_executor
    from big2small.streaming import open_model

    checkpoint, transforms, n_parameters = open_model(state_file, b2s.make_recipe("uniform", **RECIPE))
    assert checkpoint.streamed and transforms == [] and n_parameters is None
    assert sum(i.numel for i in checkpoint.infos) < POOL_MIN_WEIGHTS
    assert default_executor(checkpoint).workers == 1  # starting workers would take longer than the work
    assert default_executor(checkpoint, workers=3).workers == 3


def _counting(infos, live, most):
    """Wrap each info's load so that `most[0]` ends as the most of its tensors alive at once."""
    def counted(load):
        def read():
            t = load()
            live.add(id(t))
            most[0] = max(most[0], len(live))
            weakref.finalize(t, live.discard, id(t))
            return t
        return read

    for info in infos:
        info.load = counted(info.load)


@pytest.mark.parametrize("tied", [False, True])
def test_verify_streams_both_models_and_reports_what_the_whole_models_give(tmp_path, monkeypatch, tied):
    """verify reads the artifact and the original checkpoint a tensor at a time (one original
    tensor alive at once) and its report is the one the models in memory give."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import big2small.reports as reports

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, max_position_embeddings=64, tie_word_embeddings=tied)
    LlamaForCausalLM(config).half().save_pretrained(tmp_path / "llama", max_shard_size="40KB")
    loaded = b2s.load_model(tmp_path / "llama")
    cm = b2s.compress(loaded, "uniform", include_embeddings=True, progress=False, **RECIPE)
    b2s.save(cm, tmp_path / "a.b2s")
    expected = b2s.load(tmp_path / "a.b2s").weight_error(loaded.model.state_dict()).table()  # the whole-model path
    live, most = set(), [0]
    real_open = reports.open_model_tensors

    def counted_open(spec):
        checkpoint = real_open(spec)
        assert checkpoint.streamed
        _counting(checkpoint.infos, live, most)
        return checkpoint

    monkeypatch.setattr(reports, "open_model_tensors", counted_open)
    report = b2s.verify_artifact(tmp_path / "a.b2s")
    assert report.outcome == "measured" and report.weight_error.table() == expected
    assert report.tensors_checked == len(cm.tensors) and most[0] == 1


@pytest.mark.parametrize("name, value", [("layers.3.weight", float("nan")), ("norm.weight", float("inf"))])
@pytest.mark.parametrize("workers", [1, 2])
def test_nan_found_while_encoding_is_one_line_leaves_no_artifact_and_valid_resume_data(tmp_path, name, value, workers):
    """The plan of a streamed run does not read the values (see the next test): a NaN or Inf in a
    compressed tensor or a kept one is refused where the tensor is encoded, naming it; no artifact
    appears; the units done so far are kept and valid, so that once the weights are fixed the run
    writes the bytes of an uninterrupted one."""
    from big2small.executors import Executor

    recipe = b2s.make_recipe("uniform", **RECIPE)
    state, model = _state(), tmp_path / "model.safetensors"
    save_file(state, str(model))
    compress_to_artifact(open_checkpoint(model), recipe, tmp_path / "clean.b2s", progress=False)
    bad = dict(state)
    bad[name] = state[name].clone()
    bad[name].view(-1)[5] = value
    save_file(bad, str(model))
    out = tmp_path / "out.b2s"
    with pytest.raises(Big2SmallError, match=f"{name}: .*NaN or Inf") as err:
        compress_to_artifact(open_checkpoint(model), recipe, out, executor=Executor(workers=workers), progress=False)
    assert "\n" not in str(err.value) and not out.exists()
    save_file(state, str(model))
    compress_to_artifact(open_checkpoint(model), recipe, out, executor=Executor(workers=workers), progress=False)
    assert _bytes(out) == _bytes(tmp_path / "clean.b2s")


def test_a_streamed_plan_reads_only_the_tensors_whose_storage_depends_on_their_values(tmp_path):
    """Kept tensors stored in a wider dtype than the raw dtype (float32 or bfloat16 kept as float16)
    are read for their range, and one beyond float16's is stored in float32; nothing else is read
    before encoding. Allocation by error reads (and checks) every tensor anyway."""
    from big2small.compress import plan_infos

    g = torch.Generator().manual_seed(0)
    state = {"a.weight": torch.randn(96, 128, generator=g).half(), "b.weight": torch.randn(96, 128, generator=g),
             "norm16.weight": torch.ones(64).half(), "norm32.weight": torch.full((64,), 70000.0),
             "normbf.weight": torch.ones(64).bfloat16()}
    save_file(state, str(tmp_path / "model.safetensors"))
    checkpoint = open_checkpoint(tmp_path / "model.safetensors")
    read = []

    class Counted:
        def __init__(self, name, load):
            self.name, self.load = name, load

        def __call__(self):
            return self.load()

        def as_stored(self):
            read.append(self.name)
            return self.load.as_stored()

    for info in checkpoint.infos:
        info.load = Counted(info.name, info.load)
    entries = {e.name: e for e in plan_infos(checkpoint.infos, b2s.make_recipe("uniform", **RECIPE), check_values=False)}
    assert sorted(read) == ["norm32.weight", "normbf.weight"]
    assert entries["norm32.weight"].config.dtype == "float32" and entries["normbf.weight"].config.dtype == "float16"
    read.clear()
    plan_infos(checkpoint.infos, b2s.make_recipe("uniform", **RECIPE))
    assert sorted(read) == sorted(state)  # checked up front (the default, and --dry-run's)
