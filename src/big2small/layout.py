"""The matrix view of a weight tensor, which the per-row and per-group logic works on.

Linear [O, I] stays as it is; Conv [O, I/groups, *k] becomes [O, (I/groups) * prod(k)];
Embedding [V, D] keeps tokens as rows; Hugging Face GPT-style ``Conv1D`` stores [I, O] and is
transposed first, so that rows are always output channels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MatrixLayout:
    """How a tensor of `shape` maps to its [rows, cols] matrix view."""

    shape: tuple[int, ...]
    transposed: bool = False  # True for HF Conv1D, which stores [in, out]

    @property
    def rows(self) -> int:
        if not self.shape:
            return 1
        return self.shape[-1] if self.transposed else self.shape[0]

    @property
    def cols(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n // self.rows if self.rows else 0

    @property
    def numel(self) -> int:
        return self.rows * self.cols

    def to_matrix(self, w: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            w = w.t()
        return w.reshape(self.rows, self.cols)

    def from_matrix(self, m: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return m.reshape(self.shape[1], self.shape[0]).t().contiguous()
        return m.reshape(self.shape)
