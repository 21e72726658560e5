import dataclasses

import pytest
import torch

import big2small as b2s
from big2small.errors import Big2SmallError
from big2small.transforms.records import ChannelRemovalRecord


def test_compressed_model_runs_close_to_original(small_net):
    cm = b2s.compress(small_net, "uniform", bits=8, group_size=64, progress=False)
    x = torch.randn(2, 3, 8, 8)
    restored = cm.apply_to(type(small_net)().eval())
    with torch.no_grad():
        ref, out = small_net(x), restored(x)
    assert torch.allclose(ref, out, atol=0.05 * ref.abs().max().item())


def test_size_report_counts_every_stored_bit(small_net):
    cm = b2s.compress(small_net, "uniform", bits=4, group_size=64, progress=False)
    size = cm.size()
    assert size.bits_total == sum(e.total_bits for e in cm.tensors.values())
    assert size.n_parameters == sum(p.numel() for p in small_net.parameters())
    assert size.bits_raw > 0 and size.bits_compressed > 0
    assert size.ratio_vs_fp32 == pytest.approx(2 * size.ratio_vs_fp16)


@pytest.mark.parametrize("method", ["uniform", "lowrank", "prune"])
@pytest.mark.parametrize("target", [4.0, 6.0])
def test_bpw_target_is_met(small_net, method, target):
    cm = b2s.compress(small_net, method, bpw=target, progress=False)
    assert cm.size().bpw_all <= target
    assert any(e.budgeted for e in cm.plan)


def test_bpw_target_uses_most_of_the_budget(small_net):
    cm = b2s.compress(small_net, "prune", bpw=6.0, progress=False)
    assert cm.size().bpw_all > 5.8


def test_bpw_target_keeps_pinned_options(small_net):
    cm = b2s.compress(small_net, "uniform", bpw=6.0, group_size=32, progress=False)
    configs = [e.config for e in cm.plan if e.compressed]
    assert configs and all(c.group_size == 32 for c in configs)


def test_impossible_target_is_refused_with_reason(small_net):
    with pytest.raises(Big2SmallError, match="impossible"):
        b2s.compress(small_net, "uniform", bpw=0.5, progress=False)


def test_nan_weights_refused_naming_the_tensor(small_net):
    with torch.no_grad():
        small_net.fc.weight[0, 0] = float("nan")
    with pytest.raises(Big2SmallError, match="fc.weight.*NaN"):
        b2s.compress(small_net, "uniform", progress=False)


def test_unknown_method_is_a_user_error(small_net):
    with pytest.raises(Big2SmallError, match="unknown method"):
        b2s.compress(small_net, "zip", progress=False)


def test_unknown_option_is_a_user_error(small_net):
    with pytest.raises(Big2SmallError, match="unknown option"):
        b2s.compress(small_net, "uniform", bitz=3, progress=False)


def test_state_dict_compresses_without_a_model():
    torch.manual_seed(0)
    state = {"layer.weight": torch.randn(128, 256), "layer.bias": torch.randn(128)}
    cm = b2s.compress(state, "uniform", bits=8, progress=False)
    assert cm.tensors["layer.weight"].method == "uniform"
    assert torch.allclose(cm.state_dict()["layer.weight"], state["layer.weight"], atol=0.02)


def test_tied_weights_are_stored_once_and_retied():
    net = torch.nn.Module()
    net.a = torch.nn.Linear(128, 64)
    net.b = torch.nn.Linear(128, 64)
    net.b.weight = net.a.weight
    cm = b2s.compress(net, "uniform", progress=False)
    assert "b.weight" not in cm.tensors and cm.aliases == {"b.weight": "a.weight"}
    state = cm.state_dict()
    assert state["b.weight"] is state["a.weight"]


def test_hf_conv1d_is_compressed_in_its_transposed_layout():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    layer = Conv1D(192, 64)  # weight [in=64, out=192]
    cm = b2s.compress(layer, "uniform", bits=8, group_size=64, progress=False)
    enc = cm.tensors["weight"]
    assert enc.layout.transposed and enc.layout.rows == 192
    assert torch.allclose(cm.state_dict()["weight"], layer.weight, atol=0.01)


def test_apply_to_a_different_model_is_refused(small_net):
    cm = b2s.compress(small_net, "uniform", progress=False)
    with pytest.raises(Big2SmallError, match="does not match"):
        cm.apply_to(torch.nn.Linear(3, 3))


def test_embedding_compresses_when_included(small_net):
    cm = b2s.compress(small_net, "uniform", bits=8, group_size=32, include_embeddings=True, progress=False)
    assert cm.tensors["embed.weight"].method == "uniform"
    assert torch.allclose(cm.state_dict()["embed.weight"], small_net.embed.weight, atol=0.02)


def test_depthwise_conv_compresses_through_an_override(small_net):
    from big2small.generators import UniformConfig

    cm = b2s.compress(small_net, "uniform", overrides=[("depthwise", UniformConfig(bits=8, group_size=9))], progress=False)
    enc = cm.tensors["depthwise.weight"]
    assert enc.method == "uniform" and (enc.layout.rows, enc.layout.cols) == (64, 9)
    assert torch.allclose(cm.state_dict()["depthwise.weight"], small_net.depthwise.weight, atol=0.01)


def test_weight_error_covers_compressed_tensors_only(small_net):
    cm = b2s.compress(small_net, "uniform", bits=4, group_size=64, progress=False)
    report = cm.weight_error(small_net.state_dict())
    assert {r.name for r in report.rows} == {n for n, e in cm.tensors.items() if e.method != "raw"}
    assert 10 < report.total.sqnr_db < 30


def test_weight_error_is_none_when_nothing_is_compressed(small_net):
    cm = b2s.compress(small_net, "uniform", min_numel=10**9, progress=False)
    assert cm.weight_error(small_net.state_dict()) is None


def _first_compressed(cm):
    return next(e for e in cm.plan if e.compressed)


def test_pre_encoded_tensors_are_stored_as_given_with_their_reason(small_net):
    planned = b2s.compress(small_net, "uniform", bits=4, group_size=64, progress=False)
    name = _first_compressed(planned).name
    given = {name: planned.tensors[name]}
    cm = b2s.compress(small_net, "uniform", bits=4, group_size=64, progress=False, pre_encoded=given,
                      pre_encoded_reason="fitted elsewhere")
    assert cm.tensors[name] is given[name]
    assert next(e for e in cm.plan if e.name == name).reason == "fitted elsewhere"


def test_pre_encoded_tensors_must_match_the_plan(small_net):
    planned = b2s.compress(small_net, "uniform", bits=4, group_size=64, progress=False)
    name = _first_compressed(planned).name
    enc = planned.tensors[name]
    with pytest.raises(Big2SmallError, match="not in the model"):
        b2s.compress(small_net, "uniform", bits=4, group_size=64, progress=False, pre_encoded={"nope.weight": enc})
    wrong_bits = dataclasses.replace(enc, bits={**enc.bits, "header": enc.bits["header"] + 8})
    with pytest.raises(Big2SmallError, match="the plan says"):
        b2s.compress(small_net, "uniform", bits=4, group_size=64, progress=False, pre_encoded={name: wrong_bits})
    other = next(e.name for e in planned.plan if e.compressed and e.shape != enc.layout.shape)
    with pytest.raises(Big2SmallError, match="pre-encoded shape"):
        b2s.compress(small_net, "uniform", bits=4, group_size=64, progress=False, pre_encoded={other: enc})


def test_transform_records_and_the_original_parameter_count_are_kept(small_net):
    record = ChannelRemovalRecord({"conv": 2})
    cm = b2s.compress(small_net, "uniform", bits=4, progress=False, transforms=[record], n_parameters=10**6)
    assert cm.transforms == [record] and cm.size().n_parameters == 10**6


# --- filled size targets (bit allocation) ---------------------------------------------------------

def target_met(cm, target: float) -> bool:
    """Within 1% under the target, never over."""
    return target * 0.99 <= cm.size().bpw_all <= target


class _Stack(torch.nn.Module):
    """64 linear layers of 64 x 64 and unequal scale: many tensors, each small against the model."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.layers = torch.nn.ModuleList(torch.nn.Linear(64, 64, bias=False) for _ in range(64))
        with torch.no_grad():
            for i, layer in enumerate(self.layers):
                layer.weight.mul_(1 + i / 10)

    def forward(self, x):
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return x


@pytest.mark.parametrize("method, target", [("uniform", 2.5), ("uniform", 3.25), ("trellis", 3.25), (None, 2.5)])
def test_bpw_target_is_filled_to_within_one_percent_under(method, target):
    cm = b2s.compress(_Stack(), method, bpw=target, progress=False)
    assert target_met(cm, target)
    assert all(e.budgeted and e.reason == "allocated by weights error" for e in cm.plan if e.numel >= 4096)


def test_equal_allocation_gives_every_tensor_the_same_share():
    cm = b2s.compress(_Stack(), "uniform", bpw=3.25, allocate="equal", progress=False)
    configs = {str(e.config) for e in cm.plan if e.budgeted}
    assert len(configs) == 1 and cm.size().bpw_all <= 3.25


def test_allocation_by_weight_error_beats_equal_shares_on_weight_error():
    model = _Stack()
    original = {n: t.clone() for n, t in model.state_dict().items()}

    def squared_error(cm):
        decoded = cm.state_dict()
        return sum(float((decoded[n].float() - original[n]).pow(2).sum()) for n in original)

    equal = b2s.compress(model, "uniform", bpw=3.25, allocate="equal", progress=False)
    filled = b2s.compress(model, "uniform", bpw=3.25, allocate="weights", progress=False)
    assert squared_error(filled) < squared_error(equal)
    assert len({str(e.config) for e in filled.plan if e.budgeted}) > 1  # the mix differs by tensor


def test_no_method_with_a_target_mixes_trellis_widths_and_may_keep_tensors(small_net):
    cm = b2s.compress(small_net, None, bpw=6.0, min_numel=256, progress=False)
    allocated = [e for e in cm.plan if e.budgeted]
    assert {e.config.method for e in allocated} <= {"trellis", "raw"}
    assert "embed.weight" in {e.name for e in allocated}  # embeddings are in scope
    assert cm.size().bpw_all <= 6.0


@pytest.mark.parametrize("method, allocate", [(None, "auto"), ("uniform", "auto"), ("uniform", "equal")])
def test_a_target_over_the_compressed_tensors_counts_only_their_bits(method, allocate):
    cm = b2s.compress(_Stack(), method, bpw=3.25, target_over="compressed", allocate=allocate, progress=False)
    size = cm.size()
    assert size.bpw_scope <= 3.25
    if allocate != "equal":  # allocation fills it; equal shares land under it at the widths there are
        assert size.bpw_scope >= 0.99 * 3.25
    assert size.bits_compressed == sum(e.total_bits for e in cm.tensors.values() if e.compressed)


def test_a_target_over_the_compressed_tensors_keeps_the_default_scope(small_net):
    default = {e.name for e in b2s.compress(small_net, "uniform", progress=False).plan if e.compressed}
    cm = b2s.compress(small_net, None, bpw=4.0, target_over="compressed", progress=False)
    assert {e.name for e in cm.plan if e.compressed} == default  # no embedding brought in, none kept raw
    assert {e.name for e in cm.plan if e.budgeted} == default
    assert cm.size().bpw_scope <= 4.0 < cm.size().bpw_all  # the kept tensors (fp16) are outside the budget


def test_a_target_over_the_compressed_tensors_names_their_feasible_range():
    with pytest.raises(Big2SmallError, match=r"the compressed tensors take \d+\.\d+ bpw at the least"):
        b2s.compress(_Stack(), None, bpw=0.5, target_over="compressed", progress=False)
    with pytest.raises(Big2SmallError, match="target_over must be one of model, compressed"):
        b2s.compress(_Stack(), None, bpw=3.0, target_over="all", progress=False)


def test_impossible_targets_name_the_feasible_range():
    with pytest.raises(Big2SmallError, match=r"impossible.* takes \d+\.\d+ bpw at the least, and the original takes 32\.000"):
        b2s.compress(_Stack(), "uniform", bpw=0.5, progress=False)
    with pytest.raises(Big2SmallError, match="the original takes 32.000"):
        b2s.compress(_Stack(), "trellis", bpw=32.0, progress=False)


def test_causal_lm_is_allocated_by_output_error_and_a_state_dict_cannot_be():
    from tiny_models import tiny_llama

    model = tiny_llama()
    recipe = b2s.make_recipe("uniform", bpw=4.0, min_numel=1024, include_embeddings=True)
    recipe.allocation.probe_count, recipe.allocation.probe_tokens = 4, 16  # a quick probe
    cm = b2s.compress(model, recipe, progress=False)
    assert all(e.reason == "allocated by output error" for e in cm.plan if e.budgeted)
    assert target_met(cm, 4.0)
    with pytest.raises(Big2SmallError, match="output error is impossible here"):
        b2s.compress(model.state_dict(), "uniform", bpw=4.0, min_numel=1024, include_embeddings=True,
                     allocate="output", progress=False)
