"""prepare and the size loss: quantisers on every layer, b and e exposed, Q in bits per weight,
live inputs, configuration. (The formula itself: tests/generators/test_channel_int.py.)"""

import pytest
import torch
from torch import nn

from big2small.errors import Big2SmallError
from big2small.selfcompress import SelfCompressConfig, prepare, quantized_layers, quantizer_parameters, size_loss

from tiny_models import ResidualMLP


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def test_size_loss_is_the_average_bits_per_weight():
    net = prepare(_net(), SelfCompressConfig(init_bits=2.0))
    (_, _, conv_q), (_, _, fc_q) = list(quantized_layers(net))
    with torch.no_grad():
        conv_q.bits.copy_(torch.tensor([2.0, 0.5, -1.0, 3.0]).reshape(4, 1, 1, 1))
        fc_q.bits.fill_(1.0)
    n = 4 * 27 + 5 * 64
    expected = (27 * (2.0 + 0.5 + 0.0 + 3.0) + 64 * 5 * 1.0) / n
    assert size_loss(net).item() == pytest.approx(expected)


def test_size_loss_gradient_reaches_every_bit_depth():
    net = prepare(_net())
    size_loss(net).backward()
    assert all(q.bits.grad is not None and (q.bits.grad > 0).all() for _, _, q in quantized_layers(net))


def test_count_live_inputs_discounts_inputs_from_dead_channels():
    net = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    prepare(net, SelfCompressConfig(init_bits=2.0, count_live_inputs=True))
    (_, _, first), _ = list(quantized_layers(net))
    with torch.no_grad():
        first.bits[:2] = -1.0  # half the second layer's inputs are dead
    expected = (6 * 2 * 2.0 + 4 * 0.5 * 3 * 2.0) / (24 + 12)
    assert size_loss(net).item() == pytest.approx(expected)


def test_count_live_inputs_counts_a_stream_input_alive_while_any_writer_is():
    net = prepare(ResidualMLP(), SelfCompressConfig(init_bits=2.0, count_live_inputs=True))
    quantizers = {name: q for name, _, q in quantized_layers(net)}
    with torch.no_grad():
        quantizers["a"].bits[:2] = -1.0  # channels 0, 1 dead in a
        quantizers["b"].bits[1:3] = -1.0  # channels 1, 2 dead in b: only channel 1 is dead in both
    live = 5 / 6  # of the stream's channels, which b and head read
    expected = (6 * 4 * 2.0 + 6 * live * 4 * 2.0 + 6 * live * 2 * 2.0) / (36 + 36 + 12)
    assert size_loss(net).item() == pytest.approx(expected)


def test_prepare_keeps_the_model_class_and_exposes_b_and_e():
    net = _net()
    before = net(torch.randn(1, 3, 6, 6)).shape
    prepare(net, SelfCompressConfig(init_bits=8.0, init_exponent=None))
    assert isinstance(net, nn.Sequential) and net(torch.randn(1, 3, 6, 6)).shape == before
    assert len(quantizer_parameters(net)) == 4
    assert {id(p) for p in quantizer_parameters(net)} <= {id(p) for p in net.parameters()}


def test_pretrained_start_is_near_lossless():
    net = _net()
    x = torch.randn(2, 3, 6, 6)
    ref = net(x)
    prepare(net, SelfCompressConfig(init_bits=8.0, init_exponent=None))
    assert (net(x) - ref).abs().max() < 0.02 * ref.abs().max()


def test_skip_patterns_leave_layers_in_float():
    net = prepare(_net(), SelfCompressConfig(skip=[r"3"]))
    assert [name for name, _, _ in quantized_layers(net)] == ["0"]


def test_prepare_twice_and_bad_inputs_are_refused():
    net = prepare(_net())
    with pytest.raises(Big2SmallError, match="already parametrised"):
        prepare(net)
    with pytest.raises(Big2SmallError, match="no Conv or Linear"):
        prepare(nn.Sequential(nn.ReLU()))
    bad = _net()
    with torch.no_grad():
        bad[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(Big2SmallError, match="NaN"):
        prepare(bad)
    with pytest.raises(Big2SmallError, match="not prepared"):
        size_loss(_net())


def test_config_round_trips_through_json_and_validates():
    cfg = SelfCompressConfig(init_bits=4.0, init_exponent=None, skip=["fc.*"])
    assert SelfCompressConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(Big2SmallError, match="unknown option"):
        SelfCompressConfig.from_dict({"bits": 3})
    with pytest.raises(Big2SmallError, match="init_bits"):
        prepare(_net(), SelfCompressConfig(init_bits=0.0))
