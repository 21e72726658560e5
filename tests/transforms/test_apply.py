"""The apply step: select narrows every member, removed channels' constants fold into biases
(through BatchNorm, activations and residual adds), reshape_to rebuilds a narrowed model's shapes."""

import pytest
import torch
from torch import nn

from big2small.errors import Big2SmallError
from big2small.transforms import constant_inputs, find_groups, reshape_to, select

from tiny_models import ResidualMLP


class ConvBNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x):
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = nn.functional.max_pool2d(self.conv2(x).relu(), 2)
        return self.fc(x.view(x.size(0), -1))


def _group(net, name):
    return next(g for g in find_groups(net).groups if g.name == name)


def _net_with_dead_channels():
    torch.manual_seed(0)
    net = ConvBNNet().eval()
    with torch.no_grad():
        net.bn1.running_mean.uniform_(-1, 1)
        net.bn1.running_var.uniform_(0.5, 2)
        net.conv1.weight[[1, 4]] = 0  # these channels now emit a constant, act(BN(bias))
        net.conv2.weight[3] = 0
    return net


def _remove_dead(net, producer):
    g = _group(net, producer)
    module = dict(net.named_modules())[producer]
    dead = (module.weight.reshape(g.size, -1) == 0).all(1)
    constants = constant_inputs(net, g, {producer: module.bias.detach()})
    return select(net, g, ~dead, constants)


def test_select_narrows_producer_members_and_consumers():
    net = _net_with_dead_channels()
    assert _remove_dead(net, "conv1") == 2
    assert _remove_dead(net, "conv2") == 1
    assert net.conv1.out_channels == 6 and net.bn1.num_features == 6 and net.conv2.in_channels == 6
    assert net.fc.in_features == 5 * 16 and net(torch.randn(1, 3, 16, 16)).shape == (1, 5)


def test_fold_is_exact_into_a_linear_consumer():
    net = _net_with_dead_channels()
    x = torch.randn(4, 3, 16, 16)
    before = net(x)
    _remove_dead(net, "conv2")  # consumer fc: a Linear, no padding
    assert torch.allclose(net(x), before, atol=1e-5)


def test_fold_into_a_padded_conv_is_exact_at_interior_pixels():
    net = _net_with_dead_channels()
    feats = {}
    net.conv2.register_forward_hook(lambda m, i, o: feats.__setitem__("y", o))
    x = torch.randn(2, 3, 16, 16)
    net(x)
    before = feats["y"]
    _remove_dead(net, "conv1")
    net(x)
    after = feats["y"]
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert torch.allclose(after[interior], before[interior], atol=1e-5)


def test_removing_all_channels_is_refused():
    net = ConvBNNet()
    with pytest.raises(Big2SmallError, match="refusing"):
        select(net, _group(net, "conv1"), torch.zeros(8, dtype=torch.bool))


def test_a_refused_group_is_not_narrowed():
    net = ConvBNNet()
    with pytest.raises(Big2SmallError, match="fc cannot be narrowed: it reaches the model's output"):
        select(net, _group(net, "fc"), torch.ones(5, dtype=torch.bool))


def test_constant_inputs_follow_bn_and_relu():
    net = ConvBNNet().eval()
    with torch.no_grad():
        net.bn1.running_mean.copy_(torch.linspace(-1, 1, 8))
        net.bn1.running_var.fill_(4.0)
        net.bn1.weight.fill_(2.0)
        net.bn1.bias.fill_(0.5)
    values = torch.linspace(-2, 2, 8)
    got = constant_inputs(net, _group(net, "conv1"), {"conv1": values})["conv2"]
    bn = (values - net.bn1.running_mean) / torch.sqrt(net.bn1.running_var + net.bn1.eps) * 2.0 + 0.5
    assert torch.allclose(got, torch.relu(bn), atol=1e-6)


def test_constant_inputs_add_up_the_writers_of_a_residual_stream():
    net = ResidualMLP()
    a, b = torch.linspace(-1, 1, 6), torch.linspace(1, -2, 6)
    got = constant_inputs(net, _group(net, "stream:a"), {"a": a, "b": b})
    torch.testing.assert_close(got["b"], a)
    torch.testing.assert_close(got["head"], a + torch.relu(b))


def test_selecting_a_channel_dead_in_every_writer_of_a_stream_keeps_the_output():
    torch.manual_seed(0)
    net = ResidualMLP()
    with torch.no_grad():
        net.a.weight[2] = 0
        net.b.weight[2] = 0
    x = torch.randn(5, 6)
    before = net(x)
    group = _group(net, "stream:a")
    constants = constant_inputs(net, group, {"a": net.a.bias.detach(), "b": net.b.bias.detach()})
    assert select(net, group, torch.arange(6) != 2, constants) == 1
    assert net.a.out_features == net.b.in_features == net.b.out_features == net.head.in_features == 5
    torch.testing.assert_close(net(x), before)


def test_reshape_to_rebuilds_a_narrowed_models_shapes():
    net = _net_with_dead_channels()
    _remove_dead(net, "conv1")
    _remove_dead(net, "conv2")
    fresh = reshape_to(ConvBNNet(), {k: tuple(v.shape) for k, v in net.state_dict().items()})
    fresh.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(fresh.eval()(x), net(x))


def test_reshape_to_adds_a_bias_created_by_a_fold():
    net = nn.Sequential(nn.Linear(4, 3, bias=False))
    shapes = {"0.weight": (3, 2), "0.bias": (3,)}
    reshape_to(net, shapes)
    assert net[0].bias.shape == (3,) and net[0].in_features == 2
