"""Shared fixtures: small real-architecture models built in memory (no downloads)."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class SmallNet(nn.Module):
    """Every layer kind the codecs handle: conv, depthwise conv, BatchNorm, Linear, Embedding."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(300, 32)
        self.conv = nn.Conv2d(3, 64, 3, padding=1)
        self.bn = nn.BatchNorm2d(64)
        self.depthwise = nn.Conv2d(64, 64, 3, padding=1, groups=64)
        self.conv1d = nn.Conv1d(64, 96, 5)
        self.fc = nn.Linear(96 * 4, 80)
        self.head = nn.Linear(80, 10)

    def forward(self, x):
        y = self.depthwise(torch.relu(self.bn(self.conv(x))))
        y = self.conv1d(y.mean(2))[..., :4].flatten(1)
        return self.head(torch.relu(self.fc(y)))


@pytest.fixture
def small_net():
    torch.manual_seed(0)
    net = SmallNet().eval()
    with torch.no_grad():  # non-trivial BN statistics, so that raw storage is exercised
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    return net


@pytest.fixture
def tiny_gpt2_dir(tmp_path):
    """A tiny randomly initialised GPT-2 (HF Conv1D layers, tied embeddings) saved as an HF directory."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=64)
    model = GPT2LMHeadModel(config).eval()
    path = tmp_path / "tiny-gpt2"
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def peaked_llama_dir(tmp_path_factory):
    """A tiny LLaMA saved as an HF directory, with peaked next-token distributions (a random one
    predicts almost uniform ones, whose KL to anything is near 0: nothing for distillation to
    repair or match)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(40)
    path = tmp_path_factory.mktemp("peaked") / "tiny-llama"
    model.save_pretrained(path)
    return path
