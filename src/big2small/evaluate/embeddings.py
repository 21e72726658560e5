"""Sentence-embedding evaluation: embeddings, fidelity to a reference, Lee-50 correlation.

:func:`sentence_embeddings` reproduces the all-MiniLM-L6-v2 sentence-transformers pipeline
(Transformer -> mean pooling over the attention mask -> L2 normalisation) with a plain
``transformers`` encoder, so a compressed ``AutoModel`` can be scored without
sentence-transformers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from big2small.errors import Big2SmallError
from big2small.evaluate.data import lee50
from big2small.progress import progress_bar

__all__ = [
    "FidelityResult",
    "Lee50Result",
    "embedding_fidelity",
    "lee50_pearson",
    "sentence_embeddings",
]


def _protocol_str(protocol: dict[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k} {protocol[k]}" for k in keys if k in protocol)


@dataclass(frozen=True)
class FidelityResult:
    """Row-wise cosine similarity between candidate and reference embeddings (unitless, [-1, 1])."""

    mean_cosine: float
    min_cosine: float
    protocol: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: the figure and its protocol."""
        return (
            f"embedding fidelity: mean cosine {self.mean_cosine:.5f}, min {self.min_cosine:.5f} "
            f"({_protocol_str(self.protocol, ('data', 'n', 'dim'))})"
        )


@dataclass(frozen=True)
class Lee50Result:
    """Pearson correlation (unitless) between model and human Lee-50 document similarities."""

    pearson: float
    protocol: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line: the figure and its protocol."""
        return (
            f"Lee-50 Pearson {self.pearson:.4f} "
            f"({_protocol_str(self.protocol, ('pairs', 'pooling', 'max_length', 'similarity'))})"
        )


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def sentence_embeddings(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int = 256,
    progress: bool = False,
) -> Tensor:
    """Unit-norm sentence embeddings: mean of the last hidden states over real tokens.

    Args:
        model: a ``transformers`` encoder (``AutoModel``) whose output has
            ``last_hidden_state`` ``[B, T, d]`` (or is a tuple whose first item is).
        tokenizer: its tokenizer; texts are padded per batch and truncated to ``max_length``
            tokens (special tokens included), as sentence-transformers does (256 for MiniLM).
        texts: the sentences or documents.
        batch_size: texts per forward pass.
        max_length: truncation length in tokens.
        progress: show progress with an ETA on stderr (big2small.progress).

    Returns:
        float32 ``[len(texts), d]`` on the CPU, each row L2-normalised.
    """
    if len(texts) == 0:
        raise Big2SmallError("sentence_embeddings: no texts given")
    device = _device(model)
    chunks = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), progress_bar("embedding", len(texts), enabled=progress, unit="texts") as advance:
            for start in range(0, len(texts), batch_size):
                enc = tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(device)
                out = model(**enc)
                hidden = (out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0])
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                # Padding must not dilute the mean; clamp guards an all-padding row.
                summed = (hidden * mask).sum(dim=1)
                mean = summed / mask.sum(dim=1).clamp(min=1e-9)
                chunks.append(F.normalize(mean.float(), p=2, dim=1).cpu())
                advance(len(chunks[-1]))
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def embedding_fidelity(
    reference: Tensor, candidate: Tensor, *, data: str | dict | None = None
) -> FidelityResult:
    """How closely candidate embeddings match reference ones, row by row.

    Args:
        reference: ``[n, d]`` embeddings from the uncompressed model.
        candidate: ``[n, d]`` embeddings of the same texts from the compressed model.
        data: optional description of the texts (a name or a protocol dict), stored in the
            protocol.

    Returns:
        :class:`FidelityResult`: mean and minimum over the ``n`` rows of the cosine similarity
        (unitless, 1 = identical direction), computed in float64.
    """
    if reference.shape != candidate.shape or reference.ndim != 2:
        raise Big2SmallError(
            f"embedding_fidelity needs two [n, d] tensors of the same shape, got "
            f"{tuple(reference.shape)} and {tuple(candidate.shape)}"
        )
    cos = F.cosine_similarity(reference.double(), candidate.double(), dim=1, eps=1e-12)
    protocol = {
        "metric": "embedding_fidelity",
        "similarity": "row-wise cosine, float64",
        "data": data if data is not None else "unspecified",
        "n": int(reference.shape[0]),
        "dim": int(reference.shape[1]),
    }
    return FidelityResult(
        mean_cosine=float(cos.mean()), min_cosine=float(cos.min()), protocol=protocol
    )


def _pearson(x: Tensor, y: Tensor) -> float:
    x = x.double() - x.double().mean()
    y = y.double() - y.double().mean()
    return float((x * y).sum() / (x.norm() * y.norm()))


def lee50_pearson(
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    batch_size: int = 32,
    max_length: int = 256,
) -> Lee50Result:
    """Pearson correlation between model and human similarities on the Lee-50 documents.

    Each of the 50 documents (gensim ``lee.cor``) is embedded with :func:`sentence_embeddings`
    (mean pooling, L2 normalisation, truncation to ``max_length`` tokens); the model similarity
    of a pair is the cosine of their embeddings. The correlation is taken over the 1,225 pairs
    i < j against the mean human ratings (``similarities0-1.txt``).

    Returns:
        :class:`Lee50Result` with ``pearson`` (unitless, [-1, 1]).
    """
    docs, human = lee50()
    emb = sentence_embeddings(model, tokenizer, docs, batch_size=batch_size, max_length=max_length)
    cos = emb.double() @ emb.double().T
    iu = torch.triu_indices(len(docs), len(docs), offset=1)
    pearson = _pearson(cos[iu[0], iu[1]], human[iu[0], iu[1]])
    protocol = {
        "metric": "lee50_pearson",
        "dataset": "Lee-50 (gensim lee.cor + similarities0-1.txt)",
        "documents": len(docs),
        "pairs": int(iu.shape[1]),
        "pairs_rule": "upper triangle, i < j",
        "pooling": "mean over attention mask, L2-normalised",
        "max_length": max_length,
        "truncation": True,
        "similarity": "cosine",
        "correlation": "Pearson",
    }
    return Lee50Result(pearson=pearson, protocol=protocol)
