"""End to end on a real pretrained model: compress, save, restore from the artifact alone, measure."""

import pytest
import torch

import big2small as b2s

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm():
    return b2s.load_model("minilm")


def test_minilm_8bit_artifact_restores_with_high_fidelity(minilm, tmp_path):
    from big2small.evaluate import embedding_fidelity, lee_background_docs, sentence_embeddings

    cm = b2s.compress(minilm, "uniform", bits=8, group_size=128, progress=False)
    info = b2s.save(cm, tmp_path / "minilm.b2s")
    assert info.tensor_file_bytes * 8 <= 1.01 * cm.size().bits_total + 8 * 64 * 1024
    model = b2s.restore(tmp_path / "minilm.b2s")
    tok = b2s.models.load_tokenizer_from(b2s.load(tmp_path / "minilm.b2s").source)
    docs = lee_background_docs(40)
    ref = sentence_embeddings(minilm.model, minilm.tokenizer, docs)
    out = sentence_embeddings(model, tok, docs)
    assert embedding_fidelity(ref, out).mean_cosine > 0.999


def test_minilm_2bit_is_measurably_worse_than_8bit(minilm):
    from big2small.evaluate import embedding_fidelity, lee_background_docs, sentence_embeddings

    docs = lee_background_docs(40)
    ref = sentence_embeddings(minilm.model, minilm.tokenizer, docs)
    cos = {}
    for bits in (2, 8):
        cm = b2s.compress(minilm, "uniform", bits=bits, group_size=128, progress=False)
        model = cm.apply_to(b2s.load_model("minilm").model)
        cos[bits] = embedding_fidelity(ref, sentence_embeddings(model, minilm.tokenizer, docs)).mean_cosine
    assert cos[2] < cos[8] - 0.01
