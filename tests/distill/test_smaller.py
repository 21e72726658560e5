"""Distillation into fewer layers (big2small.transforms.layers, big2small.distill.smaller)."""

import copy

import pytest
import torch

import big2small as b2s
from big2small.compress import compress
from big2small.distill import DistillConfig
from big2small.distill.loop import forward
from big2small.distill.smaller import fewer_layers
from big2small.errors import Big2SmallError
from big2small.recipe import Recipe
from big2small.transforms.layers import block_influence, drop_layers, even_keep, influence_keep
from tiny_models import MBConvNet

TINY = dict(samples=24, held_out=6, batch_size=6, seq_len=16)


def deep_llama(layers=4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)  # peaked outputs: something to distil
    return model


def deep_bert(layers=4):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                        num_attention_heads=4, max_position_embeddings=64)
    model = BertModel(config).eval()
    with torch.no_grad():  # layers that move the residual stream: something to distil
        for layer in model.encoder.layer:
            layer.output.dense.weight.mul_(8)
    return model


def _silence(block):
    """Make a LLaMA block add nothing to the residual stream."""
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()


@pytest.mark.parametrize("n,drop", [(30, 6), (6, 2), (5, 4), (4, 0), (2, 1)])
def test_even_dropping_keeps_the_right_count_spread_through_the_stack(n, drop):
    keep = even_keep(n, drop)
    assert len(keep) == n - drop and keep == sorted(set(keep)) and all(0 <= i < n for i in keep)
    if n - drop >= 2:
        assert keep[0] == 0 and keep[-1] == n - 1


def test_counts_outside_the_stack_are_refused():
    with pytest.raises(Big2SmallError, match="can drop 0 to 3 of the model's 4 layers, not 4"):
        even_keep(4, 4)
    assert influence_keep([0.3, 0.1, 0.2, 0.4], 2) == [0, 3]


def test_a_block_that_adds_nothing_has_the_least_influence_and_dropping_it_changes_nothing():
    teacher = deep_llama()
    _silence(teacher.model.layers[2])
    ids = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    influence = block_influence(teacher, [batch], forward)
    assert influence[2] == pytest.approx(0, abs=1e-6) and min(influence[:2] + influence[3:]) > 1e-3
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = drop_layers(teacher, influence_keep(influence, 1))
    assert len(student.model.layers) == student.config.num_hidden_layers == 3
    assert [b.self_attn.layer_idx for b in student.model.layers] == [0, 1, 2]  # the KV cache's slots
    with torch.no_grad():
        torch.testing.assert_close(student(**batch).logits, teacher(**batch).logits, rtol=1e-4, atol=1e-4)
        assert student.generate(ids[:, :4], attention_mask=torch.ones_like(ids[:, :4]), max_new_tokens=3,
                                do_sample=False).shape == (3, 7)
    assert len(teacher.model.layers) == 4 and all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("make,task,source", [(deep_llama, "causal-lm", "auto"), (deep_bert, "encoder", "random")])
def test_distilling_the_smaller_model_lowers_its_held_out_loss(make, task, source, tmp_path, monkeypatch):
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path))
    teacher = make()
    tokenizer = None if task == "causal-lm" else _bert_tokenizer()
    student, record, report = fewer_layers(teacher, 2, criterion="influence", task=task, tokenizer=tokenizer,
                                           config=DistillConfig(steps=25, lr=1e-3, source=source, **TINY), progress=False)
    assert len(record.kept) == 2 and record.layers_before == 4 and len(record.influence) == 4
    assert record.parameters_after < record.parameters_before
    assert sum(p.numel() for p in student.parameters()) == record.parameters_after
    assert report.held_out_after < 0.8 * report.held_out_before


def _bert_tokenizer():
    class Tokenizer:  # what random tokens need: the special ids to avoid and frame with
        all_special_ids = [0, 1, 2]
        cls_token_id, sep_token_id = 1, 2
    return Tokenizer()


def test_the_artifact_restores_the_smaller_architecture_and_counts_bits_against_the_original(tmp_path):
    teacher = deep_llama()
    student, record, _ = fewer_layers(teacher, 1, criterion="even", task="causal-lm",
                                      config=DistillConfig(steps=0, **TINY), progress=False)
    cm = compress(student, Recipe(default=None, raw_dtype="float32", min_numel=0), transforms=[record],
                  n_parameters=record.parameters_before, progress=False)
    assert cm.size().bpw_all == pytest.approx(32 * record.parameters_after / record.parameters_before, rel=1e-3)
    b2s.save(cm, tmp_path / "s.b2s")
    restored = b2s.load(tmp_path / "s.b2s").apply_to(copy.deepcopy(teacher)).eval()  # the original's skeleton
    assert len(restored.model.layers) == 3 and restored.config.num_hidden_layers == 3
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        assert torch.equal(restored(ids).logits, student(ids).logits)


def test_a_model_without_a_stack_of_blocks_is_refused_in_one_line():
    with pytest.raises(Big2SmallError, match="layer dropping supports Hugging Face decoder and encoder transformers"):
        fewer_layers(MBConvNet(), 1, criterion="even", task="image-classifier", config=DistillConfig(steps=0, **TINY))


def test_a_decompressed_layer_dropped_artifact_loads_with_from_pretrained_as_restore_gives_it(tmp_path):
    """decompress writes the config of the model stored (its block count, and per-block lists such
    as layer_types cut to the kept blocks), not the original's: from_pretrained of the directory
    loads every weight and gives restore's outputs; so does export --to hf's directory."""
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, use_sliding_window=True, sliding_window=3,
                         max_window_layers=2)  # blocks 0, 1 full attention; 2, 3 sliding: the kept ones differ
    Qwen2ForCausalLM(config).save_pretrained(tmp_path / "teacher")
    loaded = b2s.load_model(tmp_path / "teacher")
    student, record, _ = fewer_layers(loaded.model, 2, criterion="even", task="causal-lm",
                                      config=DistillConfig(steps=0, **TINY), progress=False)
    cm = compress(student, "uniform", bits=4, group_size=16, min_numel=0, source=loaded.source, transforms=[record],
                  n_parameters=record.parameters_before, progress=False)
    b2s.save(cm, tmp_path / "s.b2s")
    b2s.decompress(tmp_path / "s.b2s", tmp_path / "dense", max_shard_bytes=10**9)

    dense, info = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert dense.config.num_hidden_layers == len(dense.model.layers) == 2 and record.kept == [0, 3]
    assert dense.config.layer_types == [config.layer_types[i] for i in record.kept] == ["full_attention",
                                                                                         "sliding_attention"]
    from big2small.export import export

    export(tmp_path / "s.b2s", "hf", tmp_path / "exported", dtype="float32")  # the same config, by restore
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    assert exported.config.layer_types == dense.config.layer_types
    restored = b2s.restore(tmp_path / "s.b2s")
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(dense.eval()(ids).logits, restored.eval()(ids).logits, rtol=0, atol=1e-6)
        torch.testing.assert_close(exported.eval()(ids).logits, restored(ids).logits, rtol=0, atol=1e-6)
