"""`big2small distill MODEL --drop-layers K` as a user runs it: a real subprocess on a tiny Hugging
Face model directory."""

import json

import pytest
import torch

import big2small as b2s
from test_cli import assert_one_line_error, run


def test_distill_writes_a_smaller_model_that_restores_and_reports_it(peaked_llama_dir, tmp_path):
    art, report = tmp_path / "small.b2s", tmp_path / "d.json"
    result = run("distill", peaked_llama_dir, "--drop-layers", "1", "--steps", "10", "--distill-samples", "24",
                 "--distill-seq-len", "16", "--distill-lr", "1e-3", "-o", art, "--json", report,
                 env={"BIG2SMALL_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["drop_layers"]["layers_before"] == 2 and len(data["drop_layers"]["kept"]) == 1
    assert data["distill"]["steps"] == 10 and data["distill"]["held_out_after"] < data["distill"]["held_out_before"]
    params = data["drop_layers"]
    assert data["size"]["bpw_all"] == pytest.approx(32 * params["parameters_after"] / params["parameters_before"], rel=1e-3)
    model = b2s.restore(art)  # rebuilt from the artifact alone, with one layer
    assert len(model.model.layers) == model.config.num_hidden_layers == 1
    assert sum(p.numel() for p in model.parameters()) == params["parameters_after"]
    assert model(torch.randint(0, 64, (1, 5))).logits.shape == (1, 5, 64)
    assert [t.kind for t in b2s.load(art).transforms] == ["drop_layers", "distill"]


@pytest.mark.parametrize("args,message", [
    (["--drop-layers", "2"], "can drop 0 to 1 of the model's 2 layers, not 2"),
    (["--drop-layers", "1", "--criterion", "random"], "criterion must be one of even, influence"),
    (["--drop-layers", "1", "--steps", "-1"], "--steps must be a number of steps >= 0"),
    (["--drop-layers", "1", "--distill-source", "inversion"], "does not apply to a causal-lm model"),
])
def test_bad_options_are_refused_in_one_line(peaked_llama_dir, tmp_path, args, message):
    result = run("distill", peaked_llama_dir, *args, "-o", tmp_path / "x.b2s", env={"BIG2SMALL_CACHE": str(tmp_path / "c")})
    assert_one_line_error(result, message)
    assert not (tmp_path / "x.b2s").exists()


def test_a_bare_state_dict_is_refused_in_one_line(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.randn(4, 4)}, str(tmp_path / "w.safetensors"))
    result = run("distill", tmp_path / "w.safetensors", "--drop-layers", "1", "-o", tmp_path / "x.b2s")
    assert_one_line_error(result, "bare state_dict: distillation needs the model's structure")
