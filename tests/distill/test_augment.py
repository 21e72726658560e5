"""Augmentation of distillation batches (distill.augment): random flips and shifts, seeded, with
the teacher's logits recomputed on what the student sees."""

import pytest
import torch
from torch import nn

from big2small.distill.augment import AugmentConfig, augment_images, teacher_targets
from big2small.errors import Big2SmallError


def _images(n: int = 64) -> torch.Tensor:
    return torch.randn(n, 2, 12, 10, generator=torch.Generator().manual_seed(3))


def test_keeps_shape_and_dtype_and_is_seeded():
    x = _images()
    config = AugmentConfig(flip=True, max_shift=2)
    a = augment_images(x, config, torch.Generator().manual_seed(7))
    b = augment_images(x, config, torch.Generator().manual_seed(7))
    c = augment_images(x, config, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, x)


def test_flip_alone_mirrors_some_images_and_keeps_the_others():
    x = _images()
    out = augment_images(x, AugmentConfig(flip=True, max_shift=0), torch.Generator().manual_seed(0))
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert bool((same | mirrored).all())
    assert 0 < int(mirrored.sum()) < len(x)  # about half, surely neither none nor all of 64


def test_shift_moves_content_by_at_most_max_shift_pixels_on_each_axis():
    x = torch.zeros(200, 1, 15, 15)
    x[:, 0, 7, 7] = 1.0  # one bright pixel in the middle, far from the edges
    out = augment_images(x, AugmentConfig(flip=False, max_shift=3), torch.Generator().manual_seed(0))
    assert torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))  # moved, not lost or duplicated
    where = out[:, 0].flatten(1).argmax(1)
    dy, dx = where // 15 - 7, where % 15 - 7
    assert int(dy.abs().max()) == 3 and int(dx.abs().max()) == 3  # every offset in [-3, 3] reachable
    assert {int(v) for v in dy} == set(range(-3, 4)) and {int(v) for v in dx} == set(range(-3, 4))


def test_nothing_to_do_returns_the_images():
    x = _images()
    assert torch.equal(augment_images(x, AugmentConfig(flip=False, max_shift=0), torch.Generator()), x)


def test_teacher_targets_are_the_teachers_logits_on_the_augmented_batch():
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(2 * 12 * 10, 5)).eval()
    x = _images(16)
    config = AugmentConfig(flip=True, max_shift=1)
    transform = teacher_targets(teacher, config, seed=4)
    images, logits = transform(x, torch.zeros(16, 5))
    assert torch.equal(images, augment_images(x, config, torch.Generator().manual_seed(4)))
    assert torch.allclose(logits, teacher(images)) and not logits.requires_grad
    again, _ = teacher_targets(teacher, config, seed=4)(x, torch.zeros(16, 5))
    assert torch.equal(again, images)  # the same seed draws the same variants


def test_config_round_trips_and_refuses_unknown_keys_and_bad_values():
    config = AugmentConfig(flip=False, max_shift=3)
    assert AugmentConfig.from_json(config.to_json()) == config
    with pytest.raises(Big2SmallError, match="rotate"):
        AugmentConfig.from_dict({"rotate": 10})
    for bad in ({"max_shift": -1}, {"flip": "yes"}):
        with pytest.raises(Big2SmallError):
            AugmentConfig.from_dict(bad)
    with pytest.raises(Big2SmallError, match="N, C, H, W"):
        augment_images(torch.zeros(3, 4), AugmentConfig(), torch.Generator())
