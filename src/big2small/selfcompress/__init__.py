"""Self-compressing networks (docs/self-compression.md): training with a learnable bit depth per channel.

Drop it into your own training loop:

    from big2small import selfcompress as sc

    sc.prepare(model)                                  # per-channel quantisers on Conv/Linear layers
    optimizer = torch.optim.Adam(model.parameters())   # after prepare: b and e are parameters too
    for x, y in data:
        loss = F.cross_entropy(model(x), y) + gamma * sc.size_loss(model)
        ...
    result = sc.convert(model)                         # narrower model + packed artifact
    big2small.save(result.compressed, "model.b2s")
"""

from big2small.selfcompress.export import LayerSummary, SelfCompressed, convert
from big2small.selfcompress.quantizer import (
    ChannelQuantizer,
    SelfCompressConfig,
    SizePenalty,
    prepare,
    quantize,
    quantized_layers,
    quantizer_parameters,
    size_loss,
)

__all__ = [
    "ChannelQuantizer",
    "LayerSummary",
    "SelfCompressConfig",
    "SelfCompressed",
    "SizePenalty",
    "convert",
    "prepare",
    "quantize",
    "quantized_layers",
    "quantizer_parameters",
    "size_loss",
]
