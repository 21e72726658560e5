"""Channel groups found by torch.fx: members, consumers, spatial factors, refusals with reasons."""

import torch
from torch import nn

from big2small.transforms import channel_groups, constant_inputs


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


class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.branch(torch.relu(x))
        x = self.depthwise(x)
        return self.head(x.mean((2, 3)))


def test_conv_bn_chain_is_one_removable_group_with_its_bn_member():
    g = channel_groups(ConvBNNet()).group("conv1")
    assert g.removable and g.members == ["bn1"] and g.consumers == {"conv2": 1}


def test_flatten_into_linear_gives_the_spatial_factor():
    g = channel_groups(ConvBNNet()).group("conv2")
    assert g.removable and g.consumers == {"fc": 16}


def test_model_output_is_not_removable():
    g = channel_groups(ConvBNNet()).group("fc")
    assert not g.removable and "output" in g.reason


def test_residual_add_keeps_its_channels_and_says_why():
    report = channel_groups(ResidualNet())
    assert "residual" in report.group("stem").reason
    assert "residual" in report.group("branch").reason


def test_depthwise_conv_is_reported_not_narrowed():
    report = channel_groups(ResidualNet())
    assert "depthwise" in report.group("depthwise").reason


def test_untraceable_model_is_reported_not_raised():
    class Dynamic(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x  # data-dependent control flow

    report = channel_groups(Dynamic())
    assert report.groups == [] and "cannot trace" in report.untraceable


def test_constant_inputs_follow_bn_and_relu():
    net = ConvBNNet().eval()
    with torch.no_grad():
        net.bn1.running_mean.copy_(torch.linspace(-1, 1, 8))
        net.bn1.running_var.fill_(4.0)
        net.bn1.weight.fill_(2.0)
        net.bn1.bias.fill_(0.5)
    g = channel_groups(net).group("conv1")
    values = torch.linspace(-2, 2, 8)
    got = constant_inputs(net, g, values)["conv2"]
    bn = (values - net.bn1.running_mean) / torch.sqrt(net.bn1.running_var + net.bn1.eps) * 2.0 + 0.5
    assert torch.allclose(got, torch.relu(bn), atol=1e-6)


def test_flattened_linear_outputs_are_not_narrowed():
    class SeqNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 6)
            self.head = nn.Linear(5 * 6, 2)

        def forward(self, x):  # x: [batch, 5 tokens, 4]
            return self.head(torch.relu(self.proj(x)).flatten(1))

    g = channel_groups(SeqNet()).group("proj")
    assert not g.removable and "flattened" in g.reason
