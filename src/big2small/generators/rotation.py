"""Incoherence processing: a seeded random orthogonal transform of a matrix before it is coded.

Rotating a weight matrix by a random orthogonal Q spreads every outlier over all entries, so the
codec sees near-Gaussian weights of one scale ("rotate, then code"); decoding undoes it exactly
(Q^T Q = I), so the stored codes regenerate Q W and the decoder returns Q^T (Q W). Per dimension
of size n = a * 2^p (a odd), Q = (Q_a kron H_{2^p}) diag(signs): random signs, a fast
Walsh-Hadamard transform over the power-of-two part (O(n log n), in torch), and a dense random
orthogonal Q_a (QR of a seeded Gaussian, float64 on the CPU, so every device gets the same Q) over
the odd part. Nothing is padded, so nothing is wasted. A dimension whose odd part exceeds
`MAX_DENSE_ODD` would make Q_a too large and is left as it is (decided from the shape alone, so
the decoder knows). What is stored: the 32-bit seed, counted in the tensor's bits.

`rotate` is an option of the quantising codecs (uniform, hyper, trellis): "input" rotates along
the rows' length (the input dimension of a Linear), "both" the output dimension as well.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from big2small.errors import Big2SmallError
from big2small.generators.base import ArrayForm, Encoded, Generator, GeneratorConfig
from big2small.layout import MatrixLayout

ROTATIONS = ("none", "input", "both")
MAX_DENSE_ODD = 1024
SEED_BITS = 32


@dataclass
class RotatableConfig(GeneratorConfig):
    """A codec config that may rotate the matrix first: rotate = none | input | both."""

    rotate: str = "none"

    def validate(self) -> None:
        if self.rotate not in ROTATIONS:
            raise Big2SmallError(f"{self.method}: rotate must be one of {', '.join(ROTATIONS)}, got {self.rotate!r}")


def rotates(config: GeneratorConfig) -> bool:
    return getattr(config, "rotate", "none") != "none"


def stored_bits(config: GeneratorConfig) -> int:
    """Bits the rotation adds to a tensor: its seed, when it rotates."""
    return SEED_BITS if rotates(config) else 0


def stored_form(config: GeneratorConfig) -> dict[str, ArrayForm]:
    return {"rotation_seed": (torch.int32, (1,))} if rotates(config) else {}


def seed_tensor(seed: int) -> torch.Tensor:
    return torch.tensor([seed & 0x7FFFFFFF], dtype=torch.int32)


def rotated_dims(config: GeneratorConfig, layout: MatrixLayout) -> tuple[bool, bool]:
    """(rows rotated, columns rotated): a dimension is rotated when asked and its odd part is small."""
    mode = getattr(config, "rotate", "none")
    return (mode == "both" and _odd_part(layout.rows) <= MAX_DENSE_ODD,
            mode != "none" and _odd_part(layout.cols) <= MAX_DENSE_ODD)


def rotate(matrix: torch.Tensor, config: GeneratorConfig, layout: MatrixLayout, seed: int) -> torch.Tensor:
    """Q_rows W Q_cols^T for the dimensions `config` rotates (the matrix as it is otherwise)."""
    on_rows, on_cols = rotated_dims(config, layout)
    if on_cols:
        matrix = _apply(matrix, seed, 0, inverse=False)
    if on_rows:
        matrix = _apply(matrix.T, seed, 1, inverse=False).T
    return matrix.contiguous()


def unrotate(matrix: torch.Tensor, config: GeneratorConfig, layout: MatrixLayout, seed_array: torch.Tensor) -> torch.Tensor:
    """The inverse of `rotate`, with the seed read from its stored array."""
    seed = int(seed_array.reshape(-1)[0])
    on_rows, on_cols = rotated_dims(config, layout)
    if on_rows:
        matrix = _apply(matrix.T, seed, 1, inverse=True).T
    if on_cols:
        matrix = _apply(matrix, seed, 0, inverse=True)
    return matrix.contiguous()


def _odd_part(n: int) -> int:
    return n >> ((n & -n).bit_length() - 1) if n > 0 else 1


def _apply(x: torch.Tensor, seed: int, which: int, *, inverse: bool) -> torch.Tensor:
    """Q x along the last dimension of x [m, n] (Q^T x when inverse)."""
    n = x.shape[-1]
    odd = _odd_part(n)
    signs, q_odd = factors(n, seed, which)
    signs, q_odd = signs.to(x.device), q_odd.to(x.device)
    if inverse:
        y = (q_odd.T @ x.reshape(-1, odd, n // odd)).reshape(x.shape) if odd > 1 else x
        return hadamard(y) * signs
    y = hadamard(x * signs)
    return (q_odd @ y.reshape(-1, odd, n // odd)).reshape(x.shape) if odd > 1 else y


@functools.lru_cache(maxsize=64)
def factors(n: int, seed: int, which: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The random signs [n] and the dense orthogonal odd factor [a, a] of dimension `which`."""
    gen = torch.Generator().manual_seed((seed << 2) + which)
    signs = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
    odd = _odd_part(n)
    if odd == 1:
        return signs, torch.ones(1, 1)
    q, r = torch.linalg.qr(torch.randn(odd, odd, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # the QR's sign convention, fixed: Haar-random
    return signs, q.float()


def hadamard(x: torch.Tensor) -> torch.Tensor:
    """The normalised Walsh-Hadamard transform (H / sqrt(2^p)) of each block of 2^p consecutive
    entries along the last dimension, where 2^p is the largest power of two dividing its size.
    Orthogonal and its own inverse; log2(2^p) butterfly passes over the tensor."""
    n = x.shape[-1]
    block = n & -n
    shape = x.shape
    y = x.reshape(-1, n // block, block)
    h = 1
    while h < block:
        y = y.reshape(y.shape[0], n // block, block // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return (y.reshape(shape) / (block ** 0.5))


class RotatingGenerator(Generator):
    """Base of the codecs with a `rotate` option: encode codes the rotated matrix and stores the
    seed; decoding regenerates the rotated matrix and rotates it back. Subclasses add
    `stored_bits(config)` and `stored_form(config)` to their own bits and arrays."""

    def encode(self, weight: torch.Tensor, layout: MatrixLayout | None = None, *, seed: int = 0) -> Encoded:
        if not rotates(self.config):
            return super().encode(weight, layout, seed=seed)
        layout = layout or MatrixLayout(tuple(weight.shape))
        seed_array = seed_tensor(seed)
        matrix = rotate(self.matrix_view(weight, layout), self.config, layout, int(seed_array[0]))
        enc = self.encode_matrix(matrix, layout, seed=seed)
        enc.dtype = weight.dtype
        enc.tensors["rotation_seed"] = seed_array
        enc.bits["rotation"] = SEED_BITS
        return enc

    def codec_input(self, weight: torch.Tensor, enc: Encoded) -> torch.Tensor:
        matrix = self.matrix_view(weight, enc.layout)
        if not rotates(enc.config):
            return matrix
        return rotate(matrix, enc.config, enc.layout, int(enc.tensors["rotation_seed"].reshape(-1)[0]))

    def weight_domain(self, matrix: torch.Tensor, enc: Encoded) -> torch.Tensor:
        if not rotates(enc.config):
            return matrix
        return unrotate(matrix, enc.config, enc.layout, enc.tensors["rotation_seed"])
