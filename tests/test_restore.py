"""restore() builds the skeleton on the meta device and fills it one tensor at a time: the outputs
are those of the original model with the decoded weights loaded the plain way, tied weights stay
tied, buffers no artifact holds (rotary frequencies, position ids) are right, on-the-fly and
fused layers never decode their weight while restoring, and the peak memory is the restored
model plus about one tensor, not a dense copy beside it."""

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import big2small as b2s
import big2small.generators as generators
from big2small.compact import CompactLinear
from big2small.errors import Big2SmallError

RECIPE = dict(bits=4, group_size=64, min_numel=256, include_embeddings=True)


def _llama(tied, **sizes):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    shape = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=64) | sizes
    return LlamaForCausalLM(LlamaConfig(**shape, tie_word_embeddings=tied)).eval()


def _bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=90, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                intermediate_size=48, max_position_embeddings=40)).eval()


def _artifact(model, tmp_path, **recipe):
    model.save_pretrained(tmp_path / "model")
    cm = b2s.compress(b2s.load_model(tmp_path / "model"), "uniform", progress=False, **(RECIPE | recipe))
    b2s.save(cm, tmp_path / "a.b2s")
    return cm


def _plainly_loaded(model, cm):
    """The original model with the decoded weights copied in by load_state_dict (no fill)."""
    dense = copy.deepcopy(model)
    dense.load_state_dict(cm.state_dict(), strict=False)
    return dense.eval()


@pytest.mark.parametrize("tied", [False, True])
def test_a_restored_llama_gives_the_outputs_of_the_decoded_weights_and_stays_tied(tmp_path, tied):
    model = _llama(tied)
    cm = _artifact(model, tmp_path)
    ids = torch.arange(12)[None]
    with torch.no_grad():
        expected = _plainly_loaded(model, cm)(ids).logits
        restored = b2s.restore(tmp_path / "a.b2s")
        assert torch.equal(restored(ids).logits, expected)
        assert (restored.lm_head.weight is restored.model.embed_tokens.weight) == tied
        assert torch.equal(restored.model.rotary_emb.inv_freq, model.model.rotary_emb.inv_freq)
        assert not any(t.is_meta for t in [*restored.parameters(), *restored.buffers()])
        for options in (dict(on_the_fly=True), dict(on_the_fly=True, fused=True)):
            lazy = b2s.restore(tmp_path / "a.b2s", **options)
            torch.testing.assert_close(lazy(ids).logits, expected, rtol=1e-4, atol=1e-4)
    assert isinstance(lazy.model.layers[0].mlp.up_proj, CompactLinear)


def test_a_restored_bert_gives_the_outputs_of_the_decoded_weights(tmp_path):
    model = _bert()
    cm = _artifact(model, tmp_path)
    ids = torch.tensor([[2, 5, 9, 11, 3, 0]])
    with torch.no_grad():
        expected = _plainly_loaded(model, cm)(ids).last_hidden_state
        restored = b2s.restore(tmp_path / "a.b2s")
        assert torch.equal(restored(ids).last_hidden_state, expected)
    assert torch.equal(restored.embeddings.position_ids, model.embeddings.position_ids)  # not stored: computed


def test_on_the_fly_restore_never_decodes_a_compressed_weight(tmp_path, monkeypatch):
    cm = _artifact(_llama(False), tmp_path)
    decoded = []
    real = generators.decode
    monkeypatch.setattr("big2small.fill.decode", lambda enc: decoded.append(enc.method) or real(enc))
    for fused in (False, True):
        decoded.clear()
        b2s.restore(tmp_path / "a.b2s", on_the_fly=True, fused=fused)
        assert decoded and all(m == "raw" for m in decoded)  # norms and the like only
    assert sum(e.compressed for e in cm.tensors.values()) > 10


def test_a_skeleton_of_another_shape_is_refused_in_one_line(tmp_path):
    _artifact(_llama(False), tmp_path)
    with pytest.raises(Big2SmallError, match="does not match the artifact: .* stored"):
        b2s.restore(tmp_path / "a.b2s", skeleton=_llama(False, intermediate_size=64))


PEAK = textwrap.dedent("""
    import json, sys
    import torch, transformers, big2small as b2s
    from big2small.restore import restore

    def status(key):
        return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(key))

    restore(sys.argv[2])  # a first restore of a tiny artifact: every import and lazy init done
    open("/proc/self/clear_refs", "w").write("5")  # the peak counts from here
    base = status("VmRSS:")
    model = restore(sys.argv[1])
    print(json.dumps({"base": base, "peak": status("VmHWM:"),
                      "model": sum(p.numel() * p.element_size() for p in model.parameters())}))
""")


def test_restoring_peaks_at_the_model_plus_about_one_tensor(tmp_path):
    """A 12 M-parameter Llama (48 MB in fp32, no tensor over 2 MB) restored in a fresh process: the
    peak resident memory above what the process held before is under 1.3 times the model's fp32
    bytes (a dense skeleton plus the decoded copy, as before fill, is 2 times). glibc is told to
    give freed memory back at once, so that the figure is the live memory, not the allocator's."""
    _artifact(_llama(False, vocab_size=512, hidden_size=512, intermediate_size=1024, num_hidden_layers=6,
                     num_attention_heads=8, num_key_value_heads=4, head_dim=64), tmp_path / "big")
    _artifact(_llama(False), tmp_path / "tiny")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", PEAK, str(tmp_path / "big/a.b2s"), str(tmp_path / "tiny/a.b2s")],
                         env=env, capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["model"] > 40e6
    assert figures["peak"] - figures["base"] < 1.3 * figures["model"], figures
