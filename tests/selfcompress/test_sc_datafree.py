"""Data-free self-compression (selfcompress.sweep): the networks learn from images synthesised from
the teacher's BatchNorm statistics, with the distillation loss, through the recipe's own loop."""

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from big2small.distill import DistillConfig
from big2small.distill.augment import AugmentConfig
from big2small.evaluate import data as data_module
from big2small.evaluate.classification import logits_of
from big2small.errors import Big2SmallError
from big2small.models.zoo.fashion import fashion_cnn
from big2small.selfcompress import SelfCompressConfig, sweep
from big2small.training import TrainConfig, train

TINY = DistillConfig(samples=40, held_out=8, inversion_steps=5)


@pytest.fixture(scope="module")
def teacher():
    """The recipe's CNN trained briefly on random images whose label is the brightest of 10 bands
    (a real function of the input, and BatchNorm statistics of its own)."""
    torch.manual_seed(0)
    images = torch.randn(128, 1, 28, 28)
    labels = images[:, 0, :20].reshape(128, 10, -1).mean(2).argmax(1)
    model = fashion_cnn()
    train(model, images, labels, TrainConfig(epochs=2, batch_size=16), val=(images[:16], labels[:16]), progress=False)
    return model.eval()


@pytest.fixture
def no_dataset(monkeypatch, tmp_path):
    """Reading Fashion-MNIST fails the test; the synthetic cache lives in tmp_path."""
    def forbidden(*_args, **_kwargs):
        raise AssertionError("the data-free path read the data set")

    for module in (data_module, sweep):
        monkeypatch.setattr(module, "fashion_mnist_normalised", forbidden)
        monkeypatch.setattr(module, "fashion_mnist_splits", forbidden)
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "cache"))


def test_synthetic_training_reads_no_data_and_lowers_the_distillation_loss(teacher, no_dataset):
    training = sweep.synthetic_set(teacher, TINY, progress=False)
    assert training.images.shape == (32, 1, 28, 28) and training.inputs == "synthetic images (inversion)"
    assert torch.equal(training.targets, logits_of(teacher, training.images))  # the teacher's logits are the targets
    assert len(training.val[0]) == 8
    test = (torch.randn(16, 1, 28, 28), torch.randint(10, (16,)))
    torch.manual_seed(1)  # a student that starts far from the teacher: the loss has somewhere to go
    _, point = sweep.train_selfcompressed(training, test, TrainConfig(steps=40, batch_size=8, gamma=0.0),
                                          SelfCompressConfig(init_bits=8.0), init=fashion_cnn(), progress=False)
    losses = [h.loss for h in point.history]
    assert len(losses) == 10  # 40 steps over 32 images in batches of 8: ten passes
    assert losses[-1] < losses[0] / 2
    assert point.inputs == "synthetic images (inversion)" and point.inputs_seconds > 0


def test_from_the_teacher_the_size_loss_lowers_the_bits(teacher, no_dataset):
    training = sweep.synthetic_set(teacher, TINY, progress=False)
    test = (torch.randn(16, 1, 28, 28), torch.randint(10, (16,)))
    result, point = sweep.train_selfcompressed(training, test, TrainConfig(steps=20, batch_size=8, gamma=1.0,
                                                                           quantizer_lr=0.05),
                                               SelfCompressConfig(init_bits=8.0), init=teacher, progress=False)
    assert point.history[-1].q_bits < 7.5
    assert 0 < point.bits_share < 8.5 / 32  # exported from 8 bits down, every stored bit counted


def test_the_synthetic_images_come_from_the_distill_cache(teacher, no_dataset, monkeypatch):
    first = sweep.synthetic_set(teacher, TINY, progress=False)

    def no_inversion(*_args, **_kwargs):
        raise AssertionError("inverted again instead of reading the cache")

    monkeypatch.setattr("big2small.distill.synthetic.invert_batchnorm", no_inversion)
    again = sweep.synthetic_set(teacher, TINY, progress=False)
    assert torch.equal(first.images, again.images) and torch.equal(first.val[0], again.val[0])


def test_a_model_without_batchnorm_is_told_which_source_applies(no_dataset):
    plain = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.raises(Big2SmallError, match="no BatchNorm statistics to invert: use source random"):
        sweep.synthetic_set(plain, TINY, progress=False)
    gaussian = sweep.synthetic_set(plain, DistillConfig(samples=12, held_out=4, source="random"), progress=False)
    assert gaussian.images.shape == (8, 1, 28, 28) and gaussian.inputs == "synthetic images (random)"


def test_the_recipe_refuses_bad_combinations_before_training(teacher, no_dataset):
    config = TrainConfig(epochs=1)
    with pytest.raises(Big2SmallError, match="init 'fp32'"):
        sweep.run_recipe([0.5], config, init="scratch", distill=TINY)
    with pytest.raises(Big2SmallError, match="needs a distillation config"):
        sweep.run_recipe([0.5], config, init="fp32", teacher=teacher)
    with pytest.raises(Big2SmallError, match="does not apply"):  # before the teacher is trained (no data read)
        sweep.run_recipe([0.5], config, init="fp32", distill=DistillConfig(source="smollm2"))


def test_distillation_sets_the_schedule_of_the_self_compressing_runs():
    schedule = sweep.distill_schedule(TrainConfig(epochs=3, batch_size=64, quantizer_lr=0.01),
                                      DistillConfig(steps=7, lr=2e-3, max_seconds=5.0))
    assert (schedule.steps, schedule.lr, schedule.max_seconds) == (7, 2e-3, 5.0)
    assert (schedule.batch_size, schedule.quantizer_lr) == (64, 0.01)


def test_train_config_with_a_step_and_time_budget_round_trips():
    config = TrainConfig(epochs=2, steps=30, max_seconds=12.5, target_bits=3.0)
    assert TrainConfig.from_json(config.to_json()) == config
    with pytest.raises(Big2SmallError, match="unknown"):
        TrainConfig.from_dict({**config.to_dict(), "step": 3})
    for bad in ({"steps": 0}, {"max_seconds": 0.0}):
        with pytest.raises(Big2SmallError, match="bad training settings"):
            TrainConfig(**bad).validate()


def test_a_time_budget_stops_after_the_epoch_it_runs_out_in():
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(10, (32,))
    logs = train(fashion_cnn(), x, y, TrainConfig(epochs=50, batch_size=16, max_seconds=1e-6), val=(x, y), progress=False)
    assert len(logs) == 1 and logs[0].kept


def test_a_teacher_file_loads_and_a_wrong_one_is_refused(teacher, tmp_path):
    path = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(path))
    loaded = sweep.load_teacher(path)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), teacher(x)) and not loaded.training
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(Big2SmallError, match="not a state dict of the recipe's FashionCNN"):
        sweep.load_teacher(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(Big2SmallError, match="not a safetensors state dict"):
        sweep.load_teacher(tmp_path / "junk.safetensors")
    with pytest.raises(Big2SmallError, match="no such teacher file"):
        sweep.load_teacher(tmp_path / "missing.safetensors")


def test_data_free_training_needs_held_out_images_to_validate(teacher, no_dataset):
    with pytest.raises(Big2SmallError, match="needs at least 2 samples"):
        sweep.synthetic_set(teacher, DistillConfig(samples=8, held_out=0), progress=False)
    with pytest.raises(Big2SmallError, match="needs at least 2 samples"):  # before the teacher is trained
        sweep.run_recipe([0.5], TrainConfig(epochs=1), init="fp32", distill=DistillConfig(samples=1, held_out=0))


def test_augmented_training_recomputes_the_teachers_logits_on_the_variants(teacher, no_dataset, monkeypatch):
    augment = AugmentConfig(flip=True, max_shift=2)
    training = sweep.synthetic_set(teacher, TINY, progress=False, augment=augment)
    assert training.inputs == "synthetic images (inversion), augmented (flip true, shift 2 px)"
    batches = []
    real_train = sweep.train

    def recording_train(*args, batch_transform=None, **kwargs):
        def spy(x, y):
            out = batch_transform(x, y)
            batches.append((x, *out))
            return out
        return real_train(*args, batch_transform=spy, **kwargs)

    monkeypatch.setattr(sweep, "train", recording_train)
    test = (torch.randn(16, 1, 28, 28), torch.randint(10, (16,)))
    _, point = sweep.train_selfcompressed(training, test, TrainConfig(steps=8, batch_size=8, gamma=0.5),
                                          SelfCompressConfig(init_bits=8.0), init=teacher, progress=False)
    assert len(batches) == 8 and point.inputs == training.inputs
    assert any(not torch.equal(x, variant) for x, variant, _ in batches)  # the student saw variants
    for _, variant, logits in batches:
        assert torch.allclose(logits, logits_of(teacher, variant), atol=1e-5)  # the teacher's, on the variant
