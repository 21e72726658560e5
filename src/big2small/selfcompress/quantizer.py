"""Quantisation-aware training with a learnable bit depth b and exponent e per output channel.

The quantiser is a `torch.nn.utils.parametrize` parametrisation of each layer's `weight`
(docs/README.md#the-generator-view: self-compression is the generator parametrisation with trainable phi), so the
user's model keeps its class and its forward; the fp32 shadow weights live at
`parametrizations.weight.original`, and b and e are ordinary parameters that any optimiser sees.

    q(x, b, e) = 2^e * round(clamp(2^-e x, -2^(b-1), 2^(b-1) - 1))       (docs/self-compression.md#the-quantiser)

with the straight-through estimator for the rounding; the formula is the stored format's own
(`big2small.generators.channel_int.quantize`), so export reproduces the forward bit for bit. A
channel whose b reaches 0 outputs exactly zero, gets no gradient any more, and is removed by `convert`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from big2small.config import Config
from big2small.errors import Big2SmallError
from big2small.generators.channel_int import MAX_CHANNEL_BITS, fitted_exponents, quantize
from big2small.transforms import find_groups

QUANTIZED_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class SelfCompressConfig(Config):
    """How `prepare` sets up the quantisers (a versioned config, big2small.config).

    init_bits: b0, the starting bit depth (2 from scratch as in the reference code; 8 when starting
        from a pretrained model).
    init_exponent: None (default) fits each channel's exponent to its initial weights at b0, so a
        pretrained model starts near-lossless (docs/self-compression.md#initialisation, our design). A number sets e0 for
        every channel: the reference code's -8 clips almost every freshly initialised weight, and
        Adam moves e by about lr per step, so it learns nothing for thousands of steps (measured:
        on Fashion-MNIST, 9.6% validation accuracy after 40 steps with -8; 81% after 78 fitted).
    min_bits: floor on b during training (0 lets channels die, as in the paper).
    count_live_inputs: size_loss counts only inputs whose channel is still alive in some layer that
        writes it (for the consumers of the coupling groups that can be narrowed; big2small.transforms.graph).
    skip: regexes (or exact module names) of layers to leave in floating point.
    """

    init_bits: float = 2.0
    init_exponent: float | None = None
    min_bits: float = 0.0
    count_live_inputs: bool = False
    skip: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not 0 < self.init_bits <= MAX_CHANNEL_BITS:
            raise Big2SmallError(f"selfcompress: init_bits must be in (0, {MAX_CHANNEL_BITS}], got {self.init_bits}")
        if not 0 <= self.min_bits <= self.init_bits:
            raise Big2SmallError(f"selfcompress: min_bits must be in [0, init_bits], got {self.min_bits}")
        for pattern in self.skip:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise Big2SmallError(f"selfcompress: bad skip pattern {pattern!r}: {exc}") from None

    def skips(self, name: str) -> bool:
        return any(p == name or re.fullmatch(p, name) for p in self.skip)


class ChannelQuantizer(nn.Module):
    """The parametrisation weight -> q(weight, b, e), one b and e per output channel."""

    def __init__(self, weight: torch.Tensor, init_bits: float, init_exponent: float | None, min_bits: float = 0.0):
        super().__init__()
        out = weight.shape[0]
        view = (out,) + (1,) * (weight.ndim - 1)
        if init_exponent is None:
            e0 = fitted_exponents(weight.detach().float().reshape(out, -1), init_bits)
        else:
            e0 = torch.full((out,), float(init_exponent))
        self.bits = nn.Parameter(torch.full(view, float(init_bits), device=weight.device))
        self.exponent = nn.Parameter(e0.reshape(view).to(weight.device))
        self.min_bits = float(min_bits)
        self.weights_per_channel = weight[0].numel()  # w_l = (I/groups) * prod(kernel)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return quantize(weight, self._floored_bits(), self.exponent)

    def channel_bits(self) -> torch.Tensor:
        """relu(b) per channel, [O] (differentiable)."""
        return torch.relu(self._floored_bits()).reshape(-1)

    def _floored_bits(self) -> torch.Tensor:
        return self.bits if self.min_bits <= 0 else self.bits.clamp(min=self.min_bits)


def prepare(model: nn.Module, config: SelfCompressConfig | None = None) -> nn.Module:
    """Give every Conv/Linear layer of `model` (in place) a per-channel quantiser; returns `model`.

    Create the optimiser after this call, so that it sees the new b and e parameters.
    """
    config = config or SelfCompressConfig()
    config.validate()
    targets = [(n, m) for n, m in model.named_modules() if isinstance(m, QUANTIZED_TYPES) and not config.skips(n)]
    if not targets:
        raise Big2SmallError("selfcompress: the model has no Conv or Linear layer to quantise")
    if config.count_live_inputs:
        model._big2small_feeds = {m.param.rpartition(".")[0]: (g.size, tuple(g.sources))
                                  for g in find_groups(model).narrowable for m in g.consumers()}
    for name, module in targets:
        if parametrize.is_parametrized(module, "weight"):
            raise Big2SmallError(f"selfcompress: {name}.weight is already parametrised (prepared twice?)")
        if not torch.isfinite(module.weight).all():
            raise Big2SmallError(f"selfcompress: {name}.weight has NaN or Inf values")
        quantizer = ChannelQuantizer(module.weight, config.init_bits, config.init_exponent, config.min_bits)
        parametrize.register_parametrization(module, "weight", quantizer, unsafe=True)
    model._big2small_selfcompress = config  # read by size_loss (count_live_inputs) and convert
    return model


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module, ChannelQuantizer]]:
    """(name, module, quantizer) of every prepared layer, in module order."""
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, ChannelQuantizer):
                    yield name, module, p


def quantizer_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The b and e parameters (e.g. to exclude them from weight decay)."""
    return [p for _, _, q in quantized_layers(model) for p in (q.bits, q.exponent)]


def size_loss(model: nn.Module) -> torch.Tensor:
    """Q: the average bits per weight of the quantised layers, (1/N) sum_l w_l sum_i relu(b_l,i)
    (docs/self-compression.md#the-size-loss). Differentiable in b; add gamma * size_loss(model) to the task loss."""
    layers = list(quantized_layers(model))
    if not layers:
        raise Big2SmallError("selfcompress: model is not prepared (call big2small.selfcompress.prepare first)")
    config: SelfCompressConfig = getattr(model, "_big2small_selfcompress", SelfCompressConfig())
    total = sum(m.parametrizations.weight.original.numel() for _, m, _ in layers)
    live_inputs = _live_input_fractions(model, layers) if config.count_live_inputs else {}
    q = 0.0
    for name, _, quantizer in layers:
        per_channel = quantizer.weights_per_channel * live_inputs.get(name, 1.0)
        q = q + per_channel * quantizer.channel_bits().sum()
    return q / total


class SizePenalty:
    """Self-compression as a training regulariser (big2small.training.Regulariser): the size loss Q
    in bits per weight, trained through the quantisers' b and e."""

    def __init__(self, model: nn.Module):
        if not any(True for _ in quantized_layers(model)):
            raise Big2SmallError("selfcompress: model is not prepared (call big2small.selfcompress.prepare first)")
        self.model = model

    def parameters(self) -> list[nn.Parameter]:
        return quantizer_parameters(self.model)

    def loss(self) -> torch.Tensor:
        return size_loss(self.model)

    @torch.no_grad()
    def dead_channels(self) -> int:
        """Channels whose bit depth is 0 (they output exactly zero)."""
        return sum(int((q.channel_bits() <= 0).sum()) for _, _, q in quantized_layers(self.model))


def _live_input_fractions(model: nn.Module, layers: list[tuple[str, nn.Module, ChannelQuantizer]]) -> dict[str, float]:
    """Share of each layer's input units alive in at least one of the quantised layers that write
    them (a coupling group found at prepare time: consumer -> (units, source layers))."""
    feeds: dict[str, tuple[int, tuple[str, ...]]] = getattr(model, "_big2small_feeds", {})
    quantizers = {name: q for name, _, q in layers}
    out = {}
    with torch.no_grad():
        for consumer, (units, sources) in feeds.items():
            if consumer in quantizers and all(s in quantizers for s in sources):
                alive = torch.stack([(quantizers[s].channel_bits() > 0).reshape(units, -1).any(1) for s in sources]).any(0)
                out[consumer] = float(alive.float().mean())
    return out
