"""convert(): a trained self-compressing model -> a narrower plain model and its packed artifact.

1. Each quantised layer's weight becomes its quantised value 2^e * W_int (the training-time
   forward, bit for bit), and its integers and scales 2^e are kept for storage.
2. Dead channels (every integer 0 in every layer writing them) are removed from their coupling
   group, the graph folding uses, their constant output folded into the consumers' biases; units
   that every consumer ignores (all-zero input slices) go too (selfcompress/removal.py,
   docs/self-compression.md#removing-dead-channels). Channels of groups that cannot be narrowed
   (a concatenation, the model's output, untraceable models) stay, at 0 payload bits.
3. The integers are bit-packed per channel at their own width (generators/channel_int.py); every
   other tensor is stored raw. The result saves through the artifact format like any other.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from big2small.compress import CompressedModel, compress
from big2small.errors import Big2SmallError
from big2small.generators.channel_int import ChannelIntConfig, encode_integers
from big2small.layout import MatrixLayout
from big2small.recipe import Recipe
from big2small.selfcompress.quantizer import quantized_layers
from big2small.selfcompress.removal import remove_dead_channels
from big2small.transforms.records import ChannelRemovalRecord


@dataclass
class LayerSummary:
    """One quantised layer after conversion."""

    name: str
    channels_before: int
    channels_after: int
    dead_kept: int  # dead channels that stay because their group cannot be narrowed
    nominal_bits: float  # sum_i relu(b_i) * w_l over the channels before removal (the paper's measure)
    stored_bits: int  # payload + per-channel headers + tensor header, after removal
    weights_before: int
    weights_after: int


@dataclass
class SelfCompressed:
    """What convert() returns: the narrowed model, its stored form, and a summary."""

    model: nn.Module
    compressed: CompressedModel
    layers: list[LayerSummary]
    reference_bits: int  # the original model's state_dict in its own dtypes (fp32): what a plain save takes
    unremovable: dict[str, str] = field(default_factory=dict)  # coupling group -> why its dead channels stay

    @property
    def bits_total(self) -> int:
        """Every stored bit: packed layers, their headers and the raw tensors."""
        return self.compressed.size().bits_total

    @property
    def bits_share(self) -> float:
        """Stored bits over the original model's bits (its whole state_dict, BatchNorm statistics
        included, in fp32)."""
        return self.bits_total / self.reference_bits

    @property
    def nominal_bits(self) -> float:
        return sum(l.nominal_bits for l in self.layers)

    @property
    def weights_share(self) -> float:
        """Weights left in the quantised layers after channel removal, over the original count."""
        return sum(l.weights_after for l in self.layers) / max(sum(l.weights_before for l in self.layers), 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bits_total": self.bits_total,
            "bits_share": self.bits_share,
            "nominal_bits": self.nominal_bits,
            "weights_share": self.weights_share,
            "reference_bits": self.reference_bits,
            "n_parameters_original": self.compressed.n_parameters,
            "n_parameters_after": sum(p.numel() for p in self.model.parameters()),
            "layers": [vars(l) for l in self.layers],
            "unremovable": self.unremovable,
        }


@torch.no_grad()
def convert(model: nn.Module, *, remove: bool = True, raw_dtype: str = "float32", source: Any = None) -> SelfCompressed:
    """Turn a model prepared by `prepare` (and trained) into a narrower plain model and its artifact.

    The input model is left untouched. raw_dtype: storage of the tensors that are not quantised
    (biases, BatchNorm, skipped layers); float32 keeps the exported model's outputs identical to
    the training-time forward in eval mode.
    """
    layers = list(quantized_layers(model))
    if not layers:
        raise Big2SmallError("selfcompress: model is not prepared (nothing to convert)")
    n_parameters = sum(p.numel() for name, p in model.named_parameters() if not _is_quantizer_state(name))
    reference_bits = state_dict_bits({k: v for k, v in model.state_dict().items() if not _is_quantizer_state(k)})
    nominal = {name: float(q.channel_bits().sum()) * q.weights_per_channel for name, _, q in layers}
    plain = copy.deepcopy(model)
    scales: dict[str, torch.Tensor] = {}
    before: dict[str, tuple[int, int]] = {}
    for name, module, quantizer in list(quantized_layers(plain)):
        # The scale exactly as the forward computed it (same op on the same tensor shape).
        scales[name] = torch.exp2(quantizer.exponent.detach()).reshape(-1).clone()
        _bake(module)
        before[name] = (module.weight.shape[0], module.weight.numel())
    for attr in ("_big2small_selfcompress", "_big2small_feeds"):
        if hasattr(plain, attr):
            delattr(plain, attr)
    plain.eval()

    unremovable = remove_dead_channels(plain, scales) if remove else {}
    modules = dict(plain.named_modules())
    encoded = {}
    for name, scale_vector in scales.items():
        weight = modules[name].weight
        layout = MatrixLayout(tuple(weight.shape))
        matrix = layout.to_matrix(weight.float())
        scale = scale_vector.unsqueeze(1)
        # Exact: the weight is scale * integer with |integer| < 2^16 (zeros kept apart in case a dead
        # channel's scale underflowed to 0).
        integers = torch.where(matrix == 0, torch.zeros_like(matrix), torch.round(matrix / scale))
        if not torch.equal(scale * integers, matrix):  # the stored form must reproduce the weight exactly
            bad = (scale * integers != matrix).any(1)
            raise Big2SmallError(
                f"internal: {name} does not decode exactly from its integers ({int(bad.sum())} channels); please report")
        encoded[f"{name}.weight"] = encode_integers(integers.to(torch.int64).cpu(), scale_vector.cpu(), layout, ChannelIntConfig())
    removed = {name: before[name][0] - modules[name].weight.shape[0] for name in scales}
    cm = compress(plain, Recipe(default=None, raw_dtype=raw_dtype, min_numel=0), source=source, progress=False,
                  pre_encoded=encoded, pre_encoded_reason="self-compressed",
                  transforms=[ChannelRemovalRecord(removed)], n_parameters=n_parameters)
    summaries = []
    for name in scales:
        enc = encoded[f"{name}.weight"]
        dead_kept = int(((enc.tensors["nbits"] == 0) & (enc.tensors["mins"] == 0)).sum())
        summaries.append(LayerSummary(
            name=name, channels_before=before[name][0], channels_after=enc.layout.rows,
            dead_kept=dead_kept, nominal_bits=nominal[name], stored_bits=enc.total_bits,
            weights_before=before[name][1], weights_after=enc.layout.numel,
        ))
    return SelfCompressed(plain, cm, summaries, reference_bits, unremovable)


def _is_quantizer_state(name: str) -> bool:
    return name.endswith((".bits", ".exponent")) and ".parametrizations." in name


def state_dict_bits(state: dict[str, torch.Tensor]) -> int:
    """Bits of a state_dict as stored plainly: every tensor at its own dtype's width."""
    return sum(t.numel() * t.element_size() * 8 for t in state.values())


def _bake(module: nn.Module) -> None:
    """Replace a deep-copied parametrised weight by its quantised value.

    Not torch's remove_parametrizations: a deep copy shares its generated class with the original,
    and that function deletes the weight property from the class, which would break the user's
    training model."""
    weight = module.weight.detach().clone()
    plain_class = parametrize.type_before_parametrizations(module)
    del module._modules["parametrizations"]
    module.__class__ = plain_class
    module.register_parameter("weight", nn.Parameter(weight))
