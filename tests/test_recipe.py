import pytest
import torch

import big2small as b2s
from big2small.compress import compress
from big2small.errors import Big2SmallError
from big2small.folding import FoldConfig, fold
from big2small.folding.export import to_compressed
from big2small.generators import LowRankConfig, RawConfig, UniformConfig
from big2small.recipe import Override, Recipe, describe_module_tensors, describe_state_dict, plan


def _by_name(entries):
    return {e.name: e for e in entries}


def test_default_scope_compresses_large_conv_and_linear_only(small_net):
    entries = _by_name(plan(describe_module_tensors(small_net), Recipe(default=UniformConfig())))
    assert entries["fc.weight"].compressed  # 80 x 384
    assert entries["conv1d.weight"].compressed  # 96 x 64 x 5
    assert not entries["conv.weight"].compressed  # 1728 < 4096
    assert "small" in entries["conv.weight"].reason
    assert not entries["embed.weight"].compressed
    assert "include_embeddings" in entries["embed.weight"].reason
    assert entries["bn.running_var"].reason == "buffer"


def test_every_state_dict_tensor_is_planned(small_net):
    entries = plan(describe_module_tensors(small_net), Recipe(default=UniformConfig()))
    assert {e.name for e in entries} == set(small_net.state_dict())


def test_override_by_regex_wins_and_can_bring_small_tensors_in(small_net):
    recipe = Recipe(default=UniformConfig(), overrides=[Override(r"conv\..*", LowRankConfig(rank=2)), Override("fc", None)])
    entries = _by_name(plan(describe_module_tensors(small_net), recipe))
    assert isinstance(entries["conv.weight"].config, LowRankConfig)
    assert isinstance(entries["fc.weight"].config, RawConfig)
    assert "override" in entries["fc.weight"].reason


def test_include_embeddings(small_net):
    entries = _by_name(plan(describe_module_tensors(small_net), Recipe(default=UniformConfig(), include_embeddings=True)))
    assert entries["embed.weight"].compressed


def test_tied_tensors_are_planned_once_with_aliases():
    net = torch.nn.Module()
    net.a = torch.nn.Linear(128, 64)
    net.b = torch.nn.Linear(128, 64)
    net.b.weight = net.a.weight
    infos = describe_module_tensors(net)
    weights = [i for i in infos if i.name.endswith("weight")]
    assert len(weights) == 1 and weights[0].aliases == ["b.weight"]


def test_unsupported_layer_is_reported_not_silently_skipped():
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(128, 128))

    net = torch.nn.Module()
    net.odd = Odd()
    entries = plan(describe_module_tensors(net), Recipe(default=UniformConfig()))
    assert "unsupported layer type Odd" in entries[0].reason


def test_state_dict_kinds_inferred_from_rank_and_name():
    kinds = {i.name: i.kind for i in describe_state_dict(
        {"tok_embeddings.weight": torch.zeros(10, 4), "l.weight": torch.zeros(4, 4), "c.weight": torch.zeros(2, 2, 3, 3), "n.weight": torch.zeros(4)}
    )}
    assert kinds == {"tok_embeddings.weight": "embedding", "l.weight": "linear", "c.weight": "conv", "n.weight": "other"}


def test_recipe_round_trips_through_json():
    recipe = Recipe(default=UniformConfig(bits=3, group_size=64), overrides=[Override("x.*", None), Override("y", LowRankConfig(rank=4))],
                    target_bpw=3.5, target_over="compressed", budget_fixed={"group_size": 64},
                    transforms=[FoldConfig(sparsity=0.2), FoldConfig(sparsity=None, ratio=0.1, selection="l2")])
    assert Recipe.from_json(recipe.to_json()) == recipe


def test_a_recipe_file_lists_a_fold_then_a_method():
    recipe = Recipe.from_json('{"transforms": [{"transform": "fold", "sparsity": 0.2}], "default": {"method": "uniform", "bits": 4}}')
    assert recipe.transforms == [FoldConfig(sparsity=0.2)] and recipe.default == UniformConfig(bits=4)


def test_a_recipe_with_a_typo_is_refused_not_ignored():
    with pytest.raises(Big2SmallError, match=r"unknown option\(s\) \['defualt'\]; known: .*default"):
        Recipe.from_json('{"defualt": {"method": "uniform"}}')


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                               torch.nn.Linear(64, 8))


def test_a_recipe_that_lists_a_fold_stores_what_fold_then_to_compressed_store():
    model, config, then = _mlp(), FoldConfig(sparsity=0.3, n_init=1), UniformConfig(bits=4, group_size=16)
    listed = compress(model, Recipe(transforms=[config], default=then, min_numel=0), progress=False)
    result = fold(model, config, progress=False)
    direct = to_compressed(result, recipe=Recipe(default=then, min_numel=0))
    assert listed.size() == direct.size() and listed.size().n_parameters == result.parameters_before
    assert listed.state_dict().keys() == direct.state_dict().keys()
    assert all(torch.equal(t, direct.state_dict()[k]) for k, t in listed.state_dict().items())
    record, expected = listed.transforms[0].to_dict(), direct.transforms[0].to_dict()
    assert {**record, "seconds": 0} == {**expected, "seconds": 0}
    assert model[0].out_features == 64  # the caller's model is not folded in place


def test_a_size_target_after_a_fold_counts_against_the_original_parameters():
    model = _mlp()
    cm = compress(model, Recipe(transforms=[FoldConfig(sparsity=0.3, n_init=1)], default=UniformConfig(),
                                min_numel=0, raw_dtype="float32", target_bpw=4.0, budget_fixed={}), progress=False)
    assert cm.size().n_parameters == sum(p.numel() for p in model.parameters())
    assert 3.0 < cm.size().bpw_all <= 4.0


def test_a_fold_on_a_bare_state_dict_is_a_user_error():
    with pytest.raises(Big2SmallError, match="need the model's structure"):
        compress(_mlp().state_dict(), Recipe(transforms=[FoldConfig()], default=UniformConfig()), progress=False)


def test_bad_regex_is_a_user_error(small_net):
    with pytest.raises(Big2SmallError, match="bad override pattern"):
        plan(describe_module_tensors(small_net), Recipe(default=UniformConfig(), overrides=[Override("(", None)]))


def test_subclasses_of_supported_layers_are_recognised():
    class SamePaddingConv(torch.nn.Conv2d):
        pass

    net = torch.nn.Module()
    net.conv = SamePaddingConv(32, 64, 3)
    entries = _by_name(plan(describe_module_tensors(net), Recipe(default=UniformConfig())))
    assert entries["conv.weight"].kind == "conv" and entries["conv.weight"].compressed


def test_raw_override_on_an_integer_buffer_is_allowed(small_net):
    recipe = Recipe(default=UniformConfig(), overrides=[Override("bn.num_batches_tracked", RawConfig(dtype="same"))])
    entries = _by_name(plan(describe_module_tensors(small_net), recipe))
    assert not entries["bn.num_batches_tracked"].compressed


def test_compressing_an_integer_buffer_is_refused(small_net):
    recipe = Recipe(default=UniformConfig(), overrides=[Override("bn.num_batches_tracked", UniformConfig())])
    with pytest.raises(Big2SmallError, match="cannot compress a torch.int64 tensor"):
        plan(describe_module_tensors(small_net), recipe)


@pytest.mark.parametrize("state, match", [
    ({"a": torch.zeros(8, 8, dtype=torch.uint16)}, "uint16 tensors are not supported"),
    ({"a": torch.zeros(8, 8, dtype=torch.complex64)}, "complex64 tensors are not supported"),
    ({"a": torch.zeros(8, 8).to(torch.float8_e4m3fn)}, "float8_e4m3fn tensors are not supported"),
    ({}, "nothing to compress"),
    ({"a": torch.zeros(0, 8)}, "nothing to compress"),
    ({"a": torch.randn(64, 64), "b": torch.tensor([1.0, float("nan")])}, "b: NaN or Inf"),
    ({"a": torch.randn(64, 64), "b": torch.tensor([1.0, float("inf")])}, "b: NaN or Inf"),
])
def test_what_no_artifact_can_hold_is_refused_in_one_line(state, match):
    with pytest.raises(Big2SmallError, match=match) as info:
        b2s.compress(state, "uniform", bits=4, progress=False)
    assert "\n" not in str(info.value)


def test_kept_values_beyond_float16_are_stored_in_float32_and_the_plan_says_so():
    state = {"w": torch.randn(64, 64), "scale": torch.tensor([70000.0, -1e30, 0.5])}
    cm = b2s.compress(state, "uniform", bits=4, progress=False)
    entry = next(e for e in cm.plan if e.name == "scale")
    assert entry.config.dtype == "float32" and "beyond float16" in entry.reason
    assert torch.equal(cm.state_dict()["scale"], state["scale"])


@pytest.mark.parametrize("options, match", [
    ({"bpw": float("nan")}, "positive number, got nan"), ({"bpw": float("inf")}, "positive number, got inf"),
    ({"bpw": -1.0}, "positive number"), ({"bits": "abc"}, "bits must be int"),
])
def test_numeric_options_are_finite_and_typed(options, match):
    with pytest.raises(Big2SmallError, match=match):
        b2s.compress({"w": torch.randn(64, 64)}, "uniform", progress=False, **options)
