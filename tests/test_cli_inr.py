"""`big2small compress --method inr` as a user runs it: size targets by bits or ratio, seeds, errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from test_cli import assert_one_line_error, run


def _weights(tmp_path):
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "w.safetensors"
    save_file({"a.weight": torch.randn(128, 96, generator=g), "a.bias": torch.randn(128, generator=g)}, str(path))
    return path


def _size(result):
    return json.loads(result.stdout[result.stdout.index("{"):])["size"]


def test_inr_meets_a_bpw_target_and_reloads(tmp_path):
    src = _weights(tmp_path)
    r = run("compress", src, "--method", "inr", "--bpw", "5", "-O", "steps=20", "-o", tmp_path / "a.b2s", "--json", "-")
    assert r.returncode == 0, r.stderr
    assert _size(r)["bpw_all"] <= 5.0
    r = run("inspect", tmp_path / "a.b2s", "--json", "-")
    assert json.loads(r.stdout[r.stdout.index("{"):])["tensors"]["a.weight"]["method"] == "inr"
    assert run("decompress", tmp_path / "a.b2s", tmp_path / "d.safetensors").returncode == 0
    assert load_file(str(tmp_path / "d.safetensors"))["a.weight"].shape == (128, 96)


def test_a_ratio_is_bits_per_weight_against_fp32(tmp_path):
    src = _weights(tmp_path)
    r = run("compress", src, "--method", "inr", "--ratio", "8", "-O", "steps=10", "-o", tmp_path / "a.b2s", "--json", "-")
    assert r.returncode == 0, r.stderr
    assert 3.0 < _size(r)["bpw_all"] <= 4.0


def test_the_same_seed_writes_the_same_weights(tmp_path):
    src = _weights(tmp_path)
    outs = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        r = run("compress", src, "--method", "inr", "--bpw", "5", "--seed", seed, "-O", "steps=10", "-o", tmp_path / f"{name}.b2s")
        assert r.returncode == 0, r.stderr
        outs.append(load_file(str(tmp_path / f"{name}.b2s" / "tensors.safetensors"))["a.weight::phi"])
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_inr_user_errors_are_one_line(tmp_path):
    src = _weights(tmp_path)
    out = tmp_path / "a.b2s"
    assert_one_line_error(run("compress", src, "--method", "inr", "--bpw", "0.2", "-o", out), "impossible")
    assert_one_line_error(run("compress", src, "--method", "inr", "--ratio", "0.5", "-o", out), "--ratio")
    assert_one_line_error(run("compress", src, "--method", "inr", "--ratio", "8", "--bpw", "4", "-o", out), "only one of")
    assert_one_line_error(run("compress", src, "--method", "inr", "-O", "reorder=random", "-o", out), "reorder")
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: nothing to refuse")
def test_asking_for_a_missing_gpu_is_one_line(tmp_path):
    src = _weights(tmp_path)
    assert_one_line_error(run("compress", src, "--method", "inr", "--device", "cuda", "-o", tmp_path / "a.b2s"), "no CUDA GPU")
    assert not (tmp_path / "a.b2s").exists()


def test_a_device_this_machine_lacks_is_one_line(tmp_path):
    src = _weights(tmp_path)
    for device in ("mps", "meta", "xpu"):
        if device in ("mps", "xpu") and getattr(getattr(torch, device, None), "is_available", lambda: False)():
            continue  # this machine has it: nothing to refuse
        assert_one_line_error(run("compress", src, "--device", device, "-o", tmp_path / "a.b2s"), "not available")
    assert_one_line_error(run("compress", src, "--device", "tpu9", "-o", tmp_path / "a.b2s"), "unknown device")
    assert not (tmp_path / "a.b2s").exists()
