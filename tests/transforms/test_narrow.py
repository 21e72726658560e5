"""Removing channels: shapes shrink, dead channels' constants fold into biases, reload by shape."""

import copy

import torch
from torch import nn

from big2small.transforms import channel_groups, constant_inputs, remove_channels, reshape_to
from test_coupling import ConvBNNet


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
    g = channel_groups(net).group(producer)
    module = dict(net.named_modules())[producer]
    dead = (module.weight.reshape(g.width, -1) == 0).all(1)
    constants = constant_inputs(net, g, module.bias.detach())
    return remove_channels(net, g, ~dead, constants)


def test_removing_dead_channels_narrows_producer_members_and_consumers():
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
    import pytest

    from big2small.errors import Big2SmallError

    net = ConvBNNet()
    g = channel_groups(net).group("conv1")
    with pytest.raises(Big2SmallError, match="refusing"):
        remove_channels(net, g, torch.zeros(8, dtype=torch.bool))


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
