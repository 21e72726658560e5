"""Storage codecs: every method re-encodes one tensor into compact stored tensors (phi).

Importing this package registers every method, so `GeneratorConfig.from_dict` and `generator_for`
know all of them.
"""

from big2small.generators import channel_int, hyper, hyper_ref, inr, lowrank, raw, rotation, sparse, trellis, uniform
from big2small.generators.base import (
    HEADER_BITS,
    REGISTRY,
    Encoded,
    Generator,
    GeneratorConfig,
    decode,
    generator_for,
)
from big2small.generators.channel_int import ChannelIntConfig, ChannelIntGenerator
from big2small.generators.hyper import HyperConfig, HyperGenerator
from big2small.generators.hyper_ref import HyperRefConfig, HyperRefGenerator
from big2small.generators.inr import INRConfig, INRGenerator
from big2small.generators.lowrank import LowRankConfig, LowRankGenerator
from big2small.generators.raw import RawConfig, RawGenerator
from big2small.generators.sparse import PruneConfig, PruneGenerator
from big2small.generators.trellis import TrellisConfig, TrellisGenerator
from big2small.generators.uniform import UniformConfig, UniformGenerator

__all__ = [
    "HEADER_BITS",
    "REGISTRY",
    "ChannelIntConfig",
    "ChannelIntGenerator",
    "Encoded",
    "Generator",
    "GeneratorConfig",
    "HyperConfig",
    "HyperGenerator",
    "HyperRefConfig",
    "HyperRefGenerator",
    "INRConfig",
    "INRGenerator",
    "LowRankConfig",
    "LowRankGenerator",
    "PruneConfig",
    "PruneGenerator",
    "RawConfig",
    "RawGenerator",
    "TrellisConfig",
    "TrellisGenerator",
    "UniformConfig",
    "UniformGenerator",
    "channel_int",
    "decode",
    "generator_for",
    "hyper",
    "hyper_ref",
    "inr",
    "lowrank",
    "raw",
    "rotation",
    "sparse",
    "trellis",
    "uniform",
]
