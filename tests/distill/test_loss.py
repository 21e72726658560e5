from types import SimpleNamespace

import pytest
import torch


from big2small.distill.loss import embedding_loss, hidden_state_loss, logit_kl, loss_for
from big2small.errors import Big2SmallError


def test_logit_kl_is_zero_only_for_the_teachers_own_distribution_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    teacher, student = torch.randn(2, 5, 7, generator=g), torch.randn(2, 5, 7, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert float(logit_kl(teacher, teacher, {"attention_mask": mask})) == pytest.approx(0, abs=1e-6)
    assert float(logit_kl(teacher, student, {"attention_mask": mask})) > 0.1
    changed = student.clone()
    changed[0, 3:] = 50 * torch.randn(2, 7, generator=g)  # only padded positions differ
    assert float(logit_kl(teacher, changed, {"attention_mask": mask})) == pytest.approx(
        float(logit_kl(teacher, student, {"attention_mask": mask})), rel=1e-5)


def test_embedding_loss_is_zero_for_equal_hidden_states_and_grows_with_the_gap():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 6, 8, generator=g)
    inputs = {"attention_mask": torch.ones(3, 6, dtype=torch.long)}
    noise = torch.randn(3, 6, 8, generator=g)
    assert float(embedding_loss(hidden, hidden, inputs)) == pytest.approx(0, abs=1e-6)
    small, large = (float(embedding_loss(hidden, hidden + s * noise, inputs)) for s in (0.1, 1.0))
    assert 0 < small < large


def test_unknown_task_is_refused():
    with pytest.raises(Big2SmallError, match="no distillation loss"):
        loss_for("speech")


def test_hidden_state_loss_is_zero_for_equal_states_grows_with_the_gap_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    states = tuple(torch.randn(2, 5, 8, generator=g) for _ in range(4))  # embeddings + 3 blocks
    noise = tuple(torch.randn(2, 5, 8, generator=g) for _ in range(4))
    inputs = {"attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}

    padding = (1 - inputs["attention_mask"]).float().unsqueeze(-1)  # 1 at padded positions

    def out(scale: float, pad: float = 0.0):
        return SimpleNamespace(hidden_states=tuple(s + scale * n + pad * padding for s, n in zip(states, noise)))

    assert float(hidden_state_loss(out(0), out(0), inputs)) == pytest.approx(0, abs=1e-7)
    small, large = (float(hidden_state_loss(out(0), out(s), inputs)) for s in (0.1, 1.0))
    assert 0 < small < large
    assert float(hidden_state_loss(out(0), out(0.1, pad=30.0), inputs)) == pytest.approx(small, rel=1e-5)
    with pytest.raises(Big2SmallError, match="as many blocks"):
        hidden_state_loss(out(0), SimpleNamespace(hidden_states=states[:2]), inputs)
