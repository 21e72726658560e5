import pytest

from big2small.distill import DistillConfig
from big2small.errors import Big2SmallError


def test_round_trips_through_json():
    config = DistillConfig(steps=7, samples=20, held_out=4, seed=3, source="random", max_seconds=2.5,
                           schedule="cosine", warmup_steps=2, hidden_weight=0.5)
    assert DistillConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize("data, needle", [
    ({"stepz": 3}, "unknown option"),
    ({"samples": 4, "held_out": 4}, "held_out < samples"),
    ({"source": "web"}, "source must be one of"),
    ({"max_seconds": 0}, "max_seconds must be > 0"),
    ({"lr": "fast"}, "lr must be float"),
    ({"schedule": "linear"}, "schedule must be one of"),
    ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
    ({"hidden_weight": -1.0}, "hidden_weight must be a number >= 0"),
])
def test_refuses_bad_settings(data, needle):
    with pytest.raises(Big2SmallError, match=needle):
        DistillConfig.from_dict(data)
