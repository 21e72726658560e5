"""Small networks for the self-compression tests, prepared with chosen channels dead."""

import torch
from torch import nn

from big2small.selfcompress import SelfCompressConfig, prepare, quantized_layers


class BiasNet(nn.Module):
    """Conv with bias + affine BN (dead channels emit a non-zero constant) feeding a Linear."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, stride=2)
        self.bn2 = nn.BatchNorm2d(12)
        self.fc = nn.Linear(12 * 3 * 3, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
        return self.fc(x.flatten(1))


def prepared(net: nn.Module, dead: dict[str, list[int]]) -> nn.Module:
    """`net` with random BatchNorm statistics, prepared at 6 bits, the `dead` channels of each
    layer at b < 0 (they output 0); in eval mode."""
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                if m.affine:
                    m.weight.uniform_(0.5, 2)
                    m.bias.uniform_(-1, 1)
    prepare(net, SelfCompressConfig(init_bits=6.0, init_exponent=None))
    layers = {name: q for name, _, q in quantized_layers(net)}
    with torch.no_grad():
        for name, rows in dead.items():
            layers[name].bits.view(-1)[rows] = -1.0
    return net.eval()
