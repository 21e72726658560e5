"""Fixtures of the export tests: a tiny LLaMA saved as a Hugging Face directory, and artifacts of it."""

import pytest
import torch

import big2small as b2s


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    """A tiny random LLaMA (grouped-query attention, tied embeddings, head_dim 16) as an HF directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                         tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("export") / "tiny-llama"
    LlamaForCausalLM(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def make_artifact(tiny_llama_dir, tmp_path_factory):
    """artifact(method, **options) -> the path of the tiny LLaMA compressed so (every matrix of
    at least 1024 weights; the embedding stays fp16)."""
    loaded = b2s.load_model(tiny_llama_dir)
    made = {}

    def artifact(method, **options):
        key = (method, tuple(sorted(options.items())))
        if key not in made:
            cm = b2s.compress(loaded, b2s.make_recipe(method, min_numel=1024, **options), progress=False)
            made[key] = tmp_path_factory.mktemp("artifacts") / f"{method}.b2s"
            b2s.save(cm, made[key])
        return made[key]

    return artifact


@pytest.fixture(scope="module")
def inputs():
    torch.manual_seed(1)
    return torch.randint(0, 128, (2, 16))


@pytest.fixture(scope="module")
def tokenizer_gguf(tmp_path_factory):
    """A GGUF file holding only a small byte-level BPE tokenizer's metadata (128 tokens), the
    tokenizer the tiny LLaMA's GGUF export copies (SmolLM2's 49k tokens take seconds to parse)."""
    import gguf

    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([f"t{i}" for i in range(128)])
    writer.add_token_types([gguf.TokenType.NORMAL] * 128)
    writer.add_token_merges([])
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
