"""`big2small compress --distill` as a user runs it: quantisation-aware distillation of the codec's
scales, in a real subprocess on a tiny Hugging Face model directory."""

import json

import pytest
import torch

import big2small as b2s
from test_cli import assert_one_line_error, run


def test_compress_with_distill_keeps_every_stored_bit_and_records_the_training(peaked_llama_dir, tmp_path):
    env = {"BIG2SMALL_CACHE": str(tmp_path / "cache")}
    common = ["-m", "uniform", "--bits", "2", "--group-size", "32", "--min-numel", "0"]
    plain, trained, report = tmp_path / "plain.b2s", tmp_path / "trained.b2s", tmp_path / "c.json"
    assert run("compress", peaked_llama_dir, *common, "-o", plain, env=env).returncode == 0
    result = run("compress", peaked_llama_dir, *common, "--distill", "12", "--distill-samples", "24", "--distill-lr", "1e-2",
                 "--distill-vectors", "-o", trained, "--json", report, env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["distill"]["steps"] == 12 and data["distill"]["trained"].startswith("scales of")
    assert "values of" in data["distill"]["trained"] and data["distill"]["config"]["train_vectors"]  # the norms' gains
    assert data["distill"]["held_out_after"] < data["distill"]["held_out_before"]
    assert "distilling" in result.stderr
    before, after = b2s.load(plain), b2s.load(trained)
    assert {n: e.total_bits for n, e in before.tensors.items()} == {n: e.total_bits for n, e in after.tensors.items()}
    assert [t.kind for t in after.transforms] == ["distill"]
    assert b2s.restore(trained) is not None  # the artifact restores like any other


def test_compress_inr_with_distill_trains_its_sirens_at_the_same_size(peaked_llama_dir, tmp_path):
    env = {"BIG2SMALL_CACHE": str(tmp_path / "cache")}
    common = ["-m", "inr", "--bits", "4", "-O", "steps=40", "--min-numel", "0"]
    plain, trained, report = tmp_path / "plain.b2s", tmp_path / "trained.b2s", tmp_path / "c.json"
    assert run("compress", peaked_llama_dir, *common, "-o", plain, env=env).returncode == 0
    result = run("compress", peaked_llama_dir, *common, "--distill", "12", "--distill-samples", "24",
                 "--distill-weight-loss", "0.5", "-o", trained, "--json", report, env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["distill"]["trained"].startswith("SIREN parameters of")
    assert data["distill"]["config"]["weight_loss"] == 0.5 and data["distill"]["config"]["lr"] == 1e-4  # the INR's default
    before, after = b2s.load(plain), b2s.load(trained)
    assert {n: e.total_bits for n, e in before.tensors.items()} == {n: e.total_bits for n, e in after.tensors.items()}
    assert any(not torch.equal(after.tensors[n].tensors["phi"], e.tensors["phi"])
               for n, e in before.tensors.items() if "phi" in e.tensors)


@pytest.mark.parametrize("args,message", [
    (["-m", "lowrank", "--rank", "2", "--distill", "5"], "trains the scales of uniform, hyper or trellis codes"),
    (["--distill", "5", "--workers", "2"], "--distill encodes in this process: leave out --workers and --ray"),
    (["--distill", "-1"], "--distill must be a number of steps >= 0"),
    (["--distill", "5", "--distill-source", "inversion"], "does not apply to a causal-lm model"),
    (["--distill", "5", "--distill-weight-loss", "-1"], "weight_loss must be a number >= 0"),
    (["-m", "inr", "--bits", "4", "-O", "shared_layers=2", "--distill", "5"], "or the INR's SIRENs (not shared between layers)"),
])
def test_bad_distill_options_are_refused_in_one_line(peaked_llama_dir, tmp_path, args, message):
    result = run("compress", peaked_llama_dir, "--min-numel", "0", *args, "-o", tmp_path / "x.b2s",
                 env={"BIG2SMALL_CACHE": str(tmp_path / "cache")})
    assert_one_line_error(result, message)
    assert not (tmp_path / "x.b2s").exists()
