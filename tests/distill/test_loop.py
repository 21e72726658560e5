import copy
import dataclasses

import pytest
import torch

from big2small.distill import DistillConfig, distill, loss_for
from big2small.distill.loop import learning_rate_factor
from big2small.distill.text import sample_text
from big2small.errors import Big2SmallError
from big2small.folding import FoldConfig, fold
from helpers import peaked_llama


def _text(model, n=16, seq_len=16):
    ids = sample_text(model, samples=n, seq_len=seq_len, start_token_id=1, seed=0, progress=False)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_a_student_equal_to_its_teacher_starts_at_loss_zero():
    # (Its gradients are zero up to rounding, which Adam's normalised steps would still follow:
    # the property is the loss, not unchanged weights.)
    teacher = peaked_llama()
    report = distill(teacher, copy.deepcopy(teacher), _text(teacher), loss_for("causal-lm"),
                     DistillConfig(steps=1, samples=16, held_out=4, batch_size=4), progress=False)
    assert report.steps == 1
    assert report.held_out_before == pytest.approx(0, abs=1e-6) and report.train_loss_first == pytest.approx(0, abs=1e-6)


def test_distilling_a_folded_student_lowers_the_held_out_loss_and_leaves_the_teacher_alone():
    teacher = peaked_llama()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = fold(teacher, FoldConfig(sparsity=0.3, n_init=1), progress=False).model
    report = distill(teacher, student, _text(teacher, n=24), loss_for("causal-lm"),
                     DistillConfig(steps=20, samples=24, held_out=6, batch_size=6, lr=1e-4), progress=False)
    assert report.held_out_after < 0.5 * report.held_out_before
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert all(p.requires_grad for p in teacher.parameters())  # restored after the loop


def test_the_hidden_state_loss_starts_at_zero_for_a_copy_and_repairs_a_folded_student():
    teacher = peaked_llama()
    inputs = _text(teacher, n=24)
    config = DistillConfig(steps=20, samples=24, held_out=6, batch_size=6, lr=1e-4, hidden_weight=1.0, lr_schedule="cosine")
    same = distill(teacher, copy.deepcopy(teacher), inputs, loss_for("causal-lm"), dataclasses.replace(config, steps=1),
                   progress=False)
    assert same.held_out_before == pytest.approx(0, abs=1e-6)
    student = fold(teacher, FoldConfig(sparsity=0.3, n_init=1), progress=False).model
    report = distill(teacher, student, inputs, loss_for("causal-lm"), config, progress=False)
    assert report.held_out_after < 0.5 * report.held_out_before


def test_the_cosine_schedule_falls_from_the_peak_to_zero_and_the_constant_one_stays():
    cosine, constant = learning_rate_factor("cosine", 10), learning_rate_factor("constant", 10)
    factors = [cosine(i) for i in range(11)]
    assert factors[0] == 1 and factors[10] == pytest.approx(0, abs=1e-12) and factors[5] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(factors, factors[1:]))
    assert {constant(i) for i in range(11)} == {1.0}


def test_the_time_budget_stops_training():
    teacher = peaked_llama()
    student = fold(teacher, FoldConfig(sparsity=0.3, n_init=1), progress=False).model
    report = distill(teacher, student, _text(teacher), loss_for("causal-lm"),
                     DistillConfig(steps=10_000, samples=16, held_out=0, batch_size=4, max_seconds=0.5), progress=False)
    assert report.stopped_by == "time" and 0 < report.steps < 10_000 and report.held_out_before is None


def test_the_sample_count_must_match_the_config():
    teacher = peaked_llama()
    with pytest.raises(Big2SmallError, match="got 16 inputs"):
        distill(teacher, copy.deepcopy(teacher), _text(teacher), loss_for("causal-lm"), DistillConfig(samples=20), progress=False)
