"""Small models with the structures the coupling graph must handle (shared by the transforms,
folding and self-compression tests)."""

import torch
from torch import nn


class MBConvNet(nn.Module):
    """Stem, an inverted-residual block (expand, depthwise, project, residual add), a
    squeeze-and-excitation gate, and a classifier."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.expand = nn.Conv2d(8, 24, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24, bias=False)
        self.bn2 = nn.BatchNorm2d(24)
        self.se_reduce = nn.Conv2d(24, 4, 1)
        self.se_expand = nn.Conv2d(4, 24, 1)
        self.project = nn.Conv2d(24, 8, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        h = torch.relu(self.bn1(self.expand(x)))
        h = torch.relu(self.bn2(self.dw(h)))
        s = self.se_expand(torch.relu(self.se_reduce(nn.functional.adaptive_avg_pool2d(h, 1))))
        h = torch.sigmoid(s) * h
        x = x + self.bn3(self.project(h))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ResidualMLP(nn.Module):
    """h = a(x); out = head(h + relu(b(h))): a and b write one residual stream."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        h = self.a(x)
        return self.head(h + torch.relu(self.b(h)))


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 4, 1)
        self.c = nn.Conv2d(8, 2, 1)
        self.d = nn.Conv2d(3, 4, 1)
        self.e = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], 1)) + self.e(self.d(x))


class FlattenNet(nn.Module):
    """Conv features flattened into a Linear layer (spatial factor 16)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc1 = nn.Linear(6 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def tiny_llama(kv_heads: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=8, max_position_embeddings=64)
    return LlamaForCausalLM(config).eval()


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=64)
    return BertModel(config).eval()
