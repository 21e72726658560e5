"""`big2small eval --bos` and `bench --bos`, and the refusal to guess a start token, as a user runs them.

The model is a tiny random Llama saved with a word-level tokenizer whose id 0 is <pad> and whose
<bos> is id 2, the case where a hard-wired id 0 silently gave a wrong perplexity.
"""

import json

import pytest
import torch
from test_cli import assert_one_line_error, run

WORDS = "the of and in to a was is for as on by with he that at from his it an".split()
SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")


def save_word_tokenizer(path, *, bos_token):
    """A word-level tokenizer (<pad> 0, <unk> 1, <bos> 2, <eos> 3, then WORDS) saved in `path`; returns its vocabulary."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIALS, *WORDS])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    roles = {"pad_token": "<pad>", "unk_token": "<unk>", "eos_token": "<eos>"}
    PreTrainedTokenizerFast(tokenizer_object=backend, **roles, **({"bos_token": bos_token} if bos_token else {})
                            ).save_pretrained(path)
    return vocab


def save_tiny_causal_lm(path, *, bos_token, config_bos, hidden=16, positions=64):
    """A random LlamaForCausalLM and its word-level tokenizer (save_word_tokenizer)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = save_word_tokenizer(path, bos_token=bos_token)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=positions,
                         initializer_range=0.5, pad_token_id=0, bos_token_id=config_bos, eos_token_id=3)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture
def pad_first_lm(tmp_path):
    return save_tiny_causal_lm(tmp_path / "pad-first", bos_token="<bos>", config_bos=2)


def perplexity_row(path):
    return next(m for m in json.loads(path.read_text())["metrics"] if m["metric"] == "perplexity")


def eval_perplexity(model, tmp_path, *bos_args):
    out = tmp_path / "eval.json"
    r = run("eval", model, "--windows", "2", "--context", "16", *bos_args, "--json", out)
    assert r.returncode == 0, r.stderr
    return r, perplexity_row(out)


def test_eval_takes_the_start_token_from_the_tokenizer(pad_first_lm, tmp_path):
    r, row = eval_perplexity(pad_first_lm, tmp_path)
    assert row["protocol"]["bos_token_id"] == 2 and row["protocol"]["bos_token"] == "<bos>"
    assert row["protocol"]["bos_source"] == "tokenizer bos_token"
    assert "id 2 '<bos>'" in r.stdout


def test_eval_bos_overrides_the_start_token(pad_first_lm, tmp_path):
    _, own = eval_perplexity(pad_first_lm, tmp_path)
    _, zero = eval_perplexity(pad_first_lm, tmp_path, "--bos", "0")
    _, none = eval_perplexity(pad_first_lm, tmp_path, "--bos", "none")
    assert zero["protocol"]["bos_token_id"] == 0 and zero["protocol"]["bos_source"] == "as given"
    assert none["protocol"]["bos_token_id"] is None and none["protocol"]["bos"] == "none"
    assert none["protocol"]["positions_per_window"] == 16 and own["protocol"]["positions_per_window"] == 17
    assert len({own["value"], zero["value"], none["value"]}) == 3


def test_eval_refuses_a_start_token_that_is_the_pad_token(tmp_path):
    model = save_tiny_causal_lm(tmp_path / "no-bos", bos_token=None, config_bos=0)
    assert_one_line_error(run("eval", model, "--windows", "2", "--context", "16"), "pad or unk token")
    _, row = eval_perplexity(model, tmp_path, "--bos", "2")
    assert row["protocol"]["bos_token_id"] == 2


def test_eval_refuses_a_bad_bos_value(pad_first_lm):
    assert_one_line_error(run("eval", pad_first_lm, "--windows", "2", "--context", "16", "--bos", "bos"),
                          "token id or none")


def test_bench_passes_bos_to_every_perplexity(tmp_path):
    # bench's context is the reference 512 tokens; hidden 64 gives weights big enough to compress.
    model = save_tiny_causal_lm(tmp_path / "lm", bos_token="<bos>", config_bos=2, hidden=64, positions=520)
    out = tmp_path / "bench"
    r = run("bench", model, "--config", "uniform:bits=8", "--no-matched", "--windows", "2", "--bos", "0",
            "--out-dir", out)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "bench.json").read_text())
    assert report["protocols"]["perplexity"]["bos_token_id"] == 0
    assert [row["method"] for row in report["rows"]] == ["fp32", "uniform"]
