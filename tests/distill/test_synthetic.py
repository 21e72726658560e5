import pytest
import torch

from big2small.distill import DistillConfig, distill_student, resolve_source, synthetic_inputs
from big2small.distill.synthetic import making_seconds
from big2small.errors import Big2SmallError
from big2small.folding import FoldConfig, fold
from helpers import peaked_llama
from tiny_models import MBConvNet, ResidualMLP, randomise_batchnorm, tiny_bert


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "cache"))


def test_text_inputs_are_cached_on_disk_and_read_back_equal(tmp_path, monkeypatch):
    model = peaked_llama()
    config = DistillConfig(samples=6, held_out=2, seq_len=12, seed=4)
    assert making_seconds(model, "causal-lm", None, config) is None  # not made yet
    first = synthetic_inputs(model, "causal-lm", None, config, progress=False)
    made = making_seconds(model, "causal-lm", None, config)
    assert made is not None and made > 0  # what making them took, kept for the runs that read them back
    files = sorted(p.suffix for p in (tmp_path / "cache" / "synthetic").iterdir())
    assert files == [".json", ".safetensors"]
    import big2small.distill.synthetic as synthetic

    def refuse(*args, **kwargs):
        raise AssertionError("made again instead of read from the cache")

    monkeypatch.setattr(synthetic, "_make", refuse)
    again = synthetic_inputs(model, "causal-lm", None, config, progress=False)
    assert sorted(first) == sorted(again) == ["attention_mask", "input_ids"]
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert making_seconds(model, "causal-lm", None, config) == made
    with pytest.raises(AssertionError, match="made again"):  # another seed is another entry
        synthetic_inputs(model, "causal-lm", None, DistillConfig(samples=6, held_out=2, seq_len=12, seed=5), progress=False)


@pytest.mark.parametrize("model, task, source, needle", [
    (tiny_bert(), "encoder", "self", "does not apply to a encoder model .*use smollm2 or random"),
    (ResidualMLP(), "image-classifier", "auto", "no BatchNorm statistics to invert: use source random"),
    (MBConvNet(), "causal-lm", "auto", "cannot generate text: use source random"),
    (MBConvNet(), "image-classifier", "self", "does not apply to a image-classifier model"),
    (MBConvNet(), "regression", "auto", "no synthetic inputs for task"),
])
def test_a_source_that_cannot_apply_is_refused_in_one_line(model, task, source, needle):
    with pytest.raises(Big2SmallError, match=needle) as info:
        resolve_source(model, task, source)
    assert "\n" not in str(info.value)


def test_auto_sources_per_task():
    assert resolve_source(peaked_llama(), "causal-lm", "auto") == "self"
    assert resolve_source(tiny_bert(), "encoder", "auto") == "smollm2"
    assert resolve_source(MBConvNet(), "image-classifier", "auto") == "inversion"


def test_random_encoder_tokens_and_gaussian_images():
    text = synthetic_inputs(tiny_bert(), "encoder", None, DistillConfig(samples=4, held_out=1, seq_len=10, source="random"),
                            progress=False)
    assert text["input_ids"].shape == (4, 10) and int(text["input_ids"].max()) < 64
    images = synthetic_inputs(ResidualMLP(), "image-classifier", None, DistillConfig(samples=4, held_out=1, source="random"),
                              example_input=torch.zeros(1, 6), progress=False)
    assert images["images"].shape == (4, 6)


def test_distill_student_repairs_a_folded_cnn_on_inverted_images():
    teacher = randomise_batchnorm(MBConvNet())
    student = fold(teacher, FoldConfig(sparsity=0.3, n_init=1), progress=False).model
    report = distill_student(teacher, student, task="image-classifier", example_input=torch.zeros(1, 3, 10, 10),
                             config=DistillConfig(steps=15, samples=16, held_out=4, batch_size=6, lr=1e-3, inversion_steps=10),
                             progress=False)
    assert report.held_out_after < report.held_out_before
    with pytest.raises(Big2SmallError, match="separate model"):
        distill_student(teacher, teacher, task="image-classifier", example_input=torch.zeros(1, 3, 10, 10), progress=False)
