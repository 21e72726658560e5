"""fold(): exact on duplicate units (CNN channels, MLP units, attention heads), sparsity targets,
pruning baseline, repairs, reload through the artifact, and clear errors."""

import pytest
import torch
from torch import nn

import big2small as b2s
from big2small.errors import Big2SmallError
from big2small.folding import FoldConfig, fold
from big2small.folding.export import to_compressed
from big2small.models.zoo.fashion import RESNET_FACTORY, fashion_resnet
from big2small.folding.fold import ar_factor, count_parameters
from big2small.models.source import ModelSource

from tiny_models import MBConvNet, randomise_batchnorm, tiny_bert, tiny_llama


def _duplicate_rows(t: torch.Tensor, axis: int = 0) -> None:
    """Make unit 2i+1 a copy of unit 2i along `axis`, in place."""
    view = t.data.transpose(0, axis)
    view[1::2] = view[0::2]


def _mbconv_with_duplicate_expansion() -> nn.Module:
    model = randomise_batchnorm(MBConvNet())
    with torch.no_grad():
        for name in ("expand.weight", "dw.weight", "se_expand.weight", "se_expand.bias", "bn1.weight", "bn1.bias",
                     "bn1.running_mean", "bn1.running_var", "bn2.weight", "bn2.bias", "bn2.running_mean", "bn2.running_var"):
            _duplicate_rows(model.get_parameter(name) if "running" not in name else model.get_buffer(name))
        for name in ("project.weight", "se_reduce.weight"):
            _duplicate_rows(model.get_parameter(name), axis=1)
    return model


@pytest.mark.parametrize("repair", ["naive", "ar"])
def test_folding_duplicate_channels_leaves_the_output_unchanged(repair):
    model = _mbconv_with_duplicate_expansion()
    x = torch.randn(3, 3, 12, 12)
    result = fold(model, FoldConfig(sparsity=None, ratio=0.0, ratios={"expand": 0.5}, repair=repair), progress=False)
    assert result.model.expand.out_channels == 12 and result.model.dw.groups == 12
    torch.testing.assert_close(result.model(x), model(x), atol=1e-5, rtol=1e-5)


def test_folding_duplicate_mlp_units_and_kv_heads_leaves_llama_logits_unchanged():
    model = tiny_llama(kv_heads=2)
    with torch.no_grad():
        for layer in model.model.layers:
            _duplicate_rows(layer.mlp.gate_proj.weight)
            _duplicate_rows(layer.mlp.up_proj.weight)
            _duplicate_rows(layer.mlp.down_proj.weight, axis=1)  # so k-means sees identical features
            a = layer.self_attn  # KV head 1 (and its two query heads) copies KV head 0
            a.k_proj.weight[8:16] = a.k_proj.weight[0:8]
            a.v_proj.weight[8:16] = a.v_proj.weight[0:8]
            a.q_proj.weight[16:32] = a.q_proj.weight[0:16]
    ids = torch.randint(0, 64, (2, 10))
    result = fold(model, FoldConfig(sparsity=None, ratio=0.5, repair="naive"), progress=False)
    assert [g.units_after for g in result.groups] == [24, 1, 24, 1]
    torch.testing.assert_close(result.model(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-4)


def test_sparsity_target_is_met_and_counted_on_the_real_model():
    model = randomise_batchnorm(fashion_resnet())
    result = fold(model, FoldConfig(sparsity=0.3, n_init=2), example_input=torch.zeros(1, 1, 28, 28), progress=False)
    assert result.parameters_after == count_parameters(result.model)
    assert 0.3 <= result.sparsity < 0.36
    assert result.macs_after < result.macs_before
    assert result.model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_pruning_removes_the_same_parameters_as_folding():
    model = randomise_batchnorm(fashion_resnet())
    folded = fold(model, FoldConfig(sparsity=0.4, n_init=2), progress=False)
    pruned = fold(model, FoldConfig(sparsity=0.4, selection="l1"), progress=False)
    assert folded.parameters_after == pruned.parameters_after


def test_l2_pruning_keeps_the_largest_channels():
    model = randomise_batchnorm(MBConvNet())
    with torch.no_grad():
        model.expand.weight[:12] *= 100  # the first 12 channels are the large ones
    result = fold(model, FoldConfig(sparsity=None, ratio=0.0, ratios={"expand": 0.5}, selection="l2"), progress=False)
    torch.testing.assert_close(result.model.expand.weight, model.expand.weight[:12])
    torch.testing.assert_close(result.model.project.weight, model.project.weight[:, :12])


def test_input_model_is_left_untouched():
    model = randomise_batchnorm(MBConvNet())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold(model, FoldConfig(sparsity=0.3, n_init=1), progress=False)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_ar_factor_restores_unit_variance_for_orthogonal_and_identical_units():
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0], [3.0, 3.0]])
    factor = ar_factor(rows, torch.tensor([0, 0, 1, 1]), 2)
    torch.testing.assert_close(factor, torch.tensor([2 ** 0.5, 1.0]))


def test_fold_ar_scales_merged_channels_so_their_variance_is_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32, bias=False), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(4096, 64)
    result = fold(model, FoldConfig(sparsity=None, ratio=0.5, repair="ar"), progress=False)
    naive = fold(model, FoldConfig(sparsity=None, ratio=0.5, repair="naive"), progress=False)
    std_ar = result.model[1](result.model[0](x)).std(0).mean()
    std_naive = naive.model[1](naive.model[0](x)).std(0).mean()
    std_original = model[1](model[0](x)).std(0).mean()
    assert abs(std_ar - std_original) < abs(std_naive - std_original)


def test_data_repair_re_estimates_batchnorm_statistics():
    model = randomise_batchnorm(fashion_resnet())
    batches = list(torch.randn(64, 1, 28, 28).split(32))
    result = fold(model, FoldConfig(sparsity=0.2, repair="data", n_init=1), data=batches, progress=False)
    assert not result.data_free
    stem_out = result.model.conv1(torch.cat(batches))
    torch.testing.assert_close(result.model.bn1.running_mean, stem_out.mean((0, 2, 3)), atol=1e-4, rtol=1e-4)


def test_folded_resnet_saves_and_restores_from_the_artifact_alone(tmp_path):
    model = randomise_batchnorm(fashion_resnet())
    result = fold(model, FoldConfig(sparsity=0.3, n_init=1), progress=False)
    source = ModelSource("module", "fashion-resnet", "fashion-mnist-classifier", factory=RESNET_FACTORY)
    cm = to_compressed(result, source=source)
    info = b2s.save(cm, tmp_path / "folded.b2s")
    size = cm.size()
    assert size.n_parameters == result.parameters_before
    stored = result.model.state_dict().values()  # fp32 tensors, and int64 BatchNorm batch counters
    assert size.bits_total == sum(8 * t.numel() * t.element_size() for t in stored)
    # Beyond the stored bits, the file holds only the safetensors header (under 200 bytes a tensor).
    assert 0 <= info.tensor_file_bytes - size.bits_total / 8 < 200 * len(cm.tensors)
    restored = b2s.restore(tmp_path / "folded.b2s")
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(restored(x), result.model(x))


def test_folded_depthwise_model_reloads_into_a_full_width_skeleton():
    model = randomise_batchnorm(MBConvNet())
    result = fold(model, FoldConfig(sparsity=0.3, n_init=1), progress=False)
    restored = b2s.restore(to_compressed(result), MBConvNet())
    x = torch.randn(2, 3, 12, 12)
    assert restored.dw.groups == result.model.dw.groups < 24
    torch.testing.assert_close(restored(x), result.model(x))


def test_folded_transformers_reload_with_per_layer_widths():
    for model, run in ((tiny_llama(), lambda m, ids: m(ids).logits), (tiny_bert(), lambda m, ids: m(ids).last_hidden_state)):
        result = fold(model, FoldConfig(sparsity=0.15, ratios={"layer.*0.mlp": 0.5}, n_init=1), progress=False)
        widths = [g.units_after for g in result.groups if g.kind == "mlp"]
        assert widths[0] < widths[1]
        ids = torch.randint(0, 64, (1, 9))
        restored = b2s.restore(to_compressed(result), type(model)(model.config))
        torch.testing.assert_close(run(restored, ids), run(result.model, ids))


@pytest.mark.parametrize("config, message", [
    (FoldConfig(sparsity=None, ratio=1.0), "r = 1"),
    (FoldConfig(sparsity=0.3, ratio=0.3), "exactly one"),
    (FoldConfig(repair="data"), "needs input batches"),
    (FoldConfig(repair="magic"), "repair must be"),
])
def test_bad_settings_are_refused_with_a_clear_error(config, message):
    with pytest.raises(Big2SmallError, match=message):
        fold(randomise_batchnorm(fashion_resnet()), config, progress=False)


def test_impossible_sparsity_says_how_much_is_foldable():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1000))  # mostly the unfoldable output layer
    with pytest.raises(Big2SmallError, match="impossible.*removes only 50.1%"):
        fold(model, FoldConfig(sparsity=0.9), progress=False)


def test_nan_weights_are_refused():
    model = fashion_resnet()
    with torch.no_grad():
        model.conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(Big2SmallError, match="NaN"):
        fold(model, FoldConfig(), progress=False)


def test_a_model_with_nothing_foldable_is_refused():
    with pytest.raises(Big2SmallError, match="nothing to fold"):
        fold(nn.Sequential(nn.Linear(4, 3)), FoldConfig(), progress=False)
