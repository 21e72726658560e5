"""`--json -` as a user pipes it: stdout holds the report as JSON and nothing else (tables go to
stderr), for every command that has the option, and the JSON is what the Python API returns."""

import json

import pytest
import torch
from safetensors.torch import save_file

import big2small as b2s
from big2small.evaluate.suite import EvalSettings
from test_cli import FASHION, assert_one_line_error, run
from test_cli_eval_bos import save_tiny_causal_lm
from test_cli_fold import llama_dir  # noqa: F401  (a fixture)


def json_stdout(*args, **kwargs):
    """Run the command; its whole stdout must parse as one JSON document."""
    r = run(*args, "--json", "-", **kwargs)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout), r


def as_json(report):
    """A report's to_dict() as it reads back from the JSON the command line writes."""
    return json.loads(json.dumps(report.to_dict(), default=str))


@pytest.fixture
def state_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "weights.safetensors"
    save_file({"encoder.weight": torch.randn(256, 128), "encoder.bias": torch.randn(256), "head.weight": torch.randn(10, 256)},
              str(path))
    return path


def test_compress_inspect_verify_write_only_json_and_it_is_the_python_report(state_file, tmp_path):
    art = tmp_path / "w.b2s"
    compressed, r = json_stdout("compress", state_file, "--bits", "4", "-o", art)
    assert "size (every stored bit counted)" in r.stderr  # the table still shows, on stderr
    assert compressed["artifact"] == str(art) and compressed["stored_as"] == {
        "kept: not a layer weight": 1, "kept: small (< min_numel 4096)": 1, "uniform": 1}
    on_disk = compressed["bytes_on_disk"]
    assert on_disk["tensor_file_bytes"] == (art / "tensors.safetensors").stat().st_size
    assert on_disk["tensor_file_overhead_bytes"] == on_disk["tensor_file_bytes"] - compressed["size"]["bits_total"] / 8

    inspected, r = json_stdout("inspect", art, "--tensors")
    assert "stored tensors" in r.stderr
    assert inspected == as_json(b2s.inspect_artifact(art))
    assert inspected["size"] == compressed["size"] and inspected["bytes_on_disk"] == on_disk
    assert inspected["tensors"]["encoder.weight"]["method"] == "uniform"

    verified, _ = json_stdout("verify", art)
    assert verified == as_json(b2s.verify_artifact(art))
    assert verified["outcome"] == "measured" and verified["model"] == str(state_file)
    assert [row["name"] for row in verified["weight_error"]] == ["encoder.weight", "TOTAL"]


def test_the_compress_report_from_python_is_what_the_command_prints(state_file, tmp_path):
    printed, _ = json_stdout("compress", state_file, "--bits", "4", "-o", tmp_path / "cli.b2s")
    cm = b2s.compress(b2s.load_model(str(state_file)), "uniform", bits=4, progress=False)
    report = b2s.CompressReport.of(cm, b2s.save(cm, tmp_path / "py.b2s"))
    assert {**as_json(report), "artifact": None} == {**printed, "artifact": None}


def test_dry_run_writes_the_plan_as_json(state_file, tmp_path):
    plan, r = json_stdout("compress", state_file, "--bpw", "3.2", "--dry-run")
    assert "pre-flight" in r.stderr
    rows = {row["name"]: row for row in plan["tensors"]}
    assert set(rows) == {"encoder.weight", "encoder.bias", "head.weight"}
    assert rows["encoder.weight"]["config"]["method"] == "trellis" and rows["encoder.weight"]["sized_to_target"]
    assert plan["recipe"]["target_bpw"] == 3.2 and sum(plan["summary"].values()) == 3

    r = run("compress", state_file, "--bpw", "3.2", "--dry-run", "--json", tmp_path / "plan.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "plan.json").read_text()) == plan
    assert list(tmp_path.glob("*.b2s")) == []


def test_verify_reports_why_it_measured_nothing(tmp_path):
    cm = b2s.compress({"w": torch.randn(128, 128)}, "uniform", bits=4, min_numel=0, progress=False)  # no source
    b2s.save(cm, tmp_path / "bare.b2s")
    report = b2s.verify_artifact(tmp_path / "bare.b2s")
    assert (report.outcome, report.weight_error) == ("no original model", None)
    printed, r = json_stdout("verify", tmp_path / "bare.b2s")
    assert printed == as_json(report) and "weight error not measured" in r.stderr


def test_eval_writes_only_json_and_it_is_the_python_report(tmp_path):
    model = save_tiny_causal_lm(tmp_path / "lm", bos_token="<bos>", config_bos=2)
    printed, r = json_stdout("eval", model, "--windows", "2", "--context", "16")
    assert "perplexity" in r.stderr
    report = b2s.evaluate_target(model, settings=EvalSettings(context=16, windows=2, progress=False))
    assert printed == as_json(report)
    assert printed["task"] == "causal-lm" and printed["metrics"][0]["metric"] == "perplexity"


def test_bench_writes_only_json(tmp_path):
    model = save_tiny_causal_lm(tmp_path / "lm", bos_token="<bos>", config_bos=2, hidden=64, positions=520)
    printed, r = json_stdout("bench", model, "--config", "uniform:bits=8", "--no-matched", "--windows", "2",
                             "--out-dir", tmp_path / "bench")
    assert printed == json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert [row["method"] for row in printed["rows"]] == ["fp32", "uniform"]
    assert "| uniform |" in r.stderr


def test_fold_and_its_dry_run_write_only_json(llama_dir, tmp_path):  # noqa: F811
    groups, r = json_stdout("fold", llama_dir, "--dry-run", columns=200)
    assert "coupling groups" in r.stderr
    assert any(g["name"] == "model.layers.1.attention" for g in groups["groups"])
    assert all(g["foldable"] == (g["reason"] is None) for g in groups["groups"])

    art = tmp_path / "f.b2s"
    folded, r = json_stdout("fold", llama_dir, "--sparsity", "0.1", "--skip", "attention", "-o", art)
    assert folded["artifact"] == str(art) and folded["fold"]["sparsity"] >= 0.1
    assert 0 < folded["groups_folded"] <= len(folded["fold"]["groups"])
    assert 0 < folded["macs_removed"] < 1
    assert folded["size"] == as_json(b2s.inspect_artifact(art))["size"]


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST (Debian dataset-fashion-mnist) is not installed")
def test_selfcompress_writes_only_json():
    printed, r = json_stdout("selfcompress", "--gamma", "0.5", "--epochs", "1", "--limit", "256", "--no-fp32",
                             columns=200)
    assert [p["gamma"] for p in printed["points"]] == [0.5] and printed["init"] == "scratch"
    assert "bits left vs fp32" in r.stderr


def test_an_existing_output_is_refused_before_the_model_loads(tmp_path):
    """One check, in the library (ensure_writable), before any expensive work: the model given
    does not even exist, and the refusal is about the output."""
    (tmp_path / "a.b2s").mkdir()
    for command in ("compress", "fold"):
        assert_one_line_error(run(command, tmp_path / "no-such-model", "-o", tmp_path / "a.b2s"), "exists")
    with pytest.raises(b2s.Big2SmallError, match="exists"):
        b2s.ensure_writable(tmp_path / "a.b2s")
    assert b2s.ensure_writable(tmp_path / "a.b2s", overwrite=True) == tmp_path / "a.b2s"


def test_decompress_refuses_an_existing_file(state_file, tmp_path):
    art = tmp_path / "a.b2s"
    assert run("compress", state_file, "-o", art).returncode == 0
    (tmp_path / "dense.safetensors").write_bytes(b"keep me")
    assert_one_line_error(run("decompress", art, tmp_path / "dense.safetensors"), "exists")
    assert (tmp_path / "dense.safetensors").read_bytes() == b"keep me"
