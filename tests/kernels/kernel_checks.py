"""What every codec's kernels must do: decode exactly as the codec does, and multiply as
decode-then-matmul does (up to float rounding)."""

from __future__ import annotations

import torch

from big2small.generators import GeneratorConfig, generator_for
from big2small.generators.base import Encoded
from big2small.kernels import kernel_for


def check_kernels(options: dict, shape: tuple[int, int], seed: int = 0, batch: int = 3) -> None:
    """Encode a random [rows, cols] matrix with `options`, then check_encoded."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=gen) * torch.rand(shape[0], 1, generator=gen)  # rows of different scales
    codec = generator_for(GeneratorConfig.from_dict(options))
    check_encoded(codec.encode(weight, seed=seed), batch=batch, gen=gen)


def check_encoded(enc: Encoded, batch: int = 3, gen: torch.Generator | None = None) -> None:
    """With the kernels' serial build (one thread) and their parallel build (two threads) alike:
    the kernel's decode_matrix is the codec's decode_matrix bit for bit, and its matmul is
    x @ W^T within float tolerance, for x of `batch` rows (random, from `gen`)."""
    codec = generator_for(enc.config)
    kernel = kernel_for(enc)
    assert kernel is not None
    tensors = kernel.resident(enc)
    reference = codec.decode_matrix(enc)
    x = torch.randn(batch, enc.layout.cols, generator=gen or torch.Generator().manual_seed(0))
    expected = x.double() @ reference.double().T
    scale = x.double().abs() @ reference.double().abs().T  # the size of the sum's terms bounds its rounding
    for prepared in [None, *(kernel.arrays(tensors, enc, threads=threads) for threads in (1, 2))]:  # None: matmul prepares its arguments itself
        assert torch.equal(kernel.decode_matrix(tensors, enc, prepared), reference)
        got = kernel.matmul(tensors, enc, x, prepared)
        assert got.shape == (batch, enc.layout.rows) and got.dtype == torch.float32
        assert torch.all((got.double() - expected).abs() <= 1e-5 * scale + 1e-6), (got - expected).abs().max()
