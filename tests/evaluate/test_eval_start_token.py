"""The perplexity start token comes from the model's tokenizer and config, never a hard-wired id 0.

Tiny word-level tokenizers built locally put ``<pad>`` at id 0 and ``<bos>`` elsewhere, as many
real tokenizers do; tiny randomly initialised Llama/GPT-2 models show the figure follows the choice.
"""

from __future__ import annotations

import pytest
import torch

from big2small.errors import Big2SmallError
from big2small.evaluate import perplexity
from big2small.evaluate.perplexity import start_token

WORDS = [f"w{i}" for i in range(40)]
TEXT = " ".join(WORDS[(i * 7 + i // 5) % len(WORDS)] for i in range(400))
PAD_FIRST = ("<pad>", "<unk>", "<bos>", "<eos>")  # ids 0, 1, 2, 3
ROLES = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<bos>", "eos_token": "<eos>"}


def word_tokenizer(specials=PAD_FIRST, words=WORDS, **roles):
    """A word-level fast tokenizer: ``specials`` then ``words``, in id order; ``roles`` as
    PreTrainedTokenizerFast takes them (pad_token="<pad>", ...)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*specials, *words])}
    backend = Tokenizer(WordLevel(vocab, unk_token=roles.get("unk_token")))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, **roles)


def llama_config(**overrides):
    from transformers import LlamaConfig

    settings = dict(vocab_size=len(PAD_FIRST) + len(WORDS), hidden_size=16, intermediate_size=32,
                    num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                    max_position_embeddings=64, initializer_range=0.5,
                    pad_token_id=0, bos_token_id=2, eos_token_id=3)
    return LlamaConfig(**{**settings, **overrides})


def tiny_llama(**overrides):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(llama_config(**overrides)).eval()


def hf_mean_nll(model, windows: torch.Tensor) -> float:
    """The model's own mean token NLL (nats) over a batch of input windows."""
    with torch.no_grad():
        return float(model(input_ids=windows, labels=windows).loss)


def test_start_token_is_the_tokenizers_bos_not_id_0():
    assert start_token(word_tokenizer(**ROLES), llama_config()) == (2, "tokenizer bos_token")


def test_perplexity_follows_the_chosen_start_token():
    model, tok = tiny_llama(), word_tokenizer(**ROLES)
    text_ids = torch.tensor(tok(TEXT, add_special_tokens=False)["input_ids"][:64]).view(4, 16)
    results = {}
    for start in (None, 0):
        r = perplexity(model, tok, TEXT, context=16, windows=4, bos_token_id=start, progress=False)
        used = r.protocol["bos_token_id"]
        inputs = torch.cat([torch.full((4, 1), used), text_ids], dim=1)
        assert r.mean_nll == pytest.approx(hf_mean_nll(model, inputs), rel=1e-5)
        results[used] = r
    assert set(results) == {2, 0}
    assert results[2].protocol["bos_token"] == "<bos>" and results[0].protocol["bos_source"] == "as given"
    # The same text and weights: only the start token differs, and so does the figure.
    assert abs(results[2].mean_nll - results[0].mean_nll) > 1e-3


def test_no_start_token_scores_plain_windows():
    model, tok = tiny_llama(), word_tokenizer(**ROLES)
    r = perplexity(model, tok, TEXT, context=16, windows=4, bos_token_id="none", progress=False)
    assert r.protocol["bos"] == "none" and r.protocol["bos_token_id"] is None
    assert r.tokens_scored == 4 * 15
    text_ids = torch.tensor(tok(TEXT, add_special_tokens=False)["input_ids"][:64]).view(4, 16)
    assert r.mean_nll == pytest.approx(hf_mean_nll(model, text_ids), rel=1e-5)


def test_config_bos_that_is_the_pad_token_is_refused():
    tok = word_tokenizer(pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")  # no bos_token
    with pytest.raises(Big2SmallError, match=r"id 0 \('<pad>'\), the tokenizer's pad or unk token.*--bos"):
        start_token(tok, llama_config(bos_token_id=0))
    with pytest.raises(Big2SmallError, match="--bos"):
        perplexity(tiny_llama(bos_token_id=0), tok, TEXT, context=16, windows=2, progress=False)


def test_architecture_that_needs_a_start_token_and_names_none_is_refused():
    tok = word_tokenizer(pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    with pytest.raises(Big2SmallError, match="llama models are trained with a start token.*--bos"):
        start_token(tok, llama_config(bos_token_id=None))


def test_tokenizer_and_config_that_disagree_are_refused():
    with pytest.raises(Big2SmallError, match="bos_token_id 2 and the config's 1 differ"):
        start_token(word_tokenizer(**ROLES), llama_config(bos_token_id=1))


def test_gpt2_convention_is_its_end_of_text_token():
    from transformers import GPT2Config

    tok = word_tokenizer(pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    config = GPT2Config(vocab_size=len(tok), bos_token_id=None, eos_token_id=3)
    token_id, source = start_token(tok, config)
    assert token_id == 3 and "gpt2 convention" in source


def test_nothing_named_and_no_convention_means_no_start_token():
    tok = word_tokenizer(pad_token="<pad>", unk_token="<unk>")
    assert start_token(tok, None)[0] is None


@pytest.mark.parametrize("override, expected", [("none", None), (" None ", None), ("5", 5), (0, 0)])
def test_override_wins_over_everything(override, expected):
    assert start_token(word_tokenizer(**ROLES), llama_config(), override)[0] == expected


@pytest.mark.parametrize("override, message", [("x", "token id or none"), ("44", "outside the vocabulary of 44"),
                                               (-1, "outside the vocabulary")])
def test_bad_override_is_refused(override, message):
    with pytest.raises(Big2SmallError, match=message):
        start_token(word_tokenizer(**ROLES), llama_config(), override)


SMOLLM2_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# What SmolLM2-135M-Instruct's tokenizer declares (checked on the GGUF-loaded one).
SMOLLM2_ROLES = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
                 "pad_token": "<|im_end|>"}


def test_smollm2_keeps_its_document_separator_explicitly():
    words = [f"w{i}" for i in range(49152 - 3)]
    tok = word_tokenizer(SMOLLM2_SPECIALS, words, **SMOLLM2_ROLES)
    token_id, source = start_token(tok, llama_config(vocab_size=49152, pad_token_id=2, bos_token_id=1))
    assert token_id == 0 and "SmolLM2" in source and "<|im_start|>" in source


def test_the_smollm2_rule_is_not_applied_to_other_vocabularies():
    tok = word_tokenizer(SMOLLM2_SPECIALS, WORDS, **SMOLLM2_ROLES)
    assert start_token(tok, llama_config(vocab_size=len(tok), bos_token_id=1)) == (1, "tokenizer bos_token")
