"""Dense HF export: AutoModelForCausalLM.from_pretrained reloads it and computes our logits."""

import pytest
import torch

import big2small as b2s
from big2small.errors import Big2SmallError


def _logits(model, inputs):
    with torch.inference_mode():
        return model(input_ids=inputs).logits.float()


def test_float32_export_reloads_to_our_model_exactly_and_float16_within_its_rounding(make_artifact, tmp_path, inputs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    artifact = make_artifact("uniform", bits=3, group_size=16)
    ours = _logits(b2s.restore(artifact), inputs)
    report = b2s.export(artifact, "hf", tmp_path / "fp32", dtype="float32")
    assert not report.requantised
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "fp32")).eval()
    assert torch.equal(_logits(model, inputs), ours)
    report = b2s.export(artifact, "hf", tmp_path / "fp16")
    assert report.requantised and all(t.error.sqnr_db > 60 for t in report.requantised)  # fp16 rounding only
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "fp16"), dtype=torch.float32).eval()
    assert torch.allclose(_logits(model, inputs), ours, atol=1e-2)


def test_an_existing_directory_is_replaced_only_when_it_is_an_export(make_artifact, tmp_path):
    artifact = make_artifact("uniform", bits=3, group_size=16)
    out = tmp_path / "hf"
    b2s.export(artifact, "hf", out)
    with pytest.raises(Big2SmallError, match="exists"):
        b2s.export(artifact, "hf", out)
    b2s.export(artifact, "hf", out, overwrite=True)
    (out / "notes.py").write_text("")
    with pytest.raises(Big2SmallError, match="not an exported model directory"):
        b2s.export(artifact, "hf", out, overwrite=True)


def test_per_layer_mlp_widths_are_refused_clearly(tiny_llama_dir, tmp_path):
    from big2small.folding import FoldConfig

    recipe = b2s.Recipe(transforms=[FoldConfig(sparsity=0.15, fold_attention=False, ratios={r".*layers\.0\..*": 0.5})],
                        min_numel=1024)
    cm = b2s.compress(b2s.load_model(tiny_llama_dir), recipe, progress=False)
    widths = {t.shape[0] for n, t in cm.state_dict().items() if n.endswith("gate_proj.weight")}
    b2s.save(cm, tmp_path / "folded.b2s")
    if len(widths) == 1:
        pytest.fail(f"the fold left one width {widths}: this test needs per-layer widths")
    with pytest.raises(Big2SmallError, match="MLP widths .* differ per layer"):
        b2s.export(tmp_path / "folded.b2s", "hf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_a_uniformly_folded_model_reloads_from_its_decompressed_and_exported_directories(tiny_llama_dir, tmp_path,
                                                                                          inputs):
    from transformers import AutoModelForCausalLM

    from big2small.folding import FoldConfig

    recipe = b2s.Recipe(transforms=[FoldConfig(sparsity=None, ratio=0.25)], min_numel=1024)
    cm = b2s.compress(b2s.load_model(tiny_llama_dir), recipe, progress=False)
    b2s.save(cm, tmp_path / "folded.b2s")
    ours = _logits(b2s.restore(tmp_path / "folded.b2s"), inputs)
    b2s.decompress(tmp_path / "folded.b2s", tmp_path / "dense", dtype="float32", max_shard_bytes=10**9)
    b2s.export(tmp_path / "folded.b2s", "hf", tmp_path / "hf", dtype="float32")
    for directory in ("dense", "hf"):
        model = AutoModelForCausalLM.from_pretrained(str(tmp_path / directory)).eval()
        config = model.config
        # 96 MLP units -> 72, 2 KV heads (each with 2 query heads) -> 1: the config says so
        assert (config.intermediate_size, config.num_key_value_heads, config.num_attention_heads) == (72, 1, 2)
        assert torch.allclose(_logits(model, inputs), ours, atol=1e-5)


def test_per_layer_mlp_widths_are_refused_by_decompress_to_a_directory_before_anything_is_written(
        tiny_llama_dir, tmp_path):
    from big2small.folding import FoldConfig

    recipe = b2s.Recipe(transforms=[FoldConfig(sparsity=0.15, fold_attention=False, ratios={r".*layers\.0\..*": 0.5})],
                        min_numel=1024)
    b2s.save(b2s.compress(b2s.load_model(tiny_llama_dir), recipe, progress=False), tmp_path / "folded.b2s")
    with pytest.raises(Big2SmallError, match="MLP widths .* differ per layer"):
        b2s.decompress(tmp_path / "folded.b2s", tmp_path / "dense", max_shard_bytes=10**9)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folded.b2s"]
    b2s.decompress(tmp_path / "folded.b2s", tmp_path / "dense.safetensors")  # the tensors alone: no config to describe
