"""Helpers shared by the generator tests: seeded tensors, a round trip, the bits-vs-bytes contract."""

import torch

from big2small.generators import REGISTRY, decode, generator_for


def randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(dtype)


def round_trip(w, cfg, layout=None):
    enc = generator_for(cfg).encode(w, layout)
    return enc, decode(enc)


def assert_bits_match_bytes(enc):
    """Stored bits (header aside) equal the payload's bytes, less under 8 bits of rounding per array."""
    stored = enc.total_bits - enc.bits.get("header", 0)
    payload = 8 * enc.payload_bytes
    assert stored <= payload
    assert payload - stored < 8 * len(enc.tensors)


def assert_stored_bits(enc, *, exact=True):
    """`bits_for` predicts the stored bits (exactly, or as an upper bound for a method whose widths
    follow the data), and the stored arrays hold them (assert_bits_match_bytes)."""
    predicted = REGISTRY[enc.method].bits_for(enc.config, enc.layout)
    if exact:
        assert enc.total_bits == predicted
    else:
        assert enc.total_bits <= predicted
    assert_bits_match_bytes(enc)
