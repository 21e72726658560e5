import copy
import dataclasses
import math

import pytest
import torch

from big2small.distill import DistillConfig, distill, loss_for
from big2small.distill.loop import lr_factor
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
    config = DistillConfig(steps=20, samples=24, held_out=6, batch_size=6, lr=1e-4, hidden_weight=1.0, schedule="cosine")
    same = distill(teacher, copy.deepcopy(teacher), inputs, loss_for("causal-lm"), dataclasses.replace(config, steps=1),
                   progress=False)
    assert same.held_out_before == pytest.approx(0, abs=1e-6)
    student = fold(teacher, FoldConfig(sparsity=0.3, n_init=1), progress=False).model
    report = distill(teacher, student, inputs, loss_for("causal-lm"), config, progress=False)
    assert report.held_out_after < 0.5 * report.held_out_before


def test_the_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    config = DistillConfig(steps=50, warmup_steps=5, schedule="cosine")
    factors = [lr_factor(step, config) for step in range(config.steps + 1)]
    assert all(a < b for a, b in zip(factors[:5], factors[1:6])) and factors[5] == 1.0  # linear warm-up to lr
    assert all(a > b for a, b in zip(factors[5:50], factors[6:51])) and factors[50] == 0.0  # cosine down to 0
    assert abs(factors[27] - 0.5 * (1 + math.cos(math.pi * 22 / 45))) < 1e-12  # half a cosine over 45 steps
    constant = DistillConfig(steps=50, warmup_steps=2)
    assert [lr_factor(s, constant) for s in range(4)] == [1 / 3, 2 / 3, 1.0, 1.0]


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


def test_the_teacher_runs_once_per_training_input_and_its_kept_outputs_train_the_same(monkeypatch):
    from big2small.distill import loop

    teacher = peaked_llama()
    inputs = _text(teacher, n=20)
    config = DistillConfig(steps=12, samples=20, held_out=4, batch_size=4, lr=1e-3)  # 3 passes over 16 inputs
    student = fold(teacher, FoldConfig(sparsity=0.3, n_init=1), progress=False).model
    kept, again = copy.deepcopy(student), copy.deepcopy(student)
    calls = []
    teacher.register_forward_hook(lambda module, args, output: calls.append(1))
    cached = distill(teacher, kept, inputs, loss_for("causal-lm"), config, progress=False)
    assert len(calls) == 16 // 4 + 2  # the first pass's 4 batches, then the held-out batch before and after
    monkeypatch.setattr(loop, "TEACHER_CACHE_BYTES", 0)
    calls.clear()
    recomputed = distill(teacher, again, inputs, loss_for("causal-lm"), config, progress=False)
    assert len(calls) == 12 + 2
    assert cached.held_out_after == pytest.approx(recomputed.held_out_after, rel=1e-4)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(kept.parameters(), again.parameters()))
