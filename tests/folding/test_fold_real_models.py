"""Folding the real pretrained models: every group understood, and the folded artifact reloads
from itself alone with the same outputs (EfficientNet-Lite0's depthwise convs; SmolLM2's GQA)."""

import pytest
import torch

import big2small as b2s
from big2small.folding import FoldConfig, find_groups, fold
from big2small.folding.export import to_compressed

pytestmark = pytest.mark.slow


def test_efficientnet_lite0_folds_with_depthwise_groups_and_reloads(tmp_path):
    loaded = b2s.load_model("efficientnet-lite0")
    report = find_groups(loaded.model)
    assert len(report.foldable) == 24 and list(report.unfolded) == ["_fc"]  # only the classifier's output
    assert sum(len(g.depthwise) for g in report.foldable) == 16
    result = fold(loaded.model, FoldConfig(sparsity=0.2, n_init=1), example_input=torch.zeros(1, 3, 224, 224),
                  progress=False)
    assert 0.2 <= result.sparsity < 0.23 and result.macs_after < 0.95 * result.macs_before
    b2s.save(to_compressed(result, source=loaded.source), tmp_path / "f.b2s")
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(b2s.restore(tmp_path / "f.b2s")(x), result.model(x), atol=1e-4, rtol=1e-4)


def test_smollm2_folds_mlps_and_kv_heads_and_reloads(tmp_path):
    loaded = b2s.load_model("smollm2")
    result = fold(loaded.model, FoldConfig(sparsity=0.05, ratios={r"layers\.1\d\.": 0.4}, n_init=1), progress=False)
    heads = [g.units_after for g in result.groups if g.kind == "heads"]
    assert min(heads) < 3 and max(heads) == 3  # 3 KV heads (9 query heads); only layers 10-19 folded deeper
    b2s.save(to_compressed(result, source=loaded.source), tmp_path / "f.b2s")
    restored = b2s.restore(tmp_path / "f.b2s")
    ids = torch.randint(0, 1000, (1, 16))
    torch.testing.assert_close(restored(ids).logits, result.model(ids).logits, atol=1e-4, rtol=1e-4)
    assert restored.model.layers[12].self_attn.k_proj.out_features < 192
