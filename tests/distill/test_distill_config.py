import math

import pytest

from big2small.distill import DistillConfig
from big2small.errors import Big2SmallError


def test_round_trips_through_json():
    config = DistillConfig(steps=7, samples=20, held_out=4, seed=3, source="random", max_seconds=2.5)
    assert DistillConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("data, needle", [
    ({"stepz": 3}, "unknown option"),
    ({"samples": 4, "held_out": 4}, "held_out < samples"),
    ({"source": "web"}, "source must be one of"),
    ({"max_seconds": 0}, "max_seconds must be > 0"),
    ({"lr": "fast"}, "lr must be float"),
])
def test_refuses_bad_settings(data, needle):
    with pytest.raises(Big2SmallError, match=needle):
        DistillConfig.from_dict(data)


def test_the_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    from big2small.distill.loop import lr_factor

    config = DistillConfig(steps=50, warmup_steps=5, schedule="cosine")
    factors = [lr_factor(step, config) for step in range(config.steps + 1)]
    assert all(a < b for a, b in zip(factors[:5], factors[1:6])) and factors[5] == 1.0  # linear warm-up to lr
    assert all(a > b for a, b in zip(factors[5:50], factors[6:51])) and factors[50] == 0.0  # cosine down to 0
    assert abs(factors[27] - 0.5 * (1 + math.cos(math.pi * 22 / 45))) < 1e-12  # half a cosine over 45 steps
    constant = DistillConfig(steps=50, warmup_steps=2)
    assert [lr_factor(s, constant) for s in range(4)] == [1 / 3, 2 / 3, 1.0, 1.0]
    assert DistillConfig.from_json(config.to_json()) == config
    with pytest.raises(Big2SmallError, match="schedule must be one of"):
        DistillConfig.from_dict({"schedule": "linear"})
