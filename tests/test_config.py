"""The config contract, stated once for every Config subclass of the package (found by walking the
subclasses after importing every module, so a new config cannot skip it): JSON round trip, unknown
keys refused with the known ones listed, wrong types refused in one line, the version written and
checked. Then what depends on it: versions in the manifest, artifacts written before versions."""

import dataclasses
import hashlib
import importlib
import json
import pkgutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import big2small as b2s
from big2small.allocation.config import AllocationConfig
from big2small.artifact import HASH_KEY, MANIFEST, TENSORS
from big2small.config import Config, TransformConfig
from big2small.errors import Big2SmallError
from big2small.folding import FoldConfig
from big2small.generators import GeneratorConfig, UniformConfig
from big2small.generators.rotation import RotatableConfig
from big2small.recipe import Override, Recipe

FIXTURES = Path(__file__).parent / "fixtures"
for _module in pkgutil.walk_packages(b2s.__path__, "big2small."):
    importlib.import_module(_module.name)


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


# Bases that stand for their subclasses, never stored themselves (RotatableConfig: the codecs with a rotate option).
TAGGED_BASES = (GeneratorConfig, TransformConfig, RotatableConfig)
CONFIGS = sorted({c for c in _subclasses(Config) if c.__module__.startswith("big2small.") and c not in TAGGED_BASES},
                 key=lambda c: c.__qualname__)
EXAMPLES = {Override: lambda: Override("fc.*", UniformConfig(bits=3)),
            Recipe: lambda: Recipe(default=UniformConfig(bits=3), overrides=[Override("fc", None)], target_bpw=3.5,
                                   transforms=[FoldConfig(sparsity=0.2, skip=["attention"])],
                                   allocation=AllocationConfig(candidates=[UniformConfig(bits=2)], keep_candidate=True))}


def _example(cls):
    return EXAMPLES.get(cls, cls)()


def test_every_settings_class_of_the_brief_is_a_config():
    from big2small.evaluate.suite import EvalSettings
    from big2small.selfcompress import SelfCompressConfig
    from big2small.training import TrainConfig

    assert {Recipe, Override, FoldConfig, SelfCompressConfig, TrainConfig, EvalSettings, UniformConfig} <= set(CONFIGS)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__qualname__)
class TestContract:
    def test_json_round_trip(self, cls):
        config = _example(cls)
        assert cls.from_json(config.to_json()) == config
        base = next((b for b in TAGGED_BASES if issubclass(cls, b)), cls)
        assert base.from_dict(json.loads(config.to_json())) == config  # the tag picks the class

    def test_reserved_keys_are_not_fields(self, cls):
        names = {f.name for f in dataclasses.fields(cls)}
        assert "version" not in names and (not cls.tag_key or cls.tag_key not in names)

    def test_unknown_key_is_refused_listing_the_known_ones(self, cls):
        data = {**_example(cls).to_dict(), "no_such_option": 1}
        with pytest.raises(Big2SmallError, match="no_such_option") as info:
            cls.from_dict(data)
        assert all(f.name in str(info.value) for f in dataclasses.fields(cls))

    def test_a_value_of_the_wrong_type_is_a_one_line_error_naming_the_option(self, cls):
        for f in dataclasses.fields(cls):
            data = {**_example(cls).to_dict(), f.name: [["not", "a", "value"]]}  # no field admits this
            with pytest.raises(Big2SmallError, match=f"{f.name} must be") as info:
                cls.from_dict(data)
            assert "\n" not in str(info.value)

    def test_version_is_written_and_a_dict_without_one_is_version_1(self, cls):
        data = _example(cls).to_dict()
        assert data["version"] == cls.version >= 1
        if cls.version == 1:
            del data["version"]
            assert cls.from_dict(data) == _example(cls)

    @pytest.mark.parametrize("version", [0, "1", 1.0, True])
    def test_a_malformed_version_is_refused(self, cls, version):
        with pytest.raises(Big2SmallError, match="version must be a positive integer"):
            cls.from_dict({**_example(cls).to_dict(), "version": version})

    def test_a_newer_version_is_refused(self, cls):
        with pytest.raises(Big2SmallError, match=f"version {cls.version + 1} was written by a newer big2small"):
            cls.from_dict({**_example(cls).to_dict(), "version": cls.version + 1})


def test_a_string_where_an_int_is_expected_is_refused():
    with pytest.raises(Big2SmallError, match="uniform: bits must be int, got '4'"):
        GeneratorConfig.from_dict({"method": "uniform", "bits": "4"})
    with pytest.raises(Big2SmallError, match="min_numel must be int"):
        Recipe.from_dict({"min_numel": 4.5})


def test_an_int_is_accepted_where_a_float_is_expected_but_not_a_bool():
    assert Recipe.from_dict({"target_bpw": 3}).target_bpw == 3
    with pytest.raises(Big2SmallError, match="target_bpw must be float or None"):
        Recipe.from_dict({"target_bpw": True})


def test_validate_runs_on_construction_from_a_dict():
    with pytest.raises(Big2SmallError, match="sparsity must be in"):
        FoldConfig.from_dict({"sparsity": 1.5})


def test_unknown_tags_list_the_known_ones():
    with pytest.raises(Big2SmallError, match="unknown method 'nope'; known: .*uniform"):
        GeneratorConfig.from_dict({"method": "nope"})
    with pytest.raises(Big2SmallError, match="unknown transform 'prune'; known: fold"):
        Recipe.from_dict({"transforms": [{"transform": "prune"}]})
    with pytest.raises(Big2SmallError, match="needs a 'method' key"):
        GeneratorConfig.from_dict({"bits": 4})


def test_command_line_list_forms_still_coerce():
    config = GeneratorConfig.from_dict({"method": "hyper", "scale_grid": "1.0/0.9"})
    assert config.scale_grid == [1.0, 0.9]


def test_not_json_is_a_one_line_error():
    with pytest.raises(Big2SmallError, match="Recipe: not JSON"):
        Recipe.from_json("{default:")


def test_a_saved_manifest_carries_every_config_version(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8))
    recipe = Recipe(transforms=[FoldConfig(sparsity=0.3, n_init=1)], default=UniformConfig(bits=4, group_size=16),
                    overrides=[Override("4", None)], min_numel=0)
    b2s.save(b2s.compress(model, recipe, progress=False), tmp_path / "a.b2s")
    manifest = b2s.read_manifest(tmp_path / "a.b2s")
    stored = manifest["recipe"]
    assert stored["version"] == Recipe.version and stored["default"]["version"] == UniformConfig.version
    assert stored["overrides"][0]["version"] == Override.version
    assert stored["transforms"][0] == {**FoldConfig(sparsity=0.3, n_init=1).to_dict(), "transform": "fold"}
    assert all(e["config"]["version"] == 1 for e in manifest["tensors"].values())
    assert b2s.load(tmp_path / "a.b2s").recipe == recipe


@pytest.mark.parametrize("name", ["v0.1.0-folded-resnet.b2s", "v0.1.0-selfcompressed-cnn.b2s"])
def test_artifacts_written_before_versions_still_load(name):
    manifest = b2s.read_manifest(FIXTURES / name)
    assert "version" not in manifest["recipe"]
    assert not any("version" in e["config"] for e in manifest["tensors"].values())
    cm = b2s.load(FIXTURES / name)
    assert cm.recipe.to_dict()["version"] == 1 and cm.recipe.transforms == []
    assert all(torch.isfinite(t).all() for t in cm.state_dict().values() if t.is_floating_point())


def test_an_artifact_with_a_newer_config_version_is_refused_naming_it(tmp_path):
    cm = b2s.compress({"w": torch.randn(64, 64)}, "uniform", min_numel=0, progress=False)
    path = tmp_path / "a.b2s"
    b2s.save(cm, path)
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["tensors"]["w"]["config"]["version"] = UniformConfig.version + 1
    raw = json.dumps(manifest).encode()  # re-signed, so that only the version is new
    (path / MANIFEST).write_bytes(raw)
    save_file(load_file(path / TENSORS), path / TENSORS, metadata={HASH_KEY: hashlib.sha256(raw).hexdigest()})
    with pytest.raises(Big2SmallError, match=rf"a\.b2s: .*uniform: version {UniformConfig.version + 1} was written by a newer"):
        b2s.load(path)
