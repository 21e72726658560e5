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
