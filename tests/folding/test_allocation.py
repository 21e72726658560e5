"""Per-group widths from a global sparsity target: uniform ratio, or by merge cost."""

import numpy as np
import torch
from torch import nn

from big2small.folding import FoldConfig, fold
from big2small.folding.allocation import keep_count, merge_cost_curve


def test_keep_count_floors_and_respects_multiple_of():
    assert keep_count(16, 0.25) == 12 and keep_count(10, 0.99) == 1
    assert keep_count(100, 0.3, multiple_of=8) == 64 and keep_count(4, 0.3, multiple_of=8) == 2


def test_merge_cost_is_zero_for_duplicates_then_grows():
    x = torch.randn(4, 6).repeat(2, 1)  # 8 rows, 4 distinct
    curve = merge_cost_curve(x)
    assert curve.shape == (7,) and np.allclose(curve[:4], 0) and np.all(np.diff(curve) >= -1e-12)
    assert abs(curve[-1] - 1.0) < 1e-9  # one cluster left: all variance lost


def _two_hidden_layers(redundant_first: bool) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    layer, consumer = (model[0], model[2]) if redundant_first else (model[2], model[4])
    with torch.no_grad():  # 8 distinct units, each repeated 4 times
        layer.weight.copy_(layer.weight[:8].repeat(4, 1))
        layer.bias.copy_(layer.bias[:8].repeat(4))
        consumer.weight.copy_(consumer.weight[:, :8].repeat(1, 4))
    return model


def test_cost_allocation_folds_the_redundant_group_first():
    for redundant_first in (True, False):
        result = fold(_two_hidden_layers(redundant_first), FoldConfig(sparsity=0.3, repair="naive", n_init=3), progress=False)
        widths = {g.name: g.units_after for g in result.groups}
        redundant, other = ("0", "2") if redundant_first else ("2", "0")
        assert widths[redundant] < 32 and widths[other] == 32
        assert result.sparsity >= 0.3


def test_cost_allocation_on_exact_duplicates_keeps_the_function():
    model = _two_hidden_layers(True)
    x = torch.randn(10, 16)
    result = fold(model, FoldConfig(sparsity=0.2, repair="naive"), progress=False)
    torch.testing.assert_close(result.model(x), model(x), atol=1e-5, rtol=1e-5)


def test_uniform_allocation_gives_every_group_the_same_ratio():
    result = fold(_two_hidden_layers(True), FoldConfig(sparsity=0.3, allocation="uniform", repair="naive", n_init=1),
                  progress=False)
    assert len({g.units_after for g in result.groups}) == 1 and result.ratio is not None
