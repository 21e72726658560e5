"""End to end on a real pretrained model: compress, save, restore from the artifact alone, measure."""

import pytest

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


def test_efficientnet_rebuilds_from_its_artifact_and_agrees(tmp_path):
    from big2small.evaluate import agreement, logits_of, photo_crops

    loaded = b2s.load_model("efficientnet-lite0")
    cm = b2s.compress(loaded, "uniform", bits=8, group_size=64, progress=False)
    assert sum(e.compressed for e in cm.plan) > 30  # its same-padding convs are Conv2d subclasses
    b2s.save(cm, tmp_path / "effnet.b2s")
    model = b2s.restore(tmp_path / "effnet.b2s")  # rebuilt by big2small's own factory, no skeleton
    crops = photo_crops(32, seed=1)
    result = agreement(logits_of(loaded.model, crops), logits_of(model, crops))
    assert result.top1_agreement >= 0.9 and result.kl_mean < 0.05


def test_smollm2_from_gguf_round_trips_through_an_artifact(tmp_path):
    from big2small.evaluate import perplexity, wiki_text
    from big2small.models.load import load_tokenizer_from

    loaded = b2s.load_model("smollm2")
    cm = b2s.compress(loaded, "uniform", bits=8, group_size=64, progress=False)
    assert cm.aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    b2s.save(cm, tmp_path / "smollm2.b2s")
    model = b2s.restore(tmp_path / "smollm2.b2s")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tok = load_tokenizer_from(b2s.load(tmp_path / "smollm2.b2s").source)
    text = wiki_text()
    ref = perplexity(loaded.model, loaded.tokenizer, text, windows=2, progress=False).ppl
    got = perplexity(model, tok, text, windows=2, progress=False).ppl
    assert abs(got - ref) / ref < 0.02
