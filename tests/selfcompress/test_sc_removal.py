"""Dead-channel removal on the coupling graph: dead and unused channels go with the output kept,
constants fold into biases, residual streams narrow where every writer's channel is dead, and what
stays is reported with the reason."""

import logging

import torch

from big2small.selfcompress import SelfCompressConfig, convert, prepare, quantized_layers

from sc_models import BiasNet, prepared
from tiny_models import MBConvNet, ResidualMLP, randomise_batchnorm, tiny_bert, tiny_llama


def test_dead_channels_are_removed_and_the_output_is_kept():
    net = prepared(BiasNet(), {"conv2": [0, 5, 11]})
    x = torch.randn(5, 1, 14, 14)
    result = convert(net)
    assert result.model.conv2.out_channels == 9 and result.model.bn2.num_features == 9
    assert result.model.fc.in_features == 9 * 9
    assert torch.allclose(result.model(x), net(x), atol=1e-5)


def test_dead_channels_before_a_padded_conv_fold_their_constant():
    net = prepared(BiasNet(), {"conv1": [2, 3]})
    x = torch.randn(5, 1, 14, 14)
    result = convert(net)
    assert result.model.conv1.out_channels == 6 and result.model.conv2.in_channels == 6
    assert result.model.conv2.bias is not None
    # conv2 has no padding, so the fold is exact everywhere
    assert torch.allclose(result.model(x), net(x), atol=1e-5)


def test_channels_every_consumer_ignores_are_removed_too():
    net = prepared(BiasNet(), {})
    with torch.no_grad():
        net.fc.parametrizations.weight.original.view(4, 12, 9)[:, 7] = 0.0  # fc reads nothing from channel 7
    x = torch.randn(5, 1, 14, 14)
    result = convert(net)
    assert result.model.conv2.out_channels == 11
    assert torch.allclose(result.model(x), net(x), atol=1e-5)


def test_a_channel_dead_in_every_writer_of_a_residual_stream_is_removed_exactly():
    net = prepared(ResidualMLP(), {"a": [0, 3], "b": [0, 3]})
    result = convert(net)
    m = result.model
    assert m.a.out_features == m.b.in_features == m.b.out_features == m.head.in_features == 4
    assert result.unremovable == {}
    x = torch.randn(3, 6)
    torch.testing.assert_close(m(x), net(x))


def test_a_channel_dead_in_one_writer_of_a_residual_stream_stays_and_says_why():
    net = prepared(ResidualMLP(), {"a": [0]})
    result = convert(net)
    assert result.model.a.out_features == 6
    assert "dead in every layer that writes it" in result.unremovable["stream:a"]
    summary = {l.name: l for l in result.layers}
    assert summary["a"].dead_kept == 1
    x = torch.randn(3, 6)
    assert torch.equal(result.model(x), net(x))


def test_dead_channels_of_a_group_that_cannot_narrow_stay_and_say_why():
    net = prepared(BiasNet(), {"fc": [1]})
    result = convert(net)
    assert result.model.fc.out_features == 4 and "output" in result.unremovable["fc"]


def _mbconv_with_dead_expansion(dead_constant: bool):
    """MBConvNet prepared with channels 4 and 9 dead in both writers of its expansion group
    (expand and the SE gate's se_expand; dw stays alive). `dead_constant`: bn1 turns them into 0
    before the zero-padded depthwise conv, so their constants fold exactly everywhere."""
    torch.manual_seed(0)
    net = randomise_batchnorm(MBConvNet())
    if dead_constant:
        net.bn1.bias.data[[4, 9]] = -10.0
    prepare(net, SelfCompressConfig(init_bits=8.0, init_exponent=None))
    layers = {name: q for name, _, q in quantized_layers(net)}
    with torch.no_grad():
        for name in ("expand", "se_expand"):
            layers[name].bits.view(-1)[[4, 9]] = -1.0
    return net.eval()


def test_a_depthwise_block_and_its_gate_lose_the_channels_dead_in_all_their_writers():
    net = _mbconv_with_dead_expansion(dead_constant=True)
    result = convert(net)
    m = result.model
    assert m.expand.out_channels == m.dw.groups == m.bn2.num_features == m.se_expand.out_channels == 22
    assert m.project.in_channels == m.se_reduce.in_channels == 22
    x = torch.randn(2, 3, 12, 12)
    torch.testing.assert_close(m(x), net(x))


def test_a_constant_reaching_a_zero_padded_conv_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING, logger="big2small.selfcompress.removal"):
        convert(_mbconv_with_dead_expansion(dead_constant=False))
    assert any(r.getMessage().startswith("dw: removed channels of stream:expand") for r in caplog.records)


def test_a_transformer_mlp_unit_dead_in_gate_and_up_is_removed():
    model = tiny_llama()
    prepare(model, SelfCompressConfig(init_bits=8.0, init_exponent=None, skip=[r".*self_attn.*", "lm_head"]))
    layers = {name: q for name, _, q in quantized_layers(model)}
    with torch.no_grad():
        for p in ("gate_proj", "up_proj"):
            layers[f"model.layers.0.mlp.{p}"].bits.view(-1)[[1, 7, 30]] = -1.0
    ids = torch.randint(0, 64, (1, 9))
    result = convert(model)
    assert result.model.model.layers[0].mlp.down_proj.in_features == 45
    torch.testing.assert_close(result.model(ids).logits, model(ids).logits)


def test_a_bert_unit_with_a_bias_goes_only_when_its_consumer_ignores_it():
    model = tiny_bert()
    prepare(model, SelfCompressConfig(init_bits=8.0, init_exponent=None, skip=[r".*attention.*"]))
    layers = {name: q for name, _, q in quantized_layers(model)}
    with torch.no_grad():
        layers["encoder.layer.0.intermediate.dense"].bits.view(-1)[[2, 5]] = -1.0  # emits gelu(bias): stays
        model.encoder.layer[1].output.dense.parametrizations.weight.original[:, [3, 8, 9]] = 0.0  # read by nobody
    ids = torch.randint(0, 64, (1, 9))
    result = convert(model.eval())
    assert result.model.encoder.layer[0].intermediate.dense.out_features == 48
    assert "biases" in result.unremovable["encoder.layer.0.mlp"]
    assert result.model.encoder.layer[1].output.dense.in_features == 45
    torch.testing.assert_close(result.model(ids).last_hidden_state, model(ids).last_hidden_state)
