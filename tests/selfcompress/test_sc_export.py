"""convert(): the training model left alone, packed artifact, bytes on disk, reload, exact export."""

import copy

import pytest
import torch
from torch import nn

import big2small as b2s
from big2small.errors import Big2SmallError
from big2small.selfcompress import SelfCompressConfig, convert, prepare, quantized_layers
from big2small.models.zoo.fashion import FashionCNN, fashion_cnn_source

from sc_models import BiasNet, prepared


def test_convert_leaves_the_training_model_untouched():
    net = prepared(BiasNet(), {"conv2": [1]})
    before = copy.deepcopy(net.state_dict())
    convert(net)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert len(list(quantized_layers(net))) == 3


def test_artifact_bytes_match_the_reported_bits(tmp_path):
    net = prepared(BiasNet(), {"conv2": [0, 5]})
    result = convert(net)
    b2s.save(result.compressed, tmp_path / "a")
    for name, enc in result.compressed.tensors.items():
        stored = enc.total_bits - enc.bits.get("header", 0)
        assert stored <= 8 * enc.payload_bytes < stored + 8 * len(enc.tensors), name
    manifest = b2s.read_manifest(tmp_path / "a")
    assert manifest["tensors"]["conv2.weight"]["method"] == "channel_int"
    assert manifest["transforms"][0]["removed_channels"]["conv2"] == 2


def test_reloaded_artifact_gives_the_same_outputs_in_an_original_width_skeleton(tmp_path):
    net = prepared(BiasNet(), {"conv1": [1], "conv2": [0, 5]})
    x = torch.randn(5, 1, 14, 14)
    result = convert(net)
    b2s.save(result.compressed, tmp_path / "a")
    restored = b2s.restore(tmp_path / "a", BiasNet())
    assert restored.conv2.out_channels == 10
    assert torch.equal(restored(x), result.model(x))


def test_builtin_cnn_restores_from_the_artifact_alone(tmp_path):

    net = prepared(FashionCNN(widths=(32, 64, 128)), {"conv3": list(range(0, 128, 3))})
    result = convert(net, source=fashion_cnn_source())
    b2s.save(result.compressed, tmp_path / "a")
    restored = b2s.restore(tmp_path / "a")
    x = torch.randn(2, 1, 28, 28)
    assert restored.conv3.out_channels == 128 - 43
    assert torch.equal(restored(x), result.model(x))


def test_shares_count_every_stored_bit():
    net = prepared(BiasNet(), {"conv2": [0, 5]})
    result = convert(net)
    reference = BiasNet()
    n = sum(p.numel() for p in reference.parameters())
    fp32_bits = sum(t.numel() * t.element_size() * 8 for t in reference.state_dict().values())
    assert result.compressed.n_parameters == n
    assert result.reference_bits == fp32_bits
    assert result.bits_share == pytest.approx(result.compressed.size().bits_total / fp32_bits)
    assert result.weights_share == pytest.approx((8 * 9 + 10 * 72 + 4 * 90) / (8 * 9 + 12 * 72 + 4 * 108))


def test_convert_of_an_unprepared_model_is_refused():
    with pytest.raises(Big2SmallError, match="not prepared"):
        convert(BiasNet())


def test_export_is_exact_whatever_the_number_of_channels_left():
    # torch.exp2 differs in the last bit between its vectorised and scalar paths, so a scale
    # recomputed from e after channels are removed could move; the stored scale must not.
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(9, 32, bias=False), nn.ReLU(), nn.Linear(32, 3))
    prepare(net, SelfCompressConfig(init_bits=3.0, init_exponent=None))
    (_, _, first), _ = list(quantized_layers(net))
    with torch.no_grad():
        first.exponent.add_(torch.rand_like(first.exponent) * 0.9)  # non-integer exponents
        first.bits.view(-1)[::4] = -1.0  # 8 of 32 channels die: the rest shift lanes
    result = convert(net)
    assert result.model[0].out_features == 24
    kept = net[0].weight.detach()[torch.arange(32) % 4 != 0]
    assert torch.equal(result.model[0].weight, kept)
    assert torch.equal(b2s.restore(result.compressed, copy.deepcopy(result.model))[0].weight, kept)
