"""Loading models by name or path, and rebuilding skeletons from source records (the factory trust
check included)."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import big2small as b2s
from big2small.errors import Big2SmallError
from big2small.models import ZOO, ModelSource, build_skeleton, load_model
from big2small.models.load import LEGACY_FACTORIES
from big2small.models.zoo import FACTORIES
from big2small.models.zoo.fashion import CNN_FACTORY, RESNET_FACTORY, FashionCNN, FashionResNet

FIXTURES = Path(__file__).parent.parent / "fixtures"


def test_a_safetensors_state_dict_loads_model_free(tmp_path):
    state = {"a.weight": torch.randn(4, 3), "a.bias": torch.randn(4)}
    save_file(state, tmp_path / "w.safetensors")
    loaded = load_model(tmp_path / "w.safetensors")
    assert loaded.model is None and loaded.source.kind == "state_dict"
    assert all(torch.equal(loaded.weights[k], v) for k, v in state.items())


@pytest.mark.parametrize("make, match", [
    (lambda p: p / "missing", "no such file or directory"),
    (lambda p: (p / "d").mkdir() or p / "d", "no config.json"),
    (lambda p: (p / "x.txt").write_text("hi") and p / "x.txt", "unsupported model file"),
    (lambda p: (p / "bad.safetensors").write_bytes(b"not a tensor file") and p / "bad.safetensors", "not a readable safetensors"),
])
def test_bad_model_paths_give_one_line_errors(tmp_path, make, match):
    with pytest.raises(Big2SmallError, match=match) as info:
        load_model(make(tmp_path))
    assert "\n" not in str(info.value)


def test_zoo_factories_rebuild_their_skeletons():
    assert isinstance(build_skeleton(ModelSource("module", "x", factory=RESNET_FACTORY)), FashionResNet)
    assert isinstance(build_skeleton(ModelSource("module", "x", factory=CNN_FACTORY)), FashionCNN)
    assert set(ZOO) >= {"smollm2", "minilm", "efficientnet-lite0", "fashion-resnet"}


@pytest.mark.parametrize("old", sorted(LEGACY_FACTORIES))
def test_factories_of_earlier_versions_map_to_registered_ones(old):
    assert LEGACY_FACTORIES[old] in FACTORIES


@pytest.mark.parametrize("factory", ["os:system", "subprocess:getoutput", "big2small.cli:main",
                                     "big2small.models.zoo:no_such_factory"])
def test_only_registered_factories_are_called(factory):
    with pytest.raises(Big2SmallError, match="not one of big2small's bundled models"):
        build_skeleton(ModelSource("module", "x", factory=factory))


@pytest.mark.parametrize("architecture", ["AutoConfig", "pipeline", "logging", "PreTrainedModel.__init__", 42])
def test_only_transformers_model_classes_are_rebuilt(tmp_path, architecture):
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(Big2SmallError, match="has no model class"):
        build_skeleton(ModelSource("hf", "x", architecture=architecture, files_dir=tmp_path))


def test_a_user_module_needs_its_skeleton():
    with pytest.raises(Big2SmallError, match="pass its skeleton"):
        build_skeleton(b2s.models.module_source(nn.Linear(2, 2)))


@pytest.mark.parametrize("name, key", [("v0.1.0-folded-resnet.b2s", "folded_resnet"),
                                       ("v0.1.0-selfcompressed-cnn.b2s", "selfcompressed_cnn")])
def test_artifacts_written_by_v0_1_0_restore_from_the_artifact_alone(name, key):
    """Written before the bundled networks moved into the zoo: their manifests name the old
    factories and a narrowed architecture; the restored model computes what it computed then."""
    expected = load_file(FIXTURES / "v0.1.0-outputs.safetensors")
    model = b2s.restore(FIXTURES / name)
    with torch.no_grad():
        assert torch.allclose(model(expected["input"]), expected[key], atol=1e-5)


def test_code_carried_by_an_artifact_is_never_run(tiny_gpt2_dir, tmp_path):
    """An artifact whose config names custom code (auto_map + a Python file) rebuilds with the
    stock class or refuses in one line; the file is never executed."""
    import json

    marker = tmp_path / "ran"
    (tiny_gpt2_dir / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                           "from transformers import GPT2Config as EvilConfig\n")
    config = json.loads((tiny_gpt2_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig"}
    (tiny_gpt2_dir / "config.json").write_text(json.dumps(config))
    cm = b2s.compress(load_model(tiny_gpt2_dir), "uniform", bits=4, progress=False)
    b2s.save(cm, tmp_path / "a.b2s")
    try:
        b2s.restore(tmp_path / "a.b2s")
    except Big2SmallError as exc:
        assert "\n" not in str(exc)
    assert not marker.exists()


def test_an_hf_directory_with_a_garbled_weight_file_is_a_one_line_error(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(Big2SmallError, match="cannot load weights") as info:
        load_model(tmp_path)
    assert "\n" not in str(info.value)
