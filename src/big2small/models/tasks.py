"""What a model is for, and how it is measured: one `Task` per kind of model.

A task owns everything that depends on what the model does: an example input (to trace it and
count MACs), real calibration inputs where a method asks for them (labelled not data-free), the
reference outputs that fidelity metrics compare against, and the metrics themselves, each with
its protocol. The task's name is stored in an artifact's manifest (`ModelSource.task`).

causal-lm: perplexity on the Wikipedia extract. encoder: mean cosine of sentence embeddings
against the original model on lee_background documents, and Lee-50 Pearson. image-classifier:
top-1 agreement and KL against the original on seeded crops of bundled natural photos.
text-classifier: the same agreement on lee_background documents. fashion-mnist-classifier (the
zoo's Fashion-MNIST networks): top-1 accuracy on the 10,000 test images.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from big2small.errors import Big2SmallError
from big2small.evaluate import data
from big2small.evaluate.classification import accuracy, agreement, logits_of
from big2small.evaluate.embeddings import embedding_fidelity, lee50_pearson, sentence_embeddings
from big2small.evaluate.perplexity import perplexity
from big2small.evaluate.suite import EvalSettings, MetricRow

TOKENS = 128  # sequence length of the transformer example input
CALIBRATION_SEED = 1  # photo crops for calibration differ from the evaluation crops (seed 0)
TEXT_MAX_LENGTH = 256  # tokens per document for text models


class Task:
    """Base of every task. Subclasses set `name` and override what applies to them."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # True when the metrics compare against the original model's outputs (reference_outputs).
    needs_reference: ClassVar[bool] = False

    def example_input(self, model: nn.Module) -> Any:
        """One input (a tensor, or a dict of tensors for transformers), or None if the task has none."""
        return None

    def calibration_batches(self, images: int = 256, batch_size: int = 64) -> list[torch.Tensor]:
        """Real inputs for methods that are not data-free (e.g. folding's repair="data")."""
        raise Big2SmallError(f"no built-in inputs to calibrate a {self.name} model on "
                             "(use the Python API and pass your own batches)")

    def reference_outputs(self, model: nn.Module, tokenizer: Any, settings: EvalSettings) -> dict[str, torch.Tensor]:
        """What the original model produces on the evaluation inputs (compared against later)."""
        return {}

    def evaluate(self, model: nn.Module, tokenizer: Any, reference: dict[str, torch.Tensor] | None,
                 settings: EvalSettings) -> list[MetricRow]:
        """The task's metrics on `model`; fidelity metrics need `reference` (from reference_outputs)."""
        raise Big2SmallError(f"no task metrics for a model of task {self.name!r} (known: {', '.join(TASKS)})")

    # Data-free probing (bit allocation's sensitivity): inputs the task makes without any data set,
    # and a loss whose gradient is one sample of the output's Fisher (or Gauss-Newton) information.
    probe_source: ClassVar[str] = ""  # what the probe inputs are, for reports; "" = no probe

    def probe_inputs(self, model: nn.Module, count: int, length: int, seed: int) -> list[Any]:
        """`count` single-example inputs (text of `length` tokens, or one image), made without data
        (big2small.distill.text makes the text), the same for the same seed."""
        raise Big2SmallError(f"no data-free probe inputs for a model of task {self.name!r}; "
                             "allocate by weight error instead (--allocate weights)")

    def probe_loss(self, model: nn.Module, inputs: Any, generator: torch.Generator) -> tuple[torch.Tensor, int]:
        """(loss, outputs it sums over): the gradient of loss is an unbiased sample whose squared
        norm, per parameter, estimates the trace of the output's information matrix, summed over
        the outputs. Labels are sampled from the model's own distribution (true Fisher, not the
        empirical one); real-valued outputs are projected on a Gaussian vector (Gauss-Newton)."""
        raise Big2SmallError(f"no data-free probe for a model of task {self.name!r}")


def _require_tokenizer(tokenizer: Any, what: str) -> None:
    if tokenizer is None:
        raise Big2SmallError(f"{what} needs the model's tokenizer, and none was found")


def _sampled_label_loss(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Summed negative log-likelihood of labels drawn from softmax(logits) itself ([N, classes])."""
    logits = logits.float()
    with torch.no_grad():
        labels = torch.multinomial(torch.softmax(logits, -1).cpu(), 1, generator=generator).squeeze(1)
    return torch.nn.functional.cross_entropy(logits, labels.to(logits.device), reduction="sum")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class TextTask(Task):
    """Tasks of models that read token ids."""

    probe_source = "random token sequences (uniform over the vocabulary)"

    def example_input(self, model: nn.Module) -> Any:
        vocab = getattr(getattr(model, "config", None), "vocab_size", 1000)
        return {"input_ids": torch.arange(TOKENS).remainder(vocab).unsqueeze(0)}

    def probe_inputs(self, model, count, length, seed):
        from big2small.distill.text import random_tokens

        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if not vocab:
            raise Big2SmallError("cannot make probe text: the model's config has no vocab_size")
        ids = random_tokens(vocab, samples=count, seq_len=length, seed=seed)
        return [{"input_ids": row.unsqueeze(0)} for row in ids]

    def probe_loss(self, model, inputs, generator):
        out = model(**{k: v.to(_device(model)) for k, v in inputs.items()})
        logits = out.logits if hasattr(out, "logits") else None
        if logits is not None:  # a sequence classifier: its class distribution
            return _sampled_label_loss(logits.reshape(-1, logits.shape[-1]), generator), logits.shape[0]
        hidden = (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]).float()
        direction = torch.randn(hidden.shape, generator=generator).to(hidden.device)
        return (hidden * direction).sum(), hidden.shape[0] * hidden.shape[1]


class CausalLM(TextTask):
    name = "causal-lm"
    description = "perplexity on the Wikipedia extract (gensim test data)"
    probe_source = "text the model samples itself from its start token (temperature 1)"

    def probe_inputs(self, model, count, length, seed):
        """Text the model samples itself from its start token, every token drawn from its own
        distribution (no greedy start: the next tokens must be samples for the Fisher estimate)."""
        from big2small.distill.text import sample_text

        start = getattr(getattr(model, "config", None), "bos_token_id", None)
        ids = sample_text(model, samples=count, seq_len=length, start_token_id=0 if start is None else int(start),
                          seed=seed, greedy_tokens=0, temperature=1.0, progress=False)
        return [{"input_ids": row.unsqueeze(0)} for row in ids]

    def probe_loss(self, model, inputs, generator):
        # The text is the model's own sample, so its next tokens are labels drawn from the model.
        ids = inputs["input_ids"].to(_device(model))
        logits = model(input_ids=ids).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum")
        return loss, ids[:, 1:].numel()

    def evaluate(self, model, tokenizer, reference, settings):
        _require_tokenizer(tokenizer, "perplexity")
        r = perplexity(model, tokenizer, data.wiki_text(), context=settings.context, windows=settings.windows,
                       bos_token_id=settings.bos, progress=settings.progress, dataset="Wikipedia extract (gensim test data)")
        return [MetricRow("perplexity", r.ppl, False, r.protocol, r.describe())]


class Encoder(TextTask):
    name = "encoder"
    description = "sentence-embedding fidelity (mean cosine vs the original) and Lee-50 Pearson"
    needs_reference = True

    def reference_outputs(self, model, tokenizer, settings):
        _require_tokenizer(tokenizer, "embedding metrics")
        return {"embeddings": sentence_embeddings(model, tokenizer, data.lee_background_docs(settings.documents),
                                                  progress=settings.progress)}

    def evaluate(self, model, tokenizer, reference, settings):
        _require_tokenizer(tokenizer, "embedding metrics")
        rows = []
        if reference is not None:
            emb = sentence_embeddings(model, tokenizer, data.lee_background_docs(settings.documents),
                                      progress=settings.progress)
            f = embedding_fidelity(reference["embeddings"], emb, data={
                "dataset": "lee_background.cor (gensim test data)", "documents": settings.documents,
                "pooling": "mean over attention mask, L2-normalised", "max_length": TEXT_MAX_LENGTH})
            rows.append(MetricRow("mean_cosine", f.mean_cosine, True, f.protocol, f.describe()))
        lee = lee50_pearson(model, tokenizer)
        rows.append(MetricRow("lee50_pearson", lee.pearson, True, lee.protocol, lee.describe()))
        return rows


def _agreement_rows(reference: dict[str, torch.Tensor] | None, logits: torch.Tensor, protocol: Any) -> list[MetricRow]:
    if reference is None:
        raise Big2SmallError("classifier agreement needs the original model as reference")
    a = agreement(reference["logits"], logits, data=protocol)
    return [MetricRow("top1_agreement", a.top1_agreement, True, a.protocol, a.describe()),
            MetricRow("kl", a.kl_mean, False, a.protocol, a.describe())]


class _ImageProbe(Task):
    """Image classifiers' probe: Gaussian images in the normalised input space, labels sampled from
    the model's own prediction."""

    probe_source = "Gaussian-noise images (normalised input space)"

    def probe_inputs(self, model, count, length, seed):
        shape = self.example_input(model).shape[1:]
        generator = torch.Generator().manual_seed(seed)
        return [torch.randn((1, *shape), generator=generator) for _ in range(count)]

    def probe_loss(self, model, inputs, generator):
        out = model(inputs.to(_device(model)))
        logits = out.logits if hasattr(out, "logits") else out
        return _sampled_label_loss(logits, generator), logits.shape[0]


class ImageClassifier(_ImageProbe):
    name = "image-classifier"
    description = "top-1 agreement and KL vs the original on seeded crops of bundled photos"
    needs_reference = True

    def example_input(self, model: nn.Module) -> Any:
        return torch.zeros(1, 3, 224, 224)

    def calibration_batches(self, images: int = 256, batch_size: int = 64) -> list[torch.Tensor]:
        return list(data.photo_crops(images, seed=CALIBRATION_SEED).split(batch_size))

    def reference_outputs(self, model, tokenizer, settings):
        return {"logits": logits_of(model, data.photo_crops(settings.photos, seed=settings.seed))}

    def evaluate(self, model, tokenizer, reference, settings):
        logits = logits_of(model, data.photo_crops(settings.photos, seed=settings.seed))
        return _agreement_rows(reference, logits, data.photo_crops_protocol(settings.photos, seed=settings.seed))


@torch.inference_mode()
def _text_logits(model: nn.Module, tokenizer: Any, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """A sequence classifier's logits [N, classes] on `texts` (truncated to TEXT_MAX_LENGTH tokens)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], padding=True, truncation=True,
                            max_length=TEXT_MAX_LENGTH, return_tensors="pt").to(device)
            out = model(**enc)
            chunks.append((out.logits if hasattr(out, "logits") else out[0]).float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


class TextClassifier(TextTask):
    name = "text-classifier"
    description = "top-1 agreement and KL vs the original on lee_background documents"
    needs_reference = True

    def _protocol(self, settings: EvalSettings) -> dict[str, Any]:
        return {"dataset": "lee_background.cor (gensim test data)", "documents": settings.documents,
                "max_length": TEXT_MAX_LENGTH}

    def reference_outputs(self, model, tokenizer, settings):
        _require_tokenizer(tokenizer, "text classifier agreement")
        return {"logits": _text_logits(model, tokenizer, data.lee_background_docs(settings.documents))}

    def evaluate(self, model, tokenizer, reference, settings):
        _require_tokenizer(tokenizer, "text classifier agreement")
        logits = _text_logits(model, tokenizer, data.lee_background_docs(settings.documents))
        return _agreement_rows(reference, logits, self._protocol(settings))


class FashionMNISTClassifier(_ImageProbe):
    name = "fashion-mnist-classifier"
    description = "top-1 accuracy on the 10,000 Fashion-MNIST test images"

    def example_input(self, model: nn.Module) -> Any:
        return torch.zeros(1, 1, 28, 28)

    def calibration_batches(self, images: int = 256, batch_size: int = 64) -> list[torch.Tensor]:
        return list(data.fashion_mnist_normalised("train")[0][:images].split(batch_size))

    def evaluate(self, model, tokenizer, reference, settings):
        images, labels = data.fashion_mnist_normalised("test")
        r = accuracy(model, images, labels, data={
            "dataset": "Fashion-MNIST test split (Debian dataset-fashion-mnist)",
            "preprocessing": f"/255, minus {data.FASHION_MNIST_MEAN}, over {data.FASHION_MNIST_STD}"})
        return [MetricRow("top1_accuracy", r.top1, True, r.protocol, r.describe())]


class Unknown(Task):
    name = "unknown"
    description = "no known task: weights only (compress, verify, decompress)"


TASKS: dict[str, Task] = {t.name: t for t in (CausalLM(), Encoder(), ImageClassifier(), TextClassifier(),
                                               FashionMNISTClassifier())}
# Task names written by earlier versions. "classifier" covered HF image and sequence classifiers
# alike; `task_of_architecture` tells them apart where the architecture is known.
_LEGACY_NAMES = {"classifier": "image-classifier"}


def get_task(name: str | None, architecture: str | None = None) -> Task:
    """The task called `name` ("unknown" or None gives the weights-only task). `architecture` (a
    transformers class name) resolves the task names of earlier versions."""
    if name in (None, "unknown"):
        return Unknown()
    if name in _LEGACY_NAMES:
        name = task_of_architecture(architecture) if architecture else _LEGACY_NAMES[name]
    task = TASKS.get(name)
    if task is None:
        raise Big2SmallError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return task


def task_of_architecture(architecture: str | None) -> str:
    """The task name of a transformers model class, from its naming convention."""
    if not architecture:
        return "unknown"
    if architecture.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal-lm"
    if architecture.endswith("ForImageClassification"):
        return "image-classifier"
    if architecture.endswith("ForSequenceClassification"):
        return "text-classifier"
    if architecture.endswith("Model"):
        return "encoder"
    return "unknown"


def reference_outputs(model: nn.Module, task: str, tokenizer: Any, settings: EvalSettings) -> dict[str, torch.Tensor]:
    """What the original model of task `task` produces on the evaluation inputs."""
    return get_task(task).reference_outputs(model, tokenizer, settings)


def evaluate(model: nn.Module, task: str, tokenizer: Any = None, *, reference: dict[str, torch.Tensor] | None = None,
             settings: EvalSettings | None = None) -> list[MetricRow]:
    """Measure `model` on its task. `reference` (from reference_outputs on the original model)
    enables the fidelity metrics; without it only the absolute metrics are computed."""
    return get_task(task).evaluate(model, tokenizer, reference, settings or EvalSettings())
