"""How a matrix view is cut into groups of weights that share metadata (a scale, a zero-point).

A group is `group_size` consecutive weights along a row (the last group of a row is shorter);
`group_size=0` means one group per row. When a row is shorter than a group, a group spans
floor(group_size / cols) whole rows, so that small kernels (e.g. depthwise [C, 9]) are not
charged one scale per handful of weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from big2small.layout import MatrixLayout


@dataclass(frozen=True)
class Grouping:
    """How the [rows, cols] matrix is cut into groups: a [n_rows, row_len] view padded to
    [n_rows, groups_per_row * group_len]."""

    rows_per_group_row: int
    n_rows: int
    row_len: int
    group_len: int

    @property
    def groups_per_row(self) -> int:
        return math.ceil(self.row_len / self.group_len)

    @property
    def n_groups(self) -> int:
        return self.n_rows * self.groups_per_row


def nominal_group_len(layout: MatrixLayout, group_size: int) -> int:
    """Weights per group as `group_size` defines it: group_size, or as many whole rows as fit when
    a row is shorter. It may exceed the matrix; `grouping`'s groups then stop at the matrix."""
    cols = layout.cols
    g = cols if group_size == 0 else group_size
    return g if cols >= g else max(1, g // cols) * cols


def grouping(layout: MatrixLayout, group_size: int) -> Grouping:
    """The groups of `layout` (a group never spans more rows than the matrix has, so the padded
    view is less than twice the matrix whatever `group_size` is)."""
    rows, cols = layout.rows, layout.cols
    g = nominal_group_len(layout, group_size)
    if cols >= g:
        return Grouping(1, rows, cols, g)
    per = min(g // cols, max(rows, 1))  # a group spans this many whole rows
    return Grouping(per, math.ceil(rows / per), per * cols, per * cols)


def grouped(matrix: torch.Tensor, gp: Grouping) -> torch.Tensor:
    """[rows, cols] -> [n_groups, group_len], zero-padded (zeros never move a range that includes 0,
    nor an absolute maximum)."""
    flat = matrix.reshape(-1)
    rows_total = gp.n_rows * gp.rows_per_group_row
    if rows_total * matrix.shape[1] != flat.numel():
        flat = torch.cat([flat, flat.new_zeros(rows_total * matrix.shape[1] - flat.numel())])
    m = flat.reshape(gp.n_rows, gp.row_len)
    pad = gp.groups_per_row * gp.group_len - gp.row_len
    if pad:
        m = torch.nn.functional.pad(m, (0, pad))
    return m.reshape(gp.n_groups, gp.group_len)


def ungrouped(groups: torch.Tensor, gp: Grouping, layout: MatrixLayout) -> torch.Tensor:
    m = groups.reshape(gp.n_rows, gp.groups_per_row * gp.group_len)[:, : gp.row_len]
    return m.reshape(-1)[: layout.numel].reshape(layout.rows, layout.cols)


def per_element(values: torch.Tensor, gp: Grouping, layout: MatrixLayout) -> torch.Tensor:
    """Per-group values [n_groups] spread over the matrix [rows, cols] they apply to."""
    return ungrouped(values.unsqueeze(1).expand(gp.n_groups, gp.group_len), gp, layout)


def element_counts(gp: Grouping, layout: MatrixLayout) -> torch.Tensor:
    """Number of real (unpadded) weights in each group: [n_groups]."""
    return grouped(torch.ones(layout.rows, layout.cols), gp).sum(1)
