"""Evaluation: real offline data, perplexity, embeddings, classification and weight error.

Every metric returns a frozen dataclass holding the figure(s) and a JSON-serialisable
``protocol`` dict saying exactly how it was measured; ``describe()`` prints both on one line.
"""

from big2small.evaluate.classification import (
    AccuracyResult,
    AgreementResult,
    accuracy,
    agreement,
    logits_of,
)
from big2small.evaluate.data import (
    cache_dir,
    digits,
    fashion_mnist,
    lee50,
    lee_background_docs,
    photo_crops,
    photo_crops_protocol,
    photo_sources,
    wiki_text,
)
from big2small.evaluate.embeddings import (
    FidelityResult,
    Lee50Result,
    embedding_fidelity,
    lee50_pearson,
    sentence_embeddings,
)
from big2small.evaluate.perplexity import PerplexityResult, perplexity
from big2small.evaluate.weights import WeightErrorReport, WeightErrorRow, weight_error

__all__ = [
    "AccuracyResult",
    "AgreementResult",
    "FidelityResult",
    "Lee50Result",
    "PerplexityResult",
    "WeightErrorReport",
    "WeightErrorRow",
    "accuracy",
    "agreement",
    "cache_dir",
    "digits",
    "embedding_fidelity",
    "fashion_mnist",
    "lee50",
    "lee50_pearson",
    "lee_background_docs",
    "logits_of",
    "perplexity",
    "photo_crops",
    "photo_crops_protocol",
    "photo_sources",
    "sentence_embeddings",
    "weight_error",
    "wiki_text",
]
