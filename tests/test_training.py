"""The training loop and BatchNorm recalibration; a short self-compressing run on real data (sklearn
digits) really lowers the bits."""

import pytest
import torch
from torch import nn

import big2small as b2s
from big2small.errors import Big2SmallError
from big2small.evaluate.data import digits
from big2small.selfcompress import SelfCompressConfig, SizePenalty, convert, prepare, size_loss
from big2small.evaluate.classification import accuracy
from big2small.training import TrainConfig, recalibrate_batchnorm, sample_batches, train


def _digits_net():
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16, affine=False), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32, affine=False), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    images, labels = digits()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    images, labels = images[order], labels[order]
    train_set, val_set = (images[:1400], labels[:1400]), (images[1400:], labels[1400:])
    model = prepare(_digits_net(), SelfCompressConfig(init_bits=2.0, init_exponent=None))
    start_q = float(size_loss(model).detach())
    logs = train(model, *train_set, TrainConfig(epochs=12, batch_size=64, gamma=0.5, quantizer_lr=1e-2),
                 val=val_set, regulariser=SizePenalty(model), progress=False)
    result = convert(model, raw_dtype="float16")
    path = tmp_path_factory.mktemp("sc") / "digits.b2s"
    b2s.save(result.compressed, path)
    return model, start_q, logs, result, path, val_set


def test_training_lowers_the_bits_per_weight(trained):
    _, start_q, logs, _, _, _ = trained
    assert logs[-1].q_bits < 0.85 * start_q


def test_channels_that_reach_zero_bits_are_removed(trained):
    _, _, logs, result, _, _ = trained
    assert logs[-1].dead_channels > 0
    assert result.weights_share < 1.0


def test_the_compressed_network_still_classifies(trained):
    _, _, logs, _, _, _ = trained
    assert logs[-1].val_accuracy > 0.75  # chance is 0.10; the exact figure varies with thread count


def test_exported_artifact_matches_the_trained_network(trained, tmp_path):
    model, _, _, result, path, val_set = trained
    restored = b2s.restore(path, _digits_net())
    # fp16 storage of the BatchNorm statistics is the only difference from the training forward
    assert abs(accuracy(restored, *val_set).top1 - accuracy(model, *val_set).top1) <= 0.01
    assert result.bits_share < 2.5 / 32  # below the 2-bit start once every stored bit is counted


def test_bad_training_settings_are_refused():
    with pytest.raises(Big2SmallError, match="bad training settings"):
        TrainConfig(epochs=0).validate()


def test_batchnorm_recalibration_replaces_stale_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3)).eval()
    with torch.no_grad():
        net[1].running_mean.fill_(7.0)
        net[1].running_var.fill_(1e-6)
    x = torch.randn(64, 5)
    assert recalibrate_batchnorm(net, sample_batches(x, batches=1, batch_size=64)) == 1
    h = net[0](x).detach()
    assert torch.allclose(net[1].running_mean, h.mean(0), atol=1e-5)
    assert torch.allclose(net[1].running_var, h.var(0), atol=1e-4)
    assert not net.training and net[1].momentum == 0.1


def test_batchnorm_recalibration_measures_the_eval_mode_forward_dropout_off_and_modes_restored():
    # A dropout before the BatchNorm: the statistics must be those of the inputs it sees in eval mode
    # (dropout off), not of dropout's rescaled, zeroed train-mode activations.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.5), nn.BatchNorm1d(3))
    net.eval()[1].train()  # a mixed state, restored module by module afterwards
    x = torch.randn(256, 5)
    recalibrate_batchnorm(net, [x])
    h = net[0](x).detach()
    assert torch.allclose(net[2].running_mean, h.mean(0), atol=1e-5)
    assert torch.allclose(net[2].running_var, h.var(0), atol=1e-4)
    assert [m.training for m in net.modules()] == [False, False, True, False]


def test_target_bits_keeps_the_best_epoch_within_the_size():
    torch.manual_seed(0)
    images, labels = digits()
    model = prepare(_digits_net())
    logs = train(model, images[:600], labels[:600], TrainConfig(epochs=4, batch_size=64, gamma=0.5, quantizer_lr=1e-2,
                                                                target_bits=1.95),
                 val=(images[1400:], labels[1400:]), regulariser=SizePenalty(model), progress=False)
    within = [l for l in logs if l.q_bits <= 1.95]
    kept = [l for l in logs if l.kept]
    assert within and len(kept) == 1
    assert kept[0].val_accuracy == max(l.val_accuracy for l in within)
    assert float(size_loss(model).detach()) == pytest.approx(kept[0].q_bits)


def test_batchnorm_recalibration_refuses_no_batches_and_skips_models_without_batchnorm():
    net = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3))
    with pytest.raises(Big2SmallError, match="no input batches"):
        recalibrate_batchnorm(net, [])
    assert recalibrate_batchnorm(nn.Sequential(nn.Linear(5, 3)), [torch.randn(4, 5)]) == 0


def test_a_regulariser_needs_a_prepared_model():
    with pytest.raises(Big2SmallError, match="not prepared"):
        SizePenalty(_digits_net())


def test_a_batch_transform_decides_what_every_step_trains_on():
    """The targets are all class 0, the transform swaps them for class 3: the model learns 3."""
    torch.manual_seed(0)
    images = torch.randn(64, 1, 4, 4)
    seen = []

    def to_class_3(x, y):
        seen.append(len(x))
        return x, torch.full_like(y, 3)

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5))
    train(model, images, torch.zeros(64, dtype=torch.long), TrainConfig(epochs=10, batch_size=16, lr=0.1),
          val=(images, torch.full((64,), 3)), progress=False, batch_transform=to_class_3)
    assert seen == [16] * 40  # every batch of every epoch, once
    assert accuracy(model, images, torch.full((64,), 3)).top1 == 1.0
