"""The multiple-choice knapsack: never over budget, optimal where greedy must be, filled."""

import itertools
import random

import pytest

from big2small.allocation.knapsack import Option, choose
from big2small.errors import Big2SmallError


def _cost(items, picked):
    return sum(items[i][j].cost for i, j in enumerate(picked))


def _bits(items, picked):
    return sum(items[i][j].bits for i, j in enumerate(picked))


def _convex_items(rng, n_items, n_options):
    """Items whose cost falls convexly in equal bit steps, as a codec's distortion-rate curve does."""
    items = []
    for _ in range(n_items):
        scale = rng.uniform(0.1, 10.0)
        items.append([Option(bits=k, cost=scale * 4.0 ** -k) for k in range(1, n_options + 1)])
    return items


@pytest.mark.parametrize("seed", range(5))
def test_matches_brute_force_on_convex_curves(seed):
    rng = random.Random(seed)
    items = _convex_items(rng, 4, 4)
    for budget in range(4, 17):
        best = min(_cost(items, p) for p in itertools.product(range(4), repeat=4)
                   if _bits(items, p) <= budget)
        picked = choose(items, budget)
        assert _bits(items, picked) <= budget
        assert _cost(items, picked) == pytest.approx(best)


@pytest.mark.parametrize("seed", range(5))
def test_never_over_budget_and_no_worse_than_every_item_at_its_floor(seed):
    rng = random.Random(seed)
    items = [[Option(rng.randint(1, 40), rng.uniform(0, 5)) for _ in range(rng.randint(1, 6))] for _ in range(12)]
    floor = sum(min(o.bits for o in opts) for opts in items)
    for budget in (floor, floor + 7, floor + 60, floor + 500):
        picked = choose(items, budget)
        assert _bits(items, picked) <= budget
        at_floor = [min(range(len(o)), key=lambda j: (o[j].bits, o[j].cost)) for o in items]
        assert _cost(items, picked) <= _cost(items, at_floor) + 1e-12


def test_fills_the_budget_when_steps_are_small_against_it():
    items = _convex_items(random.Random(0), 200, 8)
    for target in (300, 555, 1001, 1399):
        assert target * 0.99 <= _bits(items, choose(items, target)) <= target


def test_ample_budget_buys_the_cheapest_option_everywhere():
    items = [[Option(4, 1.0), Option(8, 0.5), Option(6, 0.1)], [Option(2, 3.0), Option(3, 0.0)]]
    assert choose(items, 100) == [2, 1]


def test_budget_below_the_smallest_options_is_refused():
    with pytest.raises(Big2SmallError, match="over the budget"):
        choose([[Option(10, 0.0)], [Option(5, 1.0), Option(6, 0.0)]], 14)
