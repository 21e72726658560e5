import pytest
import torch

from big2small.distill.inversion import batchnorm_mismatch, invert_batchnorm
from big2small.errors import Big2SmallError
from big2small.training import recalibrate_batchnorm
from tiny_models import MBConvNet, ResidualMLP


def test_inverted_images_match_the_batchnorm_statistics_better_than_noise_and_are_seeded():
    # Statistics of a known "training set" (pixels ~ N(1.5, 0.5^2)), so that matching them is possible.
    model = MBConvNet()
    g = torch.Generator().manual_seed(0)
    recalibrate_batchnorm(model, [1.5 + 0.5 * torch.randn(32, 3, 12, 12, generator=g) for _ in range(4)])
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = invert_batchnorm(model, (3, 12, 12), samples=8, steps=40, seed=1, batch_size=8, progress=False)
    noise = torch.randn(8, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    assert images.shape == (8, 3, 12, 12)
    assert batchnorm_mismatch(model, images) < 0.5 * batchnorm_mismatch(model, noise)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the teacher is not changed
    assert torch.equal(images, invert_batchnorm(model, (3, 12, 12), samples=8, steps=40, seed=1, batch_size=8,
                                                progress=False))


def test_a_model_without_batchnorm_is_refused_with_the_alternative():
    with pytest.raises(Big2SmallError, match="no BatchNorm.*random"):
        invert_batchnorm(ResidualMLP(), (6,), samples=2, progress=False)
