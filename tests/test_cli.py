"""The CLI as a user runs it: a real subprocess, its output and exit status."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import big2small

# The subprocess imports the big2small this process imported, whatever its working directory.
SOURCE_ROOT = str(Path(big2small.__file__).resolve().parents[1])


def run(*args, cwd=None, columns=None, env=None):
    """`big2small ARGS` in a subprocess (stdout and stderr are pipes); `env`: variables to add."""
    env = {**os.environ, **(env or {}),
           "PYTHONPATH": os.pathsep.join(filter(None, [SOURCE_ROOT, os.environ.get("PYTHONPATH")]))}
    if columns:
        env["COLUMNS"] = str(columns)
    return subprocess.run([sys.executable, "-m", "big2small.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


@pytest.fixture
def state_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "weights.safetensors"
    save_file({"encoder.weight": torch.randn(256, 128), "encoder.bias": torch.randn(256), "head.weight": torch.randn(10, 256)}, str(path))
    return path


def assert_one_line_error(result, needle):
    assert result.returncode == 2
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_compress_inspect_verify_decompress(state_file, tmp_path):
    art = tmp_path / "w.b2s"
    r = run("compress", state_file, "--bits", "4", "--group-size", "64", "-o", art, "--json", tmp_path / "size.json")
    assert r.returncode == 0, r.stderr
    size = json.loads((tmp_path / "size.json").read_text())["size"]
    assert 4 < size["bpw_scope"] < 4.6

    r = run("inspect", art, "--json", "-")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout[r.stdout.index("{"):])
    assert report["tensors"]["encoder.weight"]["method"] == "uniform"

    r = run("verify", art)
    assert r.returncode == 0, r.stderr
    assert "integrity: ok" in r.stdout and "SQNR" in r.stdout

    r = run("decompress", art, tmp_path / "dense.safetensors")
    assert r.returncode == 0 and (tmp_path / "dense.safetensors").is_file()


def test_dry_run_lists_every_tensor_and_writes_nothing(state_file, tmp_path):
    r = run("compress", state_file, "--dry-run")
    assert r.returncode == 0, r.stderr
    for name in ("encoder.weight", "encoder.bias", "head.weight"):
        assert name in r.stdout
    assert list(tmp_path.glob("*.b2s")) == []


def test_bpw_target_met(state_file, tmp_path):
    r = run("compress", state_file, "--bpw", "3.2", "-o", tmp_path / "a.b2s", "--json", "-")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout[r.stdout.index("{"):])["size"]["bpw_all"] <= 3.2


def test_bpw_over_compressed_targets_the_compressed_tensors_only(state_file, tmp_path):
    r = run("compress", state_file, "--bpw", "3.2", "--bpw-over", "compressed", "-o", tmp_path / "a.b2s", "--json", "-")
    assert r.returncode == 0, r.stderr
    size = json.loads(r.stdout[r.stdout.index("{"):])["size"]
    assert size["bpw_scope"] <= 3.2 < size["bpw_all"]  # the kept fp16 tensors are outside that budget


def test_override_by_regex(state_file, tmp_path):
    r = run("compress", state_file, "--override", "encoder.*=lowrank:rank=8", "-o", tmp_path / "a.b2s", "--json", "-")
    assert r.returncode == 0, r.stderr
    r = run("inspect", tmp_path / "a.b2s", "--json", "-")
    assert json.loads(r.stdout[r.stdout.index("{"):])["tensors"]["encoder.weight"]["method"] == "lowrank"


def test_missing_model_file(tmp_path):
    assert_one_line_error(run("compress", tmp_path / "nope.safetensors", "-o", tmp_path / "a.b2s"), "no such file")


def test_impossible_target(state_file, tmp_path):
    assert_one_line_error(run("compress", state_file, "--bpw", "0.3", "-o", tmp_path / "a.b2s"), "impossible")
    assert not (tmp_path / "a.b2s").exists()


def test_nan_weights(tmp_path):
    path = tmp_path / "nan.safetensors"
    w = torch.randn(128, 128)
    w[3, 3] = float("nan")
    save_file({"l.weight": w}, str(path))
    assert_one_line_error(run("compress", path, "-o", tmp_path / "a.b2s"), "NaN")
    assert not (tmp_path / "a.b2s").exists()


def test_output_exists(state_file, tmp_path):
    (tmp_path / "a.b2s").mkdir()
    assert_one_line_error(run("compress", state_file, "-o", tmp_path / "a.b2s"), "exists")


def test_overwrite_refuses_a_folder_that_is_not_an_artifact_and_keeps_it(state_file, tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("years of work")
    for command in ("compress", "fold"):
        assert_one_line_error(run(command, state_file, "-o", folder, "--overwrite"), "not a big2small artifact")
    assert (folder / "chapter1.tex").read_text() == "years of work"
    assert run("compress", state_file, "-o", tmp_path / "a.b2s").returncode == 0
    assert run("compress", state_file, "--bits", "3", "-o", tmp_path / "a.b2s", "--overwrite").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.b2s", "thesis", "weights.safetensors"]


def test_corrupt_artifact(state_file, tmp_path):
    art = tmp_path / "a.b2s"
    assert run("compress", state_file, "-o", art).returncode == 0
    data = bytearray((art / "tensors.safetensors").read_bytes())
    data[-3] ^= 0x55
    (art / "tensors.safetensors").write_bytes(bytes(data))
    for cmd in ("inspect", "verify"):
        assert_one_line_error(run(cmd, art), "corrupt artifact")


def test_unknown_method_and_bad_override(state_file, tmp_path):
    assert_one_line_error(run("compress", state_file, "--method", "zip", "-o", tmp_path / "a.b2s"), "unknown method")
    assert_one_line_error(run("compress", state_file, "--override", "nonsense", "-o", tmp_path / "a.b2s"), "bad --override")


def test_verify_against_wrong_model(state_file, tmp_path):
    art = tmp_path / "a.b2s"
    assert run("compress", state_file, "-o", art).returncode == 0
    other = tmp_path / "other.safetensors"
    save_file({"x.weight": torch.randn(4, 4)}, str(other))
    assert_one_line_error(run("verify", art, "--model", other), "does not match")


def test_eval_of_bare_state_dict_is_refused(state_file):
    assert_one_line_error(run("eval", state_file), "bare state_dict")


def test_verify_artifact_with_nothing_compressed(state_file, tmp_path):
    art = tmp_path / "a.b2s"
    assert run("compress", state_file, "--min-numel", "100000000", "-o", art).returncode == 0
    r = run("verify", art)
    assert r.returncode == 0, r.stderr
    assert "no compressed tensors" in r.stdout


def test_dry_run_applies_the_size_target(state_file):
    r = run("compress", state_file, "--bpw", "3.2", "--dry-run", columns=250)  # table rows on one line
    assert r.returncode == 0, r.stderr
    assert "sized to target" in r.stdout
    assert_one_line_error(run("compress", state_file, "--bpw", "0.3", "--dry-run"), "impossible")


def test_hyper_with_options_and_bpw_target(state_file, tmp_path):
    art = tmp_path / "h.b2s"
    r = run("compress", state_file, "--method", "hyper", "--bpw", "4.5", "-O", "codebook=winding", "-O", "scale_grid=1.0/0.9",
            "-o", art, "--json", tmp_path / "size.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "size.json").read_text())["size"]["bpw_all"] <= 4.5
    manifest = json.loads((art / "manifest.json").read_text())
    config = manifest["tensors"]["encoder.weight"]["config"]
    assert (config["method"], config["codebook"], config["scale_grid"]) == ("hyper", "winding", [1.0, 0.9])
    assert run("verify", art).returncode == 0


def test_bad_method_option_is_one_line(state_file, tmp_path):
    r = run("compress", state_file, "--method", "hyper", "-O", "codebook=spiral", "-o", tmp_path / "x.b2s")
    assert_one_line_error(r, "codebook must be one of")
    r = run("compress", state_file, "--method", "hyper", "-O", "nonsense", "-o", tmp_path / "x.b2s")
    assert_one_line_error(r, "expected KEY=VALUE")
    assert not (tmp_path / "x.b2s").exists()


FASHION = __import__("pathlib").Path(os.environ.get("BIG2SMALL_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST (Debian dataset-fashion-mnist) is not installed")
def test_selfcompress_recipe_trains_exports_and_reports(tmp_path):
    import big2small as b2s

    r = run("selfcompress", "--gamma", "0.5", "--epochs", "1", "--limit", "1024", "--quantizer-lr", "0.01", "--no-fp32",
            "--out-dir", tmp_path, "--json", tmp_path / "sc.json", columns=200)
    assert r.returncode == 0, r.stderr
    points = json.loads((tmp_path / "sc.json").read_text())["points"]
    assert [p["gamma"] for p in points] == [0.5]
    sc = points[0]
    assert 0 < sc["bits_share"] < 0.1 and sc["test_accuracy"] > 0.5
    assert b2s.restore(tmp_path / "gamma-0.5.b2s").conv1.in_channels == 1  # rebuilt from the artifact alone
    assert "bits left vs fp32" in r.stdout
    ev = run("eval", tmp_path / "gamma-0.5.b2s", "--json", tmp_path / "ev.json")
    assert ev.returncode == 0, ev.stderr
    metric = json.loads((tmp_path / "ev.json").read_text())["metrics"][0]
    assert metric["metric"] == "top1_accuracy" and metric["value"] == pytest.approx(sc["test_accuracy"], abs=1e-9)


def test_selfcompress_bad_settings_are_one_line(tmp_path):
    assert_one_line_error(run("selfcompress", "--gamma", "-1", "--epochs", "1"), "gamma")
    assert_one_line_error(run("selfcompress", "--init", "fp32", "--no-fp32"), "fp32")
    assert_one_line_error(run("selfcompress", "--epochs", "0"), "bad training settings")


def test_verify_of_a_narrowed_artifact_checks_integrity_only(tmp_path):
    import big2small as b2s
    from big2small.selfcompress import SelfCompressConfig, convert, prepare, quantized_layers

    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    prepare(net, SelfCompressConfig(init_bits=4.0))
    with torch.no_grad():
        next(iter(quantized_layers(net)))[2].bits.view(-1)[:3] = -1.0
    b2s.save(convert(net).compressed, tmp_path / "n.b2s")
    r = run("verify", tmp_path / "n.b2s", columns=200)
    assert r.returncode == 0, r.stderr
    assert "integrity: ok" in r.stdout and "architecture was changed" in r.stdout


def test_bits_means_bits_per_weight_for_every_method(state_file, tmp_path):
    """--bits 4 stores about 4 bits per compressed weight whatever the method (hyper: 8-bit indices
    per pair); scales and headers add a little, never a factor of two."""
    for method in ("uniform", "trellis", "hyper", "channel_int", "lowrank"):
        r = run("compress", state_file, "--method", method, "--bits", "4", "-o", tmp_path / f"{method}.b2s", "--json", "-")
        assert r.returncode == 0, r.stderr
        assert 3.5 < json.loads(r.stdout)["size"]["bpw_scope"] < 4.5, method
    r = run("compress", state_file, "--method", "hyper", "--bits", "3.5", "-o", tmp_path / "h35.b2s", "--json", "-")
    assert r.returncode == 0, r.stderr
    assert 3.5 < json.loads(r.stdout)["size"]["bpw_scope"] < 4.0  # 7-bit indices per pair
    r = run("inspect", tmp_path / "hyper.b2s", "--json", "-")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tensors"]["encoder.weight"]["method"] == "hyper"


def test_bits_that_a_method_cannot_store_is_one_line(state_file, tmp_path):
    out = tmp_path / "a.b2s"
    assert_one_line_error(run("compress", state_file, "--method", "prune", "--bits", "4", "-o", out), "does not apply")
    assert_one_line_error(run("compress", state_file, "--method", "uniform", "--bits", "3.5", "-o", out), "whole number")
    assert_one_line_error(run("compress", state_file, "--method", "hyper", "--bits", "3.25", "-o", out), "whole index width")
    assert_one_line_error(run("compress", state_file, "--method", "hyper", "--bits", "4", "-O", "bits=8", "-o", out), "not both")
    assert not out.exists()


def test_piped_tables_keep_whole_names_on_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)  # a plain pipe: rich would wrap at 80 columns
    name = "model.layers.0.self_attn.a_projection_with_a_name_long_enough_to_be_cut.weight"
    path = tmp_path / "w.safetensors"
    save_file({name: torch.randn(64, 128)}, str(path))
    r = run("compress", path, "--dry-run")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if name in line)  # whole, on one line
    assert "64x128" in row and "uniform" in row and "…" not in r.stdout
    art = tmp_path / "a.b2s"
    assert run("compress", path, "-o", art).returncode == 0
    r = run("inspect", art, "--tensors")
    assert any(name in line and "uniform" in line for line in r.stdout.splitlines()), r.stdout


def test_the_plan_gives_the_size_and_both_ratios_and_the_artifact_meets_it(state_file, tmp_path):
    r = run("compress", state_file, "--bits", "3", "--dry-run", "--json", tmp_path / "plan.json")
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "plan.json").read_text())  # --dry-run --json FILE writes the plan
    assert plan["size"]["exact"] and plan["warnings"] == []
    assert "planned: " in r.stdout and "x smaller than fp32" in r.stdout and "x than fp16" in r.stdout
    r = run("compress", state_file, "--bits", "3", "-o", tmp_path / "a.b2s", "--json", "-")
    assert r.returncode == 0, r.stderr
    size = json.loads(r.stdout)["size"]
    assert size["bits_total"] == plan["size"]["bits"] and size["bpw_all"] == plan["size"]["bpw_all"]
    assert "x smaller than fp32" in r.stderr  # said every time, beside the table


def test_a_setting_that_barely_compresses_is_flagged_before_and_after(state_file, tmp_path):
    """Energy 0.95 of random (full-rank) weights keeps about every singular value: low-rank factors
    would be larger than the matrix, so it is stored dense, no smaller than fp16."""
    args = ("compress", state_file, "--method", "lowrank", "--energy", "0.95")
    r = run(*args, "--dry-run", "--json", "-")
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert not plan["size"]["exact"] and "encoder.weight" in plan["size"]["data_dependent"]
    assert any("may barely compress" in w for w in plan["warnings"]) and "warning: this setting may barely" in r.stderr
    r = run(*args, "-o", tmp_path / "a.b2s", "--json", "-")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["size"]["ratio_vs_fp16"] < 1.5 and report["warnings"] and "barely compresses" in r.stderr
    r = run("compress", state_file, "--bits", "4", "-o", tmp_path / "b.b2s")
    assert r.returncode == 0 and "warning:" not in r.stderr  # 4-bit codes: no warning


def test_size_target_without_a_method_is_filled_by_allocation(state_file):
    r = run("compress", state_file, "--bpw", "3.2", "--dry-run", "--json", "-")
    assert r.returncode == 0, r.stderr
    entries = {e["name"]: e for e in json.loads(r.stdout)["tensors"]}
    encoder = entries["encoder.weight"]
    assert encoder["config"]["method"] == "trellis" and encoder["reason"] == "allocated by weights error"


def test_size_mb_target_and_equal_allocation(state_file, tmp_path):
    r = run("compress", state_file, "--method", "uniform", "--size-mb", "0.015", "--allocate", "equal",
            "-o", tmp_path / "a.b2s", "--json", "-")
    assert r.returncode == 0, r.stderr
    size = json.loads(r.stdout)["size"]
    assert size["bits_total"] <= 0.015 * 8e6
    assert size["bits_total"] == pytest.approx(size["bpw_all"] * 35584)


def test_size_options_are_checked_in_one_line(state_file, tmp_path):
    out = tmp_path / "a.b2s"
    assert_one_line_error(run("compress", state_file, "--bpw", "3", "--size-mb", "1", "-o", out), "only one of")
    assert_one_line_error(run("compress", state_file, "--bpw", "3", "--bits", "3", "-o", out), "need --method")
    assert_one_line_error(run("compress", state_file, "--method", "uniform", "--bpw", "3", "--allocate", "best", "-o", out),
                          "allocate must be one of")
    assert_one_line_error(run("compress", state_file, "--bpw", "40", "-o", out), "the original takes 32.000")
    assert_one_line_error(run("compress", state_file, "--bpw", "3", "--bpw-over", "all", "-o", out), "--bpw-over must be one of")
    assert_one_line_error(run("compress", state_file, "--size-mb", "1", "--bpw-over", "compressed", "-o", out),
                          "give --bpw with --bpw-over compressed")
    assert not out.exists()


def test_compress_streams_a_sharded_hf_dir_and_a_missing_shard_is_one_line(tmp_path):
    import json as json_mod

    from transformers import GPT2Config, GPT2LMHeadModel

    from big2small.streaming import resume_dir

    torch.manual_seed(0)
    model_dir = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=64, bos_token_id=0,
                               eos_token_id=0)).save_pretrained(model_dir, max_shard_size="60KB")
    r = run("compress", model_dir, "--bits", "4", "--min-numel", "256", "--workers", "1", "-o", tmp_path / "a.b2s")
    assert r.returncode == 0, r.stderr
    assert big2small.load(tmp_path / "a.b2s").source.architecture == "GPT2LMHeadModel"
    index = json_mod.loads((model_dir / "model.safetensors.index.json").read_text())
    (model_dir / sorted(set(index["weight_map"].values()))[0]).unlink()
    r = run("compress", model_dir, "--bits", "4", "-o", tmp_path / "b.b2s")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].endswith("is missing")  # after the "loading ..." note
    assert not (tmp_path / "b.b2s").exists() and not resume_dir(tmp_path / "b.b2s").exists()
