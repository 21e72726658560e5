"""The Fashion-MNIST networks of the zoo (Debian's data set): the folding benchmark's ResNet and
the self-compression recipe's CNN.

FashionResNet: three stages of two BasicBlocks (16, 32, 64 channels; 28 -> 14 -> 7 pixels),
projection shortcuts where the width changes, global average pooling and a linear classifier:
about 175k parameters, BatchNorm after every conv. It has residual streams, so folding has to
merge whole streams at once (docs/folding.md#coupling-groups). Its trained weights are cached as safetensors
(`trained_resnet`), so benchmarks train it once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from big2small.cache import cache_dir
from big2small.evaluate.classification import accuracy
from big2small.evaluate.data import fashion_mnist_splits
from big2small.models.source import ModelSource
from big2small.training import TrainConfig, train

RESNET_FACTORY = "big2small.models.zoo.fashion:fashion_resnet"
CNN_FACTORY = "big2small.models.zoo.fashion:fashion_cnn"


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or inputs != outputs:
            self.shortcut = nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class FashionResNet(nn.Module):
    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), blocks: int = 2, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        layers, inputs = [], widths[0]
        for stage, width in enumerate(widths):
            stride = 1 if stage == 0 else 2
            layers.append(nn.Sequential(*[BasicBlock(inputs if b == 0 else width, width, stride if b == 0 else 1)
                                          for b in range(blocks)]))
            inputs = width
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def fashion_resnet() -> FashionResNet:
    """The benchmark's ResNet at full width (the skeleton a folded artifact is restored into)."""
    return FashionResNet()


class FashionCNN(nn.Module):
    """The self-compression recipe's network (after the reference code): three conv blocks without
    bias, each followed by a non-affine BatchNorm and a ReLU (28 -> 14 -> 7 -> 3 pixels), and a
    linear classifier; about 105k weights. A channel costs only its weights and two BatchNorm
    statistics."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), classes: int = 10):
        super().__init__()
        c1, c2, c3 = widths
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1, affine=False)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2, affine=False)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c3, affine=False)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.ReLU()
        self.classifier = nn.Linear(c3 * 3 * 3, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act(self.bn1(self.conv1(x))))
        x = self.pool(self.act(self.bn2(self.conv2(x))))
        x = self.pool(self.act(self.bn3(self.conv3(x))))
        return self.classifier(torch.flatten(x, 1))


def fashion_cnn() -> FashionCNN:
    """The self-compression network at full width (the skeleton its artifacts are restored into)."""
    return FashionCNN()


def fashion_cnn_source() -> ModelSource:
    return ModelSource("module", "fashion-cnn", task="fashion-mnist-classifier", factory=CNN_FACTORY,
                       module_class=f"{FashionCNN.__module__}.FashionCNN")


def trained_resnet(*, epochs: int = 4, seed: int = 0, progress: bool = True,
                   path: Path | None = None) -> tuple[FashionResNet, dict]:
    """The ResNet trained on the 55,000 training images (Adam at lr 1e-3, batch 256, `epochs` epochs),
    loaded from the cache if it was trained before with the same settings. Returns the model (eval
    mode) and its record: settings, validation and test accuracy, training seconds."""
    path = path or cache_dir() / f"fashion-resnet-e{epochs}-s{seed}.safetensors"
    record_path = path.with_suffix(".json")
    model = fashion_resnet()
    if path.exists() and record_path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval(), json.loads(record_path.read_text())
    data = fashion_mnist_splits()
    torch.manual_seed(seed)
    start = time.perf_counter()
    history = train(model, *data.train, TrainConfig(epochs=epochs, gamma=0.0, seed=seed, lr=1e-3), val=data.val,
                    progress=progress, description="ResNet on Fashion-MNIST")
    seconds = time.perf_counter() - start
    model.eval()
    record = {"epochs": epochs, "seed": seed, "lr": 1e-3, "train_seconds": seconds,
              "val_accuracy": history[-1].val_accuracy, "test_accuracy": accuracy(model, *data.test).top1,
              "parameters": sum(p.numel() for p in model.parameters())}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(path)
    record_path.write_text(json.dumps(record, indent=2))
    return model, record
