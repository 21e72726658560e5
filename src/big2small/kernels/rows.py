"""How compiled kernels walk a row of the matrix view: as segments, one per group it holds.

The codecs' groups (generators.grouping): with one group row per matrix row (`per` == 1) a row
holds `n_seg` groups of `group_len` consecutive weights (the last one shorter); otherwise a group
spans `per` whole rows and each row is one segment of group r // per. A kernel reads a segment's
group metadata (scale, zero-point) once and its codes in one pass.
"""

from __future__ import annotations

import numba

from big2small.generators.grouping import Grouping


def segment_plan(gp: Grouping) -> tuple[int, int, int]:
    """(per, group_len, n_seg): the integers `segment` needs for the groups `gp`."""
    return gp.rows_per_group_row, gp.group_len, gp.groups_per_row if gp.rows_per_group_row == 1 else 1


@numba.njit(inline="always", cache=True)
def segment(r, j, cols, per, group_len, n_seg):  # pragma: no cover - compiled; tested through the kernels
    """Segment j of row r: (first column, end column, group index, flat index where its group starts)."""
    if per == 1:
        c0 = j * group_len
        return c0, min(c0 + group_len, cols), r * n_seg + j, r * cols + c0
    return 0, cols, r // per, (r // per) * per * cols
