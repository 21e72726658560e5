"""Which metrics a model gets, by task, with the protocol beside every figure.

causal-lm: perplexity on the Wikipedia extract. encoder: mean cosine of sentence embeddings vs the
original model on lee_background documents, and Lee-50 Pearson. image-classifier: top-1 agreement
and KL vs the original on seeded crops of bundled natural photos. fashion-mnist-classifier (the
self-compression recipe's networks): top-1 accuracy on the 10,000 Fashion-MNIST test images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from big2small.errors import Big2SmallError


@dataclass
class EvalSettings:
    """Protocol knobs. Defaults follow the project's reference figures (see README)."""

    context: int = 512  # tokens per perplexity window
    windows: int = 20  # first n non-overlapping windows
    bos: int | str | None = None  # start token prepended to each window: None = the model's own, an id, or "none"
    documents: int = 300  # lee_background documents for embedding fidelity
    photos: int = 256  # seeded photo crops for classifier agreement
    seed: int = 0
    progress: bool = True


@dataclass
class MetricRow:
    """One figure: its name, value, whether higher is better, and how it was measured."""

    metric: str
    value: float
    higher_is_better: bool
    protocol: dict[str, Any] = field(default_factory=dict)
    text: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


TASKS = ("causal-lm", "encoder", "image-classifier", "fashion-mnist-classifier")


def reference_outputs(model: nn.Module, task: str, tokenizer: Any, settings: EvalSettings) -> dict[str, torch.Tensor]:
    """What the original model produces on the evaluation inputs (compared against later)."""
    from big2small.evaluate import data
    from big2small.evaluate.classification import logits_of
    from big2small.evaluate.embeddings import sentence_embeddings

    if task == "encoder":
        return {"embeddings": sentence_embeddings(model, tokenizer, data.lee_background_docs(settings.documents))}
    if task == "image-classifier":
        return {"logits": logits_of(model, data.photo_crops(settings.photos, seed=settings.seed))}
    return {}


def evaluate(model: nn.Module, task: str, tokenizer: Any = None, *, reference: dict[str, torch.Tensor] | None = None,
             settings: EvalSettings | None = None) -> list[MetricRow]:
    """Measure `model` on its task. `reference` (from reference_outputs on the original model)
    enables the fidelity metrics; without it only the absolute metrics are computed."""
    from big2small.evaluate import data

    settings = settings or EvalSettings()
    rows: list[MetricRow] = []
    if task == "causal-lm":
        from big2small.evaluate.perplexity import perplexity

        if tokenizer is None:
            raise Big2SmallError("perplexity needs the model's tokenizer, and none was found")
        r = perplexity(model, tokenizer, data.wiki_text(), context=settings.context, windows=settings.windows,
                       bos_token_id=settings.bos, progress=settings.progress, dataset="Wikipedia extract (gensim test data)")
        rows.append(MetricRow("perplexity", r.ppl, False, r.protocol, r.describe()))
    elif task == "encoder":
        from big2small.evaluate.embeddings import embedding_fidelity, lee50_pearson, sentence_embeddings

        if tokenizer is None:
            raise Big2SmallError("embedding metrics need the model's tokenizer, and none was found")
        if reference is not None:
            emb = sentence_embeddings(model, tokenizer, data.lee_background_docs(settings.documents))
            f = embedding_fidelity(reference["embeddings"], emb, data={
                "dataset": "lee_background.cor (gensim test data)", "documents": settings.documents,
                "pooling": "mean over attention mask, L2-normalised", "max_length": 256})
            rows.append(MetricRow("mean_cosine", f.mean_cosine, True, f.protocol, f.describe()))
        lee = lee50_pearson(model, tokenizer)
        rows.append(MetricRow("lee50_pearson", lee.pearson, True, lee.protocol, lee.describe()))
    elif task == "image-classifier":
        from big2small.evaluate.classification import agreement, logits_of

        if reference is None:
            raise Big2SmallError("classifier agreement needs the original model as reference")
        logits = logits_of(model, data.photo_crops(settings.photos, seed=settings.seed))
        a = agreement(reference["logits"], logits, data=data.photo_crops_protocol(settings.photos, seed=settings.seed))
        rows.append(MetricRow("top1_agreement", a.top1_agreement, True, a.protocol, a.describe()))
        rows.append(MetricRow("kl", a.kl_mean, False, a.protocol, a.describe()))
    elif task == "fashion-mnist-classifier":
        from big2small.evaluate.classification import accuracy

        images, labels = data.fashion_mnist_normalised("test")
        r = accuracy(model, images, labels, data={
            "dataset": "Fashion-MNIST test split (Debian dataset-fashion-mnist)",
            "preprocessing": f"/255, minus {data.FASHION_MNIST_MEAN}, over {data.FASHION_MNIST_STD}"})
        rows.append(MetricRow("top1_accuracy", r.top1, True, r.protocol, r.describe()))
    else:
        raise Big2SmallError(f"no task metrics for a model of task {task!r} (known: {', '.join(TASKS)})")
    return rows
