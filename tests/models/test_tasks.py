"""Tasks: one per kind of model, named in manifests; architectures map to them."""

import pytest
import torch
from torch import nn

from big2small.errors import Big2SmallError
from big2small.evaluate.suite import EvalSettings
from big2small.models.tasks import TASKS, evaluate, get_task, task_of_architecture


@pytest.mark.parametrize("architecture, task", [
    ("LlamaForCausalLM", "causal-lm"), ("GPT2LMHeadModel", "causal-lm"), ("BertModel", "encoder"),
    ("ViTForImageClassification", "image-classifier"), ("BertForSequenceClassification", "text-classifier"),
    ("T5ForConditionalGeneration", "unknown"), (None, "unknown"),
])
def test_every_architecture_maps_to_a_task_that_eval_knows(architecture, task):
    name = task_of_architecture(architecture)
    assert name == task
    assert get_task(name).name == name


def test_the_earlier_classifier_name_resolves_by_architecture():
    assert get_task("classifier", "BertForSequenceClassification").name == "text-classifier"
    assert get_task("classifier", "ViTForImageClassification").name == "image-classifier"


def test_unknown_tasks_are_one_line_errors():
    with pytest.raises(Big2SmallError, match="unknown task 'speech'"):
        get_task("speech")
    with pytest.raises(Big2SmallError, match="no task metrics"):
        evaluate(nn.Linear(2, 2), "unknown")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_gives_an_example_input_the_model_kind_accepts(name):
    x = get_task(name).example_input(nn.Linear(2, 2))
    assert isinstance(x, (torch.Tensor, dict))


def test_fidelity_tasks_refuse_to_run_without_a_reference():
    with pytest.raises(Big2SmallError, match="reference"):
        get_task("image-classifier").evaluate(nn.Sequential(nn.Flatten(), nn.LazyLinear(3)), None, None,
                                              EvalSettings(photos=2, progress=False))


def test_a_causal_lm_probes_itself_with_its_own_reproducible_text():
    from tiny_models import tiny_llama

    model, task = tiny_llama(), get_task("causal-lm")
    a = task.probe_inputs(model, 3, 12, seed=0)
    b = task.probe_inputs(model, 3, 12, seed=0)
    assert [x["input_ids"].shape for x in a] == [(1, 12)] * 3
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert len({tuple(x["input_ids"][0].tolist()) for x in a}) == 3  # sampled, not greedy
    loss, outputs = task.probe_loss(model, a[0], torch.Generator())
    assert outputs == 11 and loss.requires_grad


@pytest.mark.parametrize("name", ["encoder", "image-classifier", "fashion-mnist-classifier"])
def test_tasks_without_a_generator_probe_with_noise_inputs(name):
    from tiny_models import MBConvNet, tiny_bert

    model = tiny_bert() if name == "encoder" else MBConvNet().eval()
    if name == "fashion-mnist-classifier":
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    task = get_task(name)
    [example] = task.probe_inputs(model, 1, 8, seed=0)
    loss, outputs = task.probe_loss(model, example, torch.Generator().manual_seed(0))
    loss.backward()
    assert outputs > 0 and task.probe_source
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_a_task_without_a_probe_says_what_to_do_instead():
    with pytest.raises(Big2SmallError, match="--allocate weights"):
        get_task("unknown").probe_inputs(torch.nn.Linear(2, 2), 1, 8, seed=0)
