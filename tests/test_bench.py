"""Bench outputs: the table, the JSON and the plot written from measured rows."""

import json

from big2small.bench import BenchResult, BenchRow, write_outputs


def _result():
    rows = [
        BenchRow("fp32", "original", 32.0, 32.0, {"perplexity": 23.67}, note="reference"),
        BenchRow("uniform", "uniform:bits=4,group_size=128", 6.66, 4.17, {"perplexity": 31.85}, 19.7, 1.3),
        BenchRow("lowrank", "lowrank:bpw=6.66", 6.65, 4.16, {"perplexity": 6.3e8}, 2.8, 17.0),
        BenchRow("prune", "bpw=1.000", None, None, note="impossible: no setting fits"),
    ]
    return BenchResult("smollm2", "causal-lm", rows, {"perplexity": {"context": 512, "windows": 20}},
                       {"machine": "x", "threads": 2, "torch": "2.13"}, "python benchmarks/baselines.py smollm2")


def test_markdown_has_every_row_protocol_and_command():
    md = _result().markdown()
    assert sum(line.startswith("| ") for line in md.splitlines()) == 5  # header + 4 rows
    assert "6.3e+08" in md  # collapsed figures stay readable
    assert "context=512" in md and "python benchmarks/baselines.py smollm2" in md
    assert "impossible: no setting fits" in md


def test_outputs_are_written(tmp_path):
    write_outputs(_result(), tmp_path)
    assert json.loads((tmp_path / "bench.json").read_text())["rows"][1]["metrics"]["perplexity"] == 31.85
    assert "Caveat" in (tmp_path / "bench.md").read_text()  # SmolLM2's GGUF grid is flagged
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_default_sweep_includes_hyper_compression():
    from big2small.bench import DEFAULT_SWEEP, HYPER_SWEEP, UNIFORM_SWEEP
    from big2small.specs import parse_method_spec

    methods = {parse_method_spec(spec)[0] for spec in DEFAULT_SWEEP}
    assert methods == {"uniform", "hyper"} and set(HYPER_SWEEP) <= set(DEFAULT_SWEEP)
    assert set(UNIFORM_SWEEP) <= set(DEFAULT_SWEEP)  # the committed baseline tables' sweep stays runnable
