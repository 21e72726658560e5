"""Quantisation-aware distillation (big2small.distill.qat): the codec's scales trained through
its rounding, the codes re-chosen with them, the stored form a valid artifact of the same size."""

import copy

import pytest
import torch

import big2small as b2s
from big2small.compress import compress
from big2small.distill import DistillConfig, distill, loss_for
from big2small.distill.qat import distill_codecs, student_of, trainable
from big2small.distill.text import sample_text
from big2small.errors import Big2SmallError
from big2small.generators import decode, generator_for
from big2small.generators.hyper import HyperConfig
from big2small.generators.trellis import TrellisConfig
from big2small.generators.uniform import UniformConfig
from helpers import peaked_llama

CODECS = [UniformConfig(bits=3, group_size=32), UniformConfig(bits=3, group_size=0, symmetric=True, rotate="input"),
          HyperConfig(bits=6, group_size=32), HyperConfig(bits=6, codebook="winding", rings=3),
          TrellisConfig(bits=2, state_bits=8)]
# Uniform re-chooses the same codes for the same scales; hyper's encoder keeps, in a few groups
# whose scale an outlier search changed, codes that are not the nearest under that scale (and
# re-choosing them lowers the error); trellis keeps its codes.
SAME_START = (UniformConfig, TrellisConfig)
TINY = dict(samples=24, held_out=6, batch_size=6, seq_len=16)


def _encoded(config, rows: int):
    """A seeded random [rows, 96] weight encoded by `config`'s codec: its generator, the encoding and
    the codec's input matrix."""
    torch.manual_seed(0)
    weight = torch.randn(rows, 96)
    generator = generator_for(config)
    enc = generator.encode(weight, seed=3)
    return generator, enc, generator.codec_input(weight, enc)


@pytest.mark.parametrize("config", CODECS, ids=lambda c: f"{c.method}-{c.rotate}-{getattr(c, 'rings', 0)}")
def test_re_encoding_with_other_scales_keeps_the_bits_and_decodes_to_the_differentiable_quantiser(config):
    generator, enc, matrix = _encoded(config, rows=48)
    scales = (enc.tensors["scales"].float() * torch.linspace(0.8, 1.2, enc.tensors["scales"].numel())).half().float()
    scales.requires_grad_(True)
    fake = generator.weight_domain(generator.fake_quantize(matrix, enc, scales), enc)
    fake.pow(2).sum().backward()
    again = generator.requantize(matrix, enc, scales.detach())
    type(generator).check_stored(again)  # a valid record of its codec: arrays, dtypes, bits
    assert again.total_bits == enc.total_bits and again.bits == enc.bits
    assert torch.equal(decode(again), fake.detach())  # bit for bit what training computed
    assert scales.grad is not None and bool(scales.grad.abs().sum() > 0)  # straight-through gradients reach the scales
    if isinstance(config, SAME_START):
        start = generator.fake_quantize(matrix, enc, enc.tensors["scales"].float())
        assert torch.equal(generator.weight_domain(start, enc), decode(enc))


def _text(model, n=24, seq_len=16):
    ids = sample_text(model, samples=n, seq_len=seq_len, start_token_id=1, seed=0, progress=False)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("method,options", [("uniform", dict(bits=2, group_size=32)), ("trellis", dict(bits=2, state_bits=8))])
def test_training_the_scales_lowers_the_loss_and_the_artifact_is_the_trained_student(method, options):
    teacher = peaked_llama()
    cm = compress(teacher, method, min_numel=0, progress=False, **options)
    names = trainable(cm.tensors, cm.aliases)
    assert names and all(cm.tensors[n].compressed for n in names)
    student, trained = student_of(teacher, cm.tensors, names)
    assert [p for p in student.parameters() if p.requires_grad] == [t.params["log_gain"] for t in trained.values()]
    inputs = _text(teacher)
    # A rotated trellis undoes its rotation before the scaling (Generator.train_cache): the same
    # weights up to fp32 rounding; every other codec's bit for bit.
    same = torch.equal if method != "trellis" else (lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max())))
    with torch.no_grad():  # before training, the student is the compressed model
        restored = cm.apply_to(copy.deepcopy(teacher))
        assert same(student(**inputs).logits, restored(**inputs).logits)
    report = distill(teacher, student, inputs, loss_for("causal-lm"), DistillConfig(steps=25, lr=1e-2, **TINY),
                     progress=False)
    assert report.held_out_after < 0.8 * report.held_out_before
    for name, scales in trained.items():
        again = scales.retrained()
        assert again.total_bits == cm.tensors[name].total_bits
        assert not torch.equal(again.tensors["scales"], cm.tensors[name].tensors["scales"])
        module_name, _, attr = name.rpartition(".")
        with torch.no_grad():
            assert same(decode(again), getattr(student.get_submodule(module_name), attr))


@pytest.mark.parametrize("config", [TrellisConfig(bits=2, state_bits=8, rotate="none"), TrellisConfig(bits=2, state_bits=8),
                                    TrellisConfig(bits=2, state_bits=8, group_size=32)], ids=["none", "input", "input-g32"])
def test_trellis_training_from_its_cached_values_computes_the_decoded_weight(config):
    generator, enc, matrix = _encoded(config, rows=24)
    gain = torch.linspace(-0.2, 0.2, enc.tensors["scales"].numel(), requires_grad=True)
    cached = generator.train_weight(matrix, enc, {"log_gain": gain}, generator.train_cache(matrix, enc))
    cached.pow(2).sum().backward()
    decoded = decode(generator.train_encode(matrix, enc, {"log_gain": gain.detach()}))
    rebuilt = generator.weight_domain(generator.train_decode(matrix, enc, {"log_gain": gain.detach()}), enc)
    assert torch.equal(decoded, rebuilt)  # the default path is the decoder, bit for bit
    if config.rotate == "input" and config.group_size == 0:  # the rotation undone first: rounding apart
        assert torch.allclose(cached, decoded, rtol=1e-5, atol=1e-6) and not torch.equal(cached, decoded)
    else:
        assert torch.equal(cached.detach(), decoded)
    assert gain.grad is not None and bool(gain.grad.abs().min() > 0)  # every scale gets a gradient


def test_compress_with_distill_stores_the_same_bits_records_it_and_restores(tmp_path, monkeypatch):
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "cache"))
    teacher = peaked_llama()
    options = dict(bits=2, group_size=32, min_numel=0, progress=False)
    plain = compress(teacher, "hyper", **options)
    cm = compress(teacher, "hyper", distill=DistillConfig(steps=20, lr=1e-2, **TINY), **options)
    assert {n: e.total_bits for n, e in cm.tensors.items()} == {n: e.total_bits for n, e in plain.tensors.items()}
    record = cm.transforms[-1]
    assert record.kind == "distill" and record.trained.startswith("scales of") and record.steps == 20
    assert record.held_out_after < record.held_out_before
    b2s.save(cm, tmp_path / "m.b2s")
    loaded = b2s.load(tmp_path / "m.b2s")
    assert [t.kind for t in loaded.transforms] == ["distill"] and loaded.transforms[0].trained == record.trained
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in cm.state_dict().items())


def test_what_has_no_scales_is_refused_in_one_line():
    teacher = peaked_llama()
    with pytest.raises(Big2SmallError, match="trains the scales of uniform, hyper or trellis codes or the INR.* use lowrank"):
        compress(teacher, "lowrank", rank=2, min_numel=0, progress=False, distill=DistillConfig(steps=1, **TINY))
    with pytest.raises(Big2SmallError, match="needs the model's structure"):
        compress(teacher.state_dict(), "uniform", progress=False, distill=DistillConfig(steps=1, **TINY))
    with pytest.raises(Big2SmallError, match="does not apply to a causal-lm model"):
        compress(teacher, "uniform", progress=False, distill=DistillConfig(steps=1, source="inversion", **TINY))


def test_distill_codecs_refuses_tensors_with_nothing_to_train():
    teacher = peaked_llama()
    cm = compress(teacher, "uniform", bits=4, min_numel=10**9, progress=False)  # everything kept raw
    with pytest.raises(Big2SmallError, match="compressed tensors use none"):
        distill_codecs(teacher, teacher, cm.tensors, cm.aliases, task="causal-lm", config=DistillConfig(steps=1, **TINY),
                       inputs=_text(teacher))


def test_train_vectors_trains_the_raw_norm_gains_in_their_stored_dtype_with_the_same_bits():
    teacher = peaked_llama()
    cm = compress(teacher, "uniform", bits=2, group_size=32, min_numel=0, progress=False)
    names = trainable(cm.tensors, cm.aliases, vectors=True)
    vectors = [n for n in names if not cm.tensors[n].compressed]
    assert vectors and all(len(cm.tensors[n].layout.shape) == 1 for n in vectors)
    assert [n for n in names if cm.tensors[n].compressed] == trainable(cm.tensors, cm.aliases)  # scales as before
    student, trained = student_of(teacher, cm.tensors, names)
    inputs = _text(teacher)
    with torch.no_grad():  # before training, the student is still the compressed model exactly
        assert torch.equal(student(**inputs).logits, cm.apply_to(copy.deepcopy(teacher))(**inputs).logits)
    report = distill(teacher, student, inputs, loss_for("causal-lm"), DistillConfig(steps=25, lr=1e-2, **TINY),
                     progress=False)
    assert report.held_out_after < report.held_out_before
    for name in vectors:
        again = trained[name].retrained()
        old = cm.tensors[name]
        assert again.total_bits == old.total_bits and again.tensors["values"].dtype == old.tensors["values"].dtype
        with torch.no_grad():  # the artifact holds exactly what the trained student computed
            assert torch.equal(decode(again), _weight_of(student, name))
    assert any(not torch.equal(trained[n].retrained().tensors["values"], cm.tensors[n].tensors["values"]) for n in vectors)


def test_compress_with_distill_and_train_vectors_keeps_every_tensors_bits(tmp_path, monkeypatch):
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "cache"))
    teacher = peaked_llama()
    options = dict(bits=2, group_size=32, min_numel=0, progress=False)
    plain = compress(teacher, "uniform", **options)
    cm = compress(teacher, "uniform", distill=DistillConfig(steps=10, lr=1e-2, train_vectors=True, **TINY), **options)
    assert {n: e.total_bits for n, e in cm.tensors.items()} == {n: e.total_bits for n, e in plain.tensors.items()}
    assert "scales of" in cm.transforms[-1].trained and "values of" in cm.transforms[-1].trained
    changed = [n for n, e in cm.tensors.items() if not e.compressed and not torch.equal(e.tensors["values"], plain.tensors[n].tensors["values"])]
    assert changed and all(len(cm.tensors[n].layout.shape) == 1 for n in changed)  # only vectors were trained
    # Their own learning rate (vector_lr), far below fp16's resolution here: they stay as stored, the scales train.
    slow = compress(teacher, "uniform", distill=DistillConfig(steps=10, lr=1e-2, train_vectors=True, vector_lr=1e-9, **TINY),
                    **options)
    assert all(torch.equal(slow.tensors[n].tensors["values"], plain.tensors[n].tensors["values"]) for n in changed)
    assert any(not torch.equal(e.tensors["scales"], plain.tensors[n].tensors["scales"]) for n, e in slow.tensors.items() if e.compressed)
    with pytest.raises(Big2SmallError, match="train_vectors must be true or false"):
        DistillConfig(train_vectors="yes").validate()


@pytest.mark.parametrize("config", [UniformConfig(bits=3, group_size=32), HyperConfig(bits=6, group_size=32)],
                         ids=lambda c: c.method)
def test_scales_too_small_grow_back_when_trained_on_the_weight_error(config):
    # Most weights are clipped at half their scale: their straight-through gradient must say that
    # a larger scale brings their decoded value closer (a clipped value grows with its scale).
    torch.manual_seed(0)
    weight = torch.randn(32, 64)
    generator = generator_for(config)
    enc = generator.encode(weight)
    matrix = generator.codec_input(weight, enc)
    gain = torch.zeros(enc.tensors["scales"].numel(), requires_grad=True)
    start = enc.tensors["scales"].float() * 0.5
    optimizer = torch.optim.Adam([gain], lr=0.02)
    errors = []
    for _ in range(40):
        error = (generator.fake_quantize(matrix, enc, start * gain.exp()) - matrix).pow(2).sum()
        optimizer.zero_grad()
        error.backward()
        optimizer.step()
        errors.append(float(error))
    assert errors[-1] < 0.5 * errors[0] and float(gain.mean()) > 0.2


# ---- the INR: its SIRENs' parameters trained on the teacher's outputs ---------------------------

INR_FAST = dict(bits_per_weight=4.0, steps=60, lr=3e-3, min_numel=0, progress=False)


def _weight_of(student, name):
    module_name, _, attr = name.rpartition(".")
    return getattr(student.get_submodule(module_name), attr)


@pytest.mark.parametrize("options", [{}, {"phi_bits": 8, "residual_bits": 2, "bits_per_weight": 5.0}, {"phi_bits": 32, "outlier_frac": 0.0, "bits_per_weight": 6.0}],
                         ids=["fp16-phi", "int8-phi+residual", "fp32-phi"])
def test_the_inr_distilled_lowers_the_held_out_loss_and_its_artifact_is_the_trained_student(options):
    teacher = peaked_llama()
    cm = compress(teacher, "inr", **{**INR_FAST, **options})
    names = trainable(cm.tensors, cm.aliases)
    assert names and all(cm.tensors[n].method == "inr" and cm.tensors[n].meta["width"] > 0 for n in names)
    student, trained = student_of(teacher, cm.tensors, names)
    assert {n for t in trained.values() for n in t.params} >= {"phi", "mean_shift", "log_spread"}
    inputs = _text(teacher)
    if options.get("phi_bits", 16) != 8:  # int8 parameters are re-quantised from their dequantised values
        with torch.no_grad():  # before training, the student is the compressed model
            restored = cm.apply_to(copy.deepcopy(teacher))
            assert torch.equal(student(**inputs).logits, restored(**inputs).logits)
    report = distill(teacher, student, inputs, loss_for("causal-lm"), DistillConfig(steps=25, lr=1e-3, **TINY),
                     progress=False)
    assert report.held_out_after < 0.8 * report.held_out_before
    for name, codec in trained.items():
        again = codec.retrained()  # checks the record against its codec's stored form
        before = cm.tensors[name]
        assert again.total_bits == before.total_bits and again.bits == before.bits
        assert {k: (v.dtype, v.shape) for k, v in again.tensors.items()} == \
            {k: (v.dtype, v.shape) for k, v in before.tensors.items()}
        phi = "phi" if "phi" in again.tensors else "phi_codes"
        assert not torch.equal(again.tensors[phi], before.tensors[phi])
        for part in ("row_perm", "col_perm", "residual_codes"):  # what is not trained stays as encoded
            if part in before.tensors:
                assert torch.equal(again.tensors[part], before.tensors[part])
        with torch.no_grad():
            assert torch.equal(decode(again), _weight_of(student, name))  # bit for bit the trained student


def test_compress_with_distill_trains_the_inr_keeps_its_bits_and_restores(tmp_path, monkeypatch):
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "cache"))
    teacher = peaked_llama()
    plain = compress(teacher, "inr", **INR_FAST)
    cm = compress(teacher, "inr", distill=DistillConfig(steps=20, lr=1e-3, **TINY), **INR_FAST)
    assert {n: e.total_bits for n, e in cm.tensors.items()} == {n: e.total_bits for n, e in plain.tensors.items()}
    record = cm.transforms[-1]
    assert record.trained.startswith("SIREN parameters of") and record.held_out_after < record.held_out_before
    b2s.save(cm, tmp_path / "m.b2s")
    loaded = b2s.load(tmp_path / "m.b2s")
    assert loaded.size().bits_total == plain.size().bits_total
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in cm.state_dict().items())


def test_the_weight_loss_keeps_the_distilled_inr_nearer_its_weights():
    teacher = peaked_llama()
    cm = compress(teacher, "inr", **INR_FAST)
    names = trainable(cm.tensors, cm.aliases)
    inputs = _text(teacher)
    errors = {}
    for weight_loss in (0.0, 50.0):
        tensors, report = distill_codecs(teacher, teacher, cm.tensors, cm.aliases, task="causal-lm", inputs=inputs,
                                         config=DistillConfig(steps=25, lr=1e-3, weight_loss=weight_loss, **TINY),
                                         progress=False)
        errors[weight_loss] = sum(tensors[n].meta["rel_error"] ** 2 for n in names)
    start = sum(cm.tensors[n].meta["rel_error"] ** 2 for n in names)
    assert errors[50.0] < errors[0.0] and errors[50.0] < 1.05 * start


def test_a_weight_loss_without_a_compressed_student_and_shared_sirens_are_refused():
    teacher = peaked_llama()
    with pytest.raises(Big2SmallError, match="weight_loss weighs a compressed student's weight error"):
        distill(teacher, copy.deepcopy(teacher), _text(teacher), loss_for("causal-lm"),
                DistillConfig(steps=1, weight_loss=1.0, **TINY), progress=False)
    with pytest.raises(Big2SmallError, match="weight_loss must be a number >= 0"):
        DistillConfig(weight_loss=-1.0).validate()
    with pytest.raises(Big2SmallError, match="or the INR's SIRENs \\(not shared between layers\\); .* use inr"):
        compress(teacher, "inr", shared_layers=2, distill=DistillConfig(steps=1, **TINY), **INR_FAST)
