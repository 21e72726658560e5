"""`big2small fold` as a user runs it: a real subprocess on a small Hugging Face model directory."""

import json

import pytest
import torch

import big2small as b2s
from test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("llama") / "tiny-llama"
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def test_fold_writes_a_narrower_artifact_and_reports_it(llama_dir, tmp_path):
    art = tmp_path / "folded.b2s"
    report = tmp_path / "fold.json"
    result = run("fold", llama_dir, "--sparsity", "0.1", "--skip", "attention", "-o", art, "--json", report)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["fold"]["sparsity"] >= 0.1 and data["fold"]["data_free"]
    assert data["fold"]["macs_after"] < data["fold"]["macs_before"]
    model = b2s.restore(art)  # rebuilt from the artifact alone, at the folded widths
    assert model.model.layers[0].mlp.gate_proj.out_features < 64
    assert sum(p.numel() for p in model.parameters()) == data["fold"]["parameters_after"]


def test_fold_then_quantise_counts_bits_against_the_original(llama_dir, tmp_path):
    report = tmp_path / "fold.json"
    result = run("fold", llama_dir, "--ratio", "0.25", "--then", "uniform:bits=4,group_size=32,min_numel=0", "-o",
                 tmp_path / "f.b2s", "--json", report)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())
    assert data["size"]["n_parameters"] == data["fold"]["parameters_before"]
    assert data["size"]["n_compressed"] > 0


def test_dry_run_lists_groups_and_writes_nothing(llama_dir, tmp_path):
    result = run("fold", llama_dir, "--dry-run", columns=200)
    assert result.returncode == 0, result.stderr
    assert "model.layers.1.attention" in result.stdout and "residual stream" in result.stdout


def test_pruning_baseline_runs_from_the_cli(llama_dir, tmp_path):
    result = run("fold", llama_dir, "--prune", "l2", "--sparsity", "0.1", "-o", tmp_path / "p.b2s")
    assert result.returncode == 0, result.stderr
    assert "pruned (l2)" in result.stdout


@pytest.mark.parametrize("args, needle", [
    (["--sparsity", "1.5"], "sparsity must be in (0, 1)"),
    (["--repair", "data"], "no built-in inputs"),
    (["--prune", "l3"], "selection must be"),
    (["--group-ratio", "mlp"], "expected PATTERN=R"),
    (["--distill", "-1"], "--distill must be a number of steps >= 0"),
    (["--distill", "5", "--distill-samples", "0"], "held_out < samples"),
])
def test_bad_options_are_one_line_errors(llama_dir, tmp_path, args, needle):
    assert_one_line_error(run("fold", llama_dir, *args, "-o", tmp_path / "x.b2s"), needle)
    assert not (tmp_path / "x.b2s").exists()


def test_a_bare_state_dict_cannot_be_folded(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(4, 4)}, str(path))
    assert_one_line_error(run("fold", path, "-o", tmp_path / "x.b2s"), "needs the model's structure")


def test_a_recipe_file_that_lists_a_fold_matches_fold_then(llama_dir, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps({"transforms": [{"transform": "fold", "sparsity": 0.2}],
                                  "default": {"method": "uniform", "bits": 4}, "min_numel": 0}))
    listed, direct = tmp_path / "listed.b2s", tmp_path / "direct.b2s"
    result = run("compress", llama_dir, "--recipe", recipe, "-o", listed)
    assert result.returncode == 0, result.stderr
    result = run("fold", llama_dir, "--sparsity", "0.2", "--then", "uniform:bits=4,min_numel=0", "--raw-dtype", "float16",
                 "-o", direct)
    assert result.returncode == 0, result.stderr
    a, b = b2s.load(listed), b2s.load(direct)
    assert a.size() == b.size() and a.size().n_compressed > 0
    assert a.n_parameters == a.transforms[0].parameters_before > a.transforms[0].parameters_after
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert {**a.transforms[0].to_dict(), "seconds": 0} == {**b.transforms[0].to_dict(), "seconds": 0}
    assert a.recipe.transforms[0].sparsity == 0.2  # the manifest's recipe says what was done


def test_a_recipe_file_with_a_fold_needs_a_model_not_a_state_dict(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.randn(4, 4)}, str(path))
    recipe = tmp_path / "recipe.json"
    recipe.write_text('{"transforms": [{"transform": "fold", "sparsity": 0.2}], "default": {"method": "uniform", "bits": 4}}')
    assert_one_line_error(run("compress", path, "--recipe", recipe, "-o", tmp_path / "x.b2s"), "need the model's structure")


def test_fold_with_distill_stores_the_repaired_weights_and_records_it(peaked_llama_dir, tmp_path):
    env = {"BIG2SMALL_CACHE": str(tmp_path / "cache")}
    plain, repaired, report = tmp_path / "plain.b2s", tmp_path / "repaired.b2s", tmp_path / "fold.json"
    common = ["--sparsity", "0.3", "--skip", "attention"]
    assert run("fold", peaked_llama_dir, *common, "-o", plain, env=env).returncode == 0
    result = run("fold", peaked_llama_dir, *common, "--distill", "12", "--distill-samples", "24", "--distill-lr", "1e-4",
                 "-o", repaired, "--json", report, env=env)
    assert result.returncode == 0, result.stderr
    distilled = json.loads(report.read_text())["distill"]
    assert distilled["steps"] == 12 and distilled["held_out_after"] < distilled["held_out_before"]
    assert "distilling" in result.stderr  # progress on stderr
    assert [t.kind for t in b2s.load(repaired).transforms] == ["fold", "distill"]
    before, after = b2s.restore(plain).state_dict(), b2s.restore(repaired).state_dict()
    assert before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before)
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the stored weights are the trained ones


def test_a_distill_source_that_cannot_apply_is_refused_before_folding(llama_dir, tmp_path):
    result = run("fold", llama_dir, "--distill", "5", "--distill-source", "inversion", "-o", tmp_path / "x.b2s")
    assert_one_line_error(result, "does not apply to a causal-lm model (it reads tokens, not images); use self or random")
    assert "folding" not in result.stderr and not (tmp_path / "x.b2s").exists()


def test_activation_selection_and_sequential_repair_run_from_the_cli(llama_dir, tmp_path):
    env = {"BIG2SMALL_CACHE": str(tmp_path / "cache")}
    report = tmp_path / "fold.json"
    result = run("fold", llama_dir, "--sparsity", "0.2", "--prune", "activation", "--norm-repair", "sequential",
                 "--distill-source", "random", "--distill-samples", "16", "--distill-seq-len", "16",
                 "-o", tmp_path / "x.b2s", "--json", report, env=env)
    assert result.returncode == 0, result.stderr
    data = json.loads(report.read_text())["fold"]
    assert data["sparsity"] >= 0.2 and data["data_free"]
    assert (data["config"]["selection"], data["config"]["norm_repair"]) == ("activation", "sequential")
    assert "reconstructing blocks" in result.stderr  # progress on stderr
