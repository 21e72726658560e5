"""The coupling graph: residual streams, BatchNorm, depthwise convs, SE gates, flatten, transformer
MLP units and attention heads; every structure no handler understands refused with a reason."""

import pytest
import torch
from torch import nn

from big2small.models.zoo.fashion import fashion_resnet
from big2small.transforms import find_groups

from tiny_models import ConcatNet, FlattenNet, MBConvNet, tiny_bert, tiny_llama


def _params(group, role):
    return {m.param for m in group.members if m.role == role}


def test_resnet_stage_stream_holds_every_writer_and_reader_of_the_stream():
    report = find_groups(fashion_resnet())
    stream = next(g for g in report.groups if g.name == "stream:layer2.0.conv2")
    assert stream.kind == "stream" and stream.foldable and stream.size == 32
    assert {"layer2.0.conv2.weight", "layer2.1.conv2.weight", "layer2.0.shortcut.0.weight"} <= _params(stream, "producer")
    assert _params(stream, "consumer") == {"layer2.1.conv1.weight", "layer3.0.conv1.weight", "layer3.0.shortcut.0.weight"}


def test_resnet_has_three_streams_six_inner_groups_and_an_unfoldable_classifier():
    report = find_groups(fashion_resnet())
    assert sorted(g.kind for g in report.foldable) == ["channels"] * 6 + ["stream"] * 3
    assert "output" in report.unfolded["fc"]


def test_batchnorm_statistics_are_members_but_not_features():
    group = next(g for g in find_groups(fashion_resnet()).groups if g.name == "layer1.0.conv1")
    assert _params(group, "statistic") == {"layer1.0.bn1.running_mean", "layer1.0.bn1.running_var"}
    assert group.fused == [("layer1.0.conv1", "layer1.0.bn1")]


def test_depthwise_conv_and_se_gate_join_the_expansion_group():
    group = next(g for g in find_groups(MBConvNet()).groups if g.name == "stream:expand")
    assert group.foldable and group.size == 24 and group.depthwise == ["dw"]
    assert {"expand.weight", "dw.weight", "se_expand.weight", "se_expand.bias"} <= _params(group, "producer")
    assert _params(group, "consumer") == {"project.weight", "se_reduce.weight"}


def test_residual_stream_through_the_block_joins_stem_and_projection():
    group = next(g for g in find_groups(MBConvNet()).groups if g.kind == "stream")
    assert {"stem.weight", "project.weight"} <= _params(group, "producer")
    assert _params(group, "consumer") == {"expand.weight", "fc.weight"}


def test_flattened_conv_channels_give_the_linear_consumer_a_spatial_factor():
    group = next(g for g in find_groups(FlattenNet()).groups if g.name == "conv")
    assert group.foldable
    assert [(m.param, m.spatial) for m in group.consumers()] == [("fc1.weight", 16)]


def test_concatenation_is_reported_and_other_groups_still_fold():
    report = find_groups(ConcatNet())
    assert "concatenation" in report.unfolded["a"] and "concatenation" in report.unfolded["b"]
    assert any(g.name == "d" for g in report.foldable)


def test_untraceable_model_is_reported_not_raised():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    report = find_groups(Dynamic())
    assert report.groups == [] and "cannot trace" in report.unfolded["Dynamic"]


def test_llama_attention_unit_is_a_kv_head_with_its_query_heads():
    report = find_groups(tiny_llama(kv_heads=2))  # 4 query heads, 2 KV heads: g = 2
    attn = next(g for g in report.groups if g.name == "model.layers.0.attention")
    assert attn.size == 2 and attn.kind == "heads"
    blocks = {m.param.split(".")[-2]: m.block for m in attn.members}
    assert blocks == {"q_proj": 16, "k_proj": 8, "v_proj": 8, "o_proj": 16}


def test_llama_mlp_group_averages_gate_and_up_and_sums_down():
    mlp = next(g for g in find_groups(tiny_llama()).groups if g.name == "model.layers.1.mlp")
    assert mlp.size == 48
    assert _params(mlp, "producer") == {"model.layers.1.mlp.gate_proj.weight", "model.layers.1.mlp.up_proj.weight"}
    assert _params(mlp, "consumer") == {"model.layers.1.mlp.down_proj.weight"}


def test_bert_groups_include_biases_and_leave_the_residual_stream():
    report = find_groups(tiny_bert())
    heads = next(g for g in report.groups if g.name == "encoder.layer.0.attention")
    assert heads.size == 4 and "encoder.layer.0.attention.self.query.bias" in _params(heads, "producer")
    assert "residual stream" in report.unfolded


def test_transformer_groups_can_be_limited_to_mlps():
    report = find_groups(tiny_llama(), attention=False)
    assert {g.kind for g in report.groups} == {"mlp"}


def test_flattened_linear_outputs_are_refused():
    class SeqNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 6)
            self.head = nn.Linear(5 * 6, 2)

        def forward(self, x):  # x: [batch, 5 tokens, 4]
            return self.head(torch.relu(self.proj(x)).flatten(1))

    group = next(g for g in find_groups(SeqNet()).groups if g.name == "proj")
    assert not group.narrowable and "flattened" in group.reason


class _Uses(nn.Module):
    """conv -> `use` -> head: whatever `use` does to the channels decides whether conv's group narrows."""

    def __init__(self, use):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.extra = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.norm = nn.LayerNorm(4)
        self.scale = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.head = nn.Conv2d(4, 2, 1)
        self.use = use

    def forward(self, x):
        return self.head(self.use(self, self.conv(x)))


@pytest.mark.parametrize("use, reason", [
    (lambda m, h: h, None),
    (lambda m, h: torch.cumsum(h, 1), "it feeds cumsum"),
    (lambda m, h: m.norm(h.transpose(1, 3)).transpose(1, 3), "it feeds transpose"),
    (lambda m, h: h.permute(0, 1, 3, 2), "it feeds permute"),
    (lambda m, h: m.extra(h), "grouped conv extra"),
    (lambda m, h: h * m.scale, "the tensor scale, used directly"),
    (lambda m, h: m.conv(h), "conv is called more than once"),
])
def test_an_operation_without_a_handler_refuses_the_group_and_names_itself(use, reason):
    group = next(g for g in find_groups(_Uses(use)).groups if g.sources == ["conv"])
    assert group.reason == reason or reason in group.reason


def test_every_traced_group_records_its_sources_and_readers():
    group = next(g for g in find_groups(MBConvNet()).groups if g.name == "stream:expand")
    assert group.sources == ["expand", "se_expand"]
    assert set(group.trace.readers) == {"dw", "se_reduce", "project"}
    assert [group.trace.sources[n] for n in group.trace.sources] == ["expand", "se_expand"]
