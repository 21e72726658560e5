"""Choose one option per item to minimise the summed cost under a bit budget (a multiple-choice
knapsack), the core of bit allocation.

Each item (a tensor) has options (configurations), each with its exact stored bits and a predicted
cost (the output error it adds). The solver walks every item's lower convex hull, taking the
upgrades that buy the most cost per bit first (the Lagrangian optimum), then fills what is left
of the budget with the best upgrades that still fit, hull or not. The result never exceeds the
budget; with many items whose steps are small against it, it lands just under.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from big2small.errors import Big2SmallError


@dataclass(frozen=True)
class Option:
    """One way to store an item: its exact stored bits and its predicted cost (any additive unit)."""

    bits: int
    cost: float


def choose(items: list[list[Option]], budget_bits: int) -> list[int]:
    """The index of the chosen option of each item; sum of bits <= budget_bits.

    Raises Big2SmallError when even the smallest option of every item exceeds the budget.
    """
    if any(not options for options in items):
        raise ValueError("every item needs at least one option")
    chosen = [min(range(len(opts)), key=lambda j: (opts[j].bits, opts[j].cost)) for opts in items]
    used = sum(items[i][j].bits for i, j in enumerate(chosen))
    if used > budget_bits:
        raise Big2SmallError(f"the smallest options take {used} bits, over the budget of {budget_bits}")
    hulls = [_lower_hull(opts) for opts in items]
    # Hull walk: the steepest next step of every item in one heap, ordered by cost saved per bit.
    position = [0] * len(items)  # index into the item's hull (hull[0] is its smallest option)
    heap = []
    for i, hull in enumerate(hulls):
        _push_step(heap, i, hull, 0, items[i])
    while heap:
        _, i, at = heapq.heappop(heap)
        if at != position[i]:
            continue  # stale entry
        hull = hulls[i]
        extra = items[i][hull[at + 1]].bits - items[i][hull[at]].bits
        if used + extra > budget_bits:
            continue  # this item's later steps cost more still: it stays where it is for now
        used += extra
        position[i] = at + 1
        chosen[i] = hull[at + 1]
        _push_step(heap, i, hull, at + 1, items[i])
    return _fill(items, chosen, budget_bits - used)


def _lower_hull(options: list[Option]) -> list[int]:
    """Indices of the options on the lower convex hull of (bits, cost), by increasing bits, each
    strictly cheaper than the one before."""
    order = sorted(range(len(options)), key=lambda j: (options[j].bits, options[j].cost))
    frontier: list[int] = []
    for j in order:  # Pareto front: more bits must buy less cost
        if not frontier or options[j].cost < options[frontier[-1]].cost:
            if frontier and options[j].bits == options[frontier[-1]].bits:
                frontier[-1] = j
            else:
                frontier.append(j)
    hull: list[int] = []
    for j in frontier:
        while len(hull) >= 2 and _slope(options, hull[-2], hull[-1]) >= _slope(options, hull[-1], j):
            hull.pop()  # hull[-1] lies on or above the chord: never the best at any price
        hull.append(j)
    return hull


def _slope(options: list[Option], a: int, b: int) -> float:
    """Cost change per bit from option a to option b (negative on the front)."""
    return (options[b].cost - options[a].cost) / (options[b].bits - options[a].bits)


def _push_step(heap: list, i: int, hull: list[int], at: int, options: list[Option]) -> None:
    if at + 1 < len(hull):
        heapq.heappush(heap, (_slope(options, hull[at], hull[at + 1]), i, at))


def _fill(items: list[list[Option]], chosen: list[int], left: int) -> list[int]:
    """Spend the bits left on the upgrades (any option, not only the hull's) that save the most cost
    per bit and still fit, until none fits."""
    while True:
        best = None
        for i, options in enumerate(items):
            now = options[chosen[i]]
            for j, o in enumerate(options):
                extra = o.bits - now.bits
                if 0 < extra <= left and o.cost < now.cost:
                    gain = (now.cost - o.cost) / extra
                    if best is None or gain > best[0]:
                        best = (gain, i, j, extra)
        if best is None:
            return chosen
        _, i, j, extra = best
        chosen[i] = j
        left -= extra
