"""Sequential reconstruction (folding/reconstruct.py): activation-aware selection and the
block-by-block refit of folded transformers on the model's own inputs."""

import pytest
import torch

from big2small.errors import Big2SmallError
from big2small.folding import FoldConfig, fold
from big2small.folding.reconstruct import unit_scores

from tiny_models import tiny_bert, tiny_llama


def _inputs(seed: int, n: int = 24, padded: bool = True) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, 64, (n, 16), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones_like(ids)
    if padded:
        mask[: n // 4, 10:] = 0  # some padded sequences: their padding must not count
    return {"input_ids": ids, "attention_mask": mask}


def _block_errors(model, folded, inputs) -> list[float]:
    """Mean squared error of every block's output (hidden states after each block) on real tokens."""
    with torch.no_grad():
        a = model(**inputs, output_hidden_states=True).hidden_states[1:]
        b = folded(**inputs, output_hidden_states=True).hidden_states[1:]
    real = inputs["attention_mask"].bool()
    return [float((x - y)[real].pow(2).mean()) for x, y in zip(a, b)]


@pytest.mark.parametrize("make", [tiny_llama, tiny_bert])
@pytest.mark.parametrize("selection", ["fold", "l2"])
def test_sequential_refit_lowers_every_block_error_on_the_fitting_inputs(make, selection):
    model = make()
    calibration = _inputs(0)
    config = dict(sparsity=None, ratio=0.5, selection=selection, n_init=2)
    plain = fold(model, FoldConfig(**config), calibration=calibration, progress=False).model
    refit = fold(model, FoldConfig(**config, norm_repair="sequential"), calibration=calibration, progress=False).model
    before, after = _block_errors(model, plain, calibration), _block_errors(model, refit, calibration)
    assert all(e_after < e_before for e_after, e_before in zip(after, before)), (before, after)


@pytest.mark.parametrize("make", [tiny_llama, tiny_bert])
def test_sequential_refit_generalises_to_fresh_inputs(make):
    model = make()
    config = dict(sparsity=None, ratio=0.5, selection="activation", n_init=2)
    plain = fold(model, FoldConfig(**config), calibration=_inputs(0), progress=False).model
    refit = fold(model, FoldConfig(**config, norm_repair="sequential"), calibration=_inputs(0), progress=False).model
    fresh = _inputs(7, padded=False)
    assert _block_errors(model, refit, fresh)[-1] < _block_errors(model, plain, fresh)[-1]


@pytest.mark.parametrize("make", [tiny_llama, tiny_bert])
def test_nothing_merged_leaves_the_model_exactly_unchanged(make):
    model = make()
    folded = fold(model, FoldConfig(sparsity=None, ratio=0.0, selection="activation", norm_repair="sequential"),
                  calibration=_inputs(0), progress=False).model
    assert max(_block_errors(model, folded, _inputs(3))) == 0.0


def test_activation_selection_keeps_the_unit_that_writes_most_into_the_residual_stream():
    model = tiny_llama()
    with torch.no_grad():
        for layer in model.model.layers:  # unit 5: weak producer rows, a very large output column
            layer.mlp.gate_proj.weight[5] *= 0.1
            layer.mlp.up_proj.weight[5] *= 0.1
            layer.mlp.down_proj.weight[:, 5] *= 1000.0
    config = dict(sparsity=None, ratio=0.0, ratios={"mlp": 0.9}, n_init=2)
    by_activation = fold(model, FoldConfig(**config, selection="activation"), calibration=_inputs(0), progress=False)
    by_norm = fold(model, FoldConfig(**config, selection="l2"), progress=False)
    large = model.model.layers[0].mlp.down_proj.weight[:, 5]
    kept = by_activation.model.model.layers[0].mlp.down_proj.weight
    assert any(torch.equal(kept[:, j], large) for j in range(kept.shape[1]))
    assert not any(torch.equal(c, large) for c in by_norm.model.model.layers[0].mlp.down_proj.weight.T)


def test_unit_scores_sum_each_units_columns():
    consumer = torch.nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        consumer.weight.copy_(torch.tensor([[3.0, 0.0, 1.0, 0.0], [4.0, 1.0, 0.0, 0.0]]))
    inputs = torch.tensor([[2.0, 1.0, 1.0, 5.0], [-2.0, -1.0, 1.0, 5.0]])  # rms 2, 1, 1, 5
    torch.testing.assert_close(unit_scores(consumer, inputs, 2), torch.tensor([5.0 * 2 + 1.0, 1.0 + 0.0]))


def test_calibrated_options_without_inputs_are_one_clear_error():
    for config in (FoldConfig(norm_repair="sequential"), FoldConfig(selection="activation")):
        with pytest.raises(Big2SmallError, match="synthetic inputs"):
            fold(tiny_llama(), config, progress=False)
