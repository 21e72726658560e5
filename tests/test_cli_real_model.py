"""The CLI's eval and bench on a real pretrained model (MiniLM), as a user runs them."""

import json

import pytest
from test_cli import run

pytestmark = pytest.mark.slow


def test_eval_of_an_artifact_compares_with_its_source(tmp_path):
    art = tmp_path / "minilm.b2s"
    assert run("compress", "minilm", "--bits", "8", "-o", art).returncode == 0
    r = run("eval", art, "--documents", "20", "--json", tmp_path / "eval.json")
    assert r.returncode == 0, r.stderr
    metrics = {m["metric"]: m for m in json.loads((tmp_path / "eval.json").read_text())["metrics"]}
    assert metrics["mean_cosine"]["value"] > 0.999
    assert metrics["mean_cosine"]["protocol"]["n"] == 20
    assert 0.64 < metrics["lee50_pearson"]["value"] < 0.67
    assert "mean cosine" in r.stdout


def test_bench_writes_table_json_and_plot(tmp_path):
    out = tmp_path / "bench"
    r = run("bench", "minilm", "--config", "uniform:bits=4,group_size=128", "--documents", "20", "--out-dir", out)
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert [row["method"] for row in rows] == ["fp32", "uniform", "lowrank", "prune"]
    uniform, lowrank, prune = rows[1:]
    assert lowrank["bpw_all"] <= uniform["bpw_all"] and prune["bpw_all"] <= uniform["bpw_all"]
    assert abs(lowrank["bpw_all"] - uniform["bpw_all"]) / uniform["bpw_all"] < 0.02
    assert (out / "pareto.png").stat().st_size > 10_000
    assert "| uniform |" in (out / "bench.md").read_text()
