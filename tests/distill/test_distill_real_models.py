"""Distillation on the bundled pretrained models (slow: loads them)."""

import pytest
import torch

import big2small as b2s
from big2small.distill import DistillConfig, distill_student, resolve_source
from big2small.errors import Big2SmallError
from big2small.folding import FoldConfig, fold


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "cache"))


@pytest.mark.slow
def test_folded_minilm_repaired_on_random_tokens_lowers_the_held_out_loss():
    loaded = b2s.load_model("minilm")
    student = fold(loaded.model, FoldConfig(sparsity=0.2, norm_repair="lsq", repair="naive", n_init=1), progress=False).model
    report = distill_student(loaded.model, student, task="encoder", tokenizer=loaded.tokenizer, progress=False,
                             config=DistillConfig(steps=20, samples=48, held_out=8, seq_len=32, source="random", lr=1e-4))
    assert report.held_out_after < 0.8 * report.held_out_before
    with pytest.raises(Big2SmallError, match="use smollm2 or random"):
        resolve_source(loaded.model, "encoder", "self")


@pytest.mark.slow
def test_smollm2_samples_readable_text_from_its_own_start_token():
    from big2small.distill.synthetic import synthetic_inputs

    loaded = b2s.load_model("smollm2")
    inputs = synthetic_inputs(loaded.model, "causal-lm", loaded.tokenizer,
                              DistillConfig(samples=2, held_out=1, seq_len=24), progress=False)
    assert bool((inputs["input_ids"][:, 0] == 0).all())  # <|endoftext|>, the start token perplexity uses
    words = loaded.tokenizer.batch_decode(inputs["input_ids"][:, 1:].tolist())
    assert all(len(w.split()) >= 5 for w in words)  # text, not a run of special tokens
    with torch.no_grad():  # the model finds its own text likely: far below the uniform 10.8 nats per token
        logits = loaded.model(inputs["input_ids"]).logits[:, :-1]
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), inputs["input_ids"][:, 1:].reshape(-1))
    assert float(nll) < 5.0
