"""`big2small export` as a user runs it: a subprocess, its lines, JSON, and one-line errors."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_cli import assert_one_line_error, run  # noqa: E402


def test_export_writes_reports_and_refuses_in_one_line(make_artifact, tokenizer_gguf, tmp_path):
    artifact = make_artifact("uniform", bits=4, group_size=64, symmetric=True)
    out = tmp_path / "m.gguf"
    refused = run("export", artifact, out, "--to", "gguf", "--tokenizer-from", tokenizer_gguf)
    assert_one_line_error(refused, "--fallback-type")
    assert not out.exists()
    done = run("export", artifact, out, "--to", "gguf", "--tokenizer-from", tokenizer_gguf,
               "--fallback-type", "q8_0", "--json", "-")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["bytes"] == out.stat().st_size and report["requantised"] == 14
    assert all(isinstance(t["sqnr_db"], float) for t in report["tensors"] if not t["exact"])
    assert "re-quantised 14 tensor(s) (Q8_0): weight SQNR" in done.stderr
    assert_one_line_error(run("export", artifact, tmp_path / "x", "--to", "onnx"), "unknown export format 'onnx'")
    assert_one_line_error(run("export", artifact, out, "--to", "gguf", "--fallback-type", "q4_k", "--overwrite"),
                          "fallback type 'q4_k'")
    assert_one_line_error(run("export", tmp_path / "missing.b2s", tmp_path / "y", "--to", "hf"), "no such artifact")
