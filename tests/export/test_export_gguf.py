"""GGUF export, checked by real readers: gguf's reader and dequantisers, and transformers' GGUF
loader (which undoes llama.cpp's q/k permutation); llama.cpp itself runs in test_export_llama_cpp.py."""

import math
import os

import gguf
import numpy as np
import pytest
import torch

import big2small as b2s
from big2small.errors import Big2SmallError
from big2small.export.gguf import gguf_name


def _logits(path, inputs):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(input_ids=inputs).logits


def _ours(artifact, inputs):
    with torch.inference_mode():
        return b2s.restore(artifact)(input_ids=inputs).logits


@pytest.fixture(autouse=True)
def _tokenizer(tokenizer_gguf):
    global TOKENIZER
    TOKENIZER = tokenizer_gguf


def _export(artifact, out, **kw):
    return b2s.export(artifact, "gguf", out, tokenizer_from=TOKENIZER, **kw)


def test_symmetric_4bit_g32_exports_as_q4_0_and_transformers_reads_our_model_exactly(make_artifact, tmp_path, inputs):
    artifact = make_artifact("uniform", bits=4, group_size=32, symmetric=True)
    out = tmp_path / "m.gguf"
    report = _export(artifact, out)
    assert not report.requantised and report.bytes == out.stat().st_size
    reader = gguf.GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q4_0" and types["blk.1.ffn_down.weight"] == "Q4_0"
    assert types["token_embd.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied to token_embd, as llama.cpp expects
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.")}
    assert fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.feed_forward_length"] == 96 and fields["llama.rope.dimension_count"] == 16
    source = gguf.GGUFReader(str(TOKENIZER))
    assert reader.fields["tokenizer.ggml.tokens"].contents() == source.fields["tokenizer.ggml.tokens"].contents()
    assert torch.equal(_logits(out, inputs), _ours(artifact, inputs))


def test_a_tensor_without_an_exact_type_is_refused_by_name_and_nothing_is_written(make_artifact, tmp_path):
    artifact = make_artifact("uniform", bits=4, group_size=64, symmetric=True)
    with pytest.raises(Big2SmallError, match=r"no exact GGUF type \(model\.layers\.0\..*--fallback-type"):
        _export(artifact, tmp_path / "m.gguf")
    assert os.listdir(tmp_path) == []


def test_fallback_requantises_and_reports_the_sqnr_that_the_file_really_has(make_artifact, tmp_path, inputs):
    artifact = make_artifact("hyper", bits=8)
    out = tmp_path / "m.gguf"
    report = _export(artifact, out, fallback_type="q8_0")
    cm = b2s.load(artifact)
    decoded = cm.state_dict()
    requantised = {t.name: t for t in report.requantised}
    assert set(requantised) == {n for n, e in cm.tensors.items() if e.compressed}
    tensors = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    for name, row in requantised.items():
        if ".attn_q." in row.target or ".attn_k." in row.target:
            continue  # rows permuted; the others are compared in place
        back = gguf.quants.dequantize(tensors[row.target].data, tensors[row.target].tensor_type)
        w = decoded[name].double().numpy()
        measured = 10 * math.log10((w ** 2).sum() / ((w - back) ** 2).sum())
        assert row.type == "Q8_0" and row.error.sqnr_db == pytest.approx(measured, abs=1e-6)
    assert 30 < report.requantised_sqnr_db < 60  # 8-bit blocks of 32 on top of hyper's weights
    ours, theirs = _ours(artifact, inputs), _logits(out, inputs)
    assert (ours - theirs).abs().max() < 0.05 * ours.abs().max()


def test_asymmetric_offsets_that_fp16_cannot_hold_need_a_fallback(make_artifact, tmp_path):
    artifact = make_artifact("uniform", bits=4, group_size=32, symmetric=False)
    with pytest.raises(Big2SmallError, match="fp16-exact offsets"):
        _export(artifact, tmp_path / "m.gguf")
    report = _export(artifact, tmp_path / "m.gguf", fallback_type="q4_1")
    assert report.requantised and all(t.type == "Q4_1" for t in report.requantised)


def _folded(tiny_llama_dir, tmp_path, fold):
    from big2small.folding import FoldConfig

    recipe = b2s.Recipe(transforms=[FoldConfig(sparsity=None, fold_attention=False, multiple_of=32, **fold)], min_numel=1024,
                        default=b2s.GeneratorConfig.from_dict({"method": "uniform", "bits": 8, "group_size": 32, "symmetric": True}))
    artifact = tmp_path / "folded.b2s"
    b2s.save(b2s.compress(b2s.load_model(tiny_llama_dir), recipe, progress=False), artifact)
    return artifact, [t.shape[0] for n, t in b2s.load(artifact).state_dict().items() if n.endswith("gate_proj.weight")]


def test_a_folded_model_exports_at_its_new_widths(tiny_llama_dir, tmp_path, inputs):
    artifact, widths = _folded(tiny_llama_dir, tmp_path, {"ratio": 1 / 3})
    assert widths == [64, 64]
    out = tmp_path / "folded.gguf"
    _export(artifact, out)
    assert gguf.GGUFReader(str(out)).fields["llama.feed_forward_length"].contents() == 64
    assert torch.equal(_logits(out, inputs), _ours(artifact, inputs))


def test_per_layer_widths_are_refused_as_llama_cpp_cannot_run_them(tiny_llama_dir, tmp_path):
    artifact, widths = _folded(tiny_llama_dir, tmp_path, {"ratio": 1 / 3, "ratios": {r".*layers\.0\..*": 0}})
    assert widths == [96, 64]
    with pytest.raises(Big2SmallError, match=r"MLP widths differ per layer \(64\.\.96\); llama\.cpp"):
        _export(artifact, tmp_path / "folded.gguf")
    assert not (tmp_path / "folded.gguf").exists()


def test_other_architectures_are_refused(tiny_gpt2_dir, tmp_path):
    cm = b2s.compress(b2s.load_model(tiny_gpt2_dir), b2s.make_recipe("uniform", bits=8, group_size=32, symmetric=True), progress=False)
    b2s.save(cm, tmp_path / "gpt2.b2s")
    with pytest.raises(Big2SmallError, match="only LLaMA-architecture"):
        _export(tmp_path / "gpt2.b2s", tmp_path / "gpt2.gguf")
    assert not (tmp_path / "gpt2.gguf").exists()


def test_names_follow_llama_cpp():
    assert gguf_name("model.layers.12.self_attn.o_proj.weight") == "blk.12.attn_output.weight"
    assert gguf_name("model.layers.0.post_attention_layernorm.weight") == "blk.0.ffn_norm.weight"
    with pytest.raises(Big2SmallError, match="no llama.cpp name"):
        gguf_name("model.layers.0.mlp.experts.0.weight")
