"""Causal-LM perplexity under an explicit, recorded protocol (docs/evaluation.md#perplexity).

The whole text is tokenised once (no special tokens), cut into non-overlapping windows, and the
final partial window is dropped. The loss is the mean token NLL over every predicted position,
computed with an fp32 log-softmax; PPL = exp(mean NLL).

The start token (``bos_token_id=``) is the model's own unless given: see :func:`start_token`.
Where it goes (``bos=``), with ``L = context``:

- ``"prepend"`` (default): ``L`` text tokens per window, with the start token prepended, so the
  model sees ``L + 1`` positions and all ``L`` text tokens are predicted; the stride through the
  text is ``L``. This is the reference protocol "context 512, first 20 windows, start token
  prepended" (for SmolLM2 the start token is id 0, ``<|endoftext|>``).
- ``"per_window"``: the start token is prepended to every window, which then holds ``L - 1``
  text tokens (``L`` positions, ``L - 1`` predicted).
- ``"once"``: the start token is prepended once, to the whole token stream; windows of ``L``
  positions follow (the first starts with it; ``L - 1`` predictions per window).
- ``"none"``: plain windows of ``L`` text tokens (``L - 1`` predictions per window). A model
  without a start token gets this layout whatever ``bos`` asks for.

Measured [our design: measured] for SmolLM2-135M-Instruct fp32 (GGUF dequantised), the gensim
Wikipedia extract of :func:`big2small.evaluate.data.wiki_text`, L = 512, first 20 windows:
``prepend`` 23.670 (512 text tokens + id 0); ``per_window`` with id 0 (511 + id 0) 23.483;
``once`` with id 0 23.346; ``none`` 23.230. The quoted reference figure 23.9 was not reproduced
exactly by exp(mean NLL) under any of these; the arithmetic mean of the 20 per-window
perplexities (not what this function reports) is 23.98 for 512 + 1 and 23.78 for 511 + 1, so
the reference likely differs in aggregation or in text cleaning (it quotes 103 articles; this
cleaning keeps 106).
"""

from __future__ import annotations

import hashlib
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from big2small.errors import Big2SmallError
from big2small.progress import progress_bar

__all__ = ["BOS_MODES", "PerplexityResult", "perplexity", "start_token", "window_token_ids"]

# exp() of more than this overflows a float64; a mean loss that large reports perplexity inf.
_MAX_EXP_ARG = math.log(sys.float_info.max)
BOS_MODES = ("prepend", "per_window", "once", "none")

# Models whose declared bos_token is not what their pretraining put between documents, matched on
# their tokenizer: (vocabulary size, the tokens at ids 0, 1, 2) -> (id to prepend, why). The
# SmolLM2 family's Instruct tokenizers declare <|im_start|>, which opens a chat turn.
DOCUMENT_SEPARATORS = {
    (49152, ("<|endoftext|>", "<|im_start|>", "<|im_end|>")): (
        0, "SmolLM2's document separator; its bos_token <|im_start|> opens chat turns"),
}

_CHOOSE = "choose it with --bos ID (or --bos none)"

# An architecture's documented convention (by config.model_type), used when neither the tokenizer
# nor the config names a start token: "eos" (the end-of-text token also separates documents, as
# GPT-2's <|endoftext|> does) or "required" (trained with a BOS: refuse to guess which).
ARCHITECTURE_START = {
    "gpt2": "eos", "gpt_neox": "eos", "gptj": "eos",
    "llama": "required", "mistral": "required", "gemma": "required", "gemma2": "required",
    "gemma3_text": "required",
}


@dataclass(frozen=True)
class PerplexityResult:
    """Perplexity of a causal LM on a text.

    ppl: exp(mean_nll), unitless. mean_nll: mean token negative log-likelihood in nats.
    tokens_scored: number of predicted positions averaged over. protocol: how it was measured.
    window_nll: the mean NLL (nats/token) of each window, in order, for diagnostics.
    """

    ppl: float
    mean_nll: float
    tokens_scored: int
    protocol: dict[str, Any] = field(default_factory=dict)
    window_nll: tuple[float, ...] = ()

    def describe(self) -> str:
        """One line: the figure and its protocol."""
        p = self.protocol
        start = "" if p.get("bos_token_id") is None else f" id {p['bos_token_id']} {p.get('bos_token')!r}"
        return (
            f"perplexity {self.ppl:.3f} (mean NLL {self.mean_nll:.4f} nats over "
            f"{self.tokens_scored} tokens; {p.get('dataset')}, context {p.get('context')}, "
            f"{p.get('windows_used')} windows of stride {p.get('stride')}, "
            f"bos={p.get('bos')}{start} ({p.get('bos_source')}), tokenizer {p.get('tokenizer')})"
        )


def _tokenize(tokenizer: Any, text: str) -> Tensor:
    # verbose=False silences the "longer than model max length" warning: the text is meant to
    # be longer, it is windowed below.
    enc = tokenizer(text, add_special_tokens=False, return_attention_mask=False, verbose=False)
    return torch.as_tensor(enc["input_ids"], dtype=torch.long)


def _vocab_size(tokenizer: Any, config: Any) -> int | None:
    size = getattr(config, "vocab_size", None)
    if size is None and hasattr(tokenizer, "__len__"):
        size = len(tokenizer)
    return size if size is not None else getattr(tokenizer, "vocab_size", None)


def _token_text(tokenizer: Any, token_id: int | None) -> str | None:
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    return None if token_id is None or convert is None else convert(token_id)


def start_token(tokenizer: Any, config: Any = None, override: int | str | None = None) -> tuple[int | None, str]:
    """The token prepended to each perplexity window, and a short note of where it came from.

    In order: ``override`` (a token id, or ``"none"`` for no start token); an explicit entry of
    :data:`DOCUMENT_SEPARATORS` (SmolLM2: id 0); the tokenizer's ``bos_token_id``; the config's
    ``bos_token_id``; the architecture's convention (:data:`ARCHITECTURE_START`); else none.

    Raises :class:`Big2SmallError` rather than guess when the tokenizer and the config name
    different ids, when the id found is the tokenizer's pad or unk token (and not also its BOS or
    EOS), when none is named but the architecture needs one, or when the id is outside the vocabulary.
    """
    vocab = _vocab_size(tokenizer, config)
    if override is None:
        first_tokens = tuple(_token_text(tokenizer, i) for i in range(3)) if (vocab or 0) > 2 else ()
        token_id, source = DOCUMENT_SEPARATORS.get((vocab, first_tokens)) or _declared_start(tokenizer, config)
    elif str(override).strip().lower() == "none":
        return None, "none, as given"
    else:
        try:
            token_id, source = int(override), "as given"
        except ValueError:
            raise Big2SmallError(f"the start token (--bos) must be a token id or none, got {override!r}") from None
    if token_id is not None and vocab is not None and not 0 <= token_id < vocab:
        raise Big2SmallError(f"start token id {token_id} ({source}) is outside the vocabulary of {vocab}")
    return token_id, source


def _declared_start(tokenizer: Any, config: Any) -> tuple[int | None, str]:
    # The tokenizer's or config's bos_token_id, else the architecture's convention; checked.
    tok_bos, cfg_bos = getattr(tokenizer, "bos_token_id", None), getattr(config, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    model_type = getattr(config, "model_type", None)
    if tok_bos is not None and cfg_bos is not None and tok_bos != cfg_bos:
        raise Big2SmallError(f"the tokenizer's bos_token_id {tok_bos} and the config's {cfg_bos} differ: {_CHOOSE}")
    if tok_bos is not None:
        token_id, source = int(tok_bos), "tokenizer bos_token"
    elif cfg_bos is not None:
        token_id, source = int(cfg_bos), "config bos_token_id"
    elif ARCHITECTURE_START.get(model_type) == "eos" and eos is not None:
        token_id, source = int(eos), f"{model_type} convention: eos starts documents"
    elif ARCHITECTURE_START.get(model_type) == "required":
        raise Big2SmallError(f"{model_type} models are trained with a start token but neither the tokenizer nor "
                             f"the config names one: {_CHOOSE}")
    else:
        return None, "none: neither the tokenizer nor the config names one"
    suspect = {getattr(tokenizer, "pad_token_id", None), getattr(tokenizer, "unk_token_id", None)} - {tok_bos, eos, None}
    if token_id in suspect:
        raise Big2SmallError(f"the start token from the {source} is id {token_id} "
                             f"({_token_text(tokenizer, token_id)!r}), the tokenizer's pad or unk token: "
                             f"refusing to guess; {_CHOOSE}")
    return token_id, source


def _text_per_window(context: int, bos: str) -> int:
    # The stride through the (BOS-extended, for "once") token stream.
    return context - 1 if bos == "per_window" else context


def window_token_ids(
    ids: Tensor, *, context: int, windows: int | None, bos: str, bos_id: int | None
) -> Tensor:
    """Cut a 1-D token stream into the model inputs for one BOS convention.

    Returns an int64 tensor ``[n_windows, positions]``: ``positions = context + 1`` for
    ``bos="prepend"`` and ``context`` otherwise (see the module docstring). The final partial
    window is dropped; ``windows`` keeps only the first ``windows`` (``None`` keeps all).
    """
    if bos not in BOS_MODES:
        raise Big2SmallError(f"bos must be one of {BOS_MODES}, got {bos!r}")
    if bos == "once":
        ids = torch.cat([torch.tensor([bos_id], dtype=torch.long), ids])
    text_per_window = _text_per_window(context, bos)
    if text_per_window < 1 or (bos in ("once", "none") and context < 2):
        raise Big2SmallError(f"context {context} is too short for bos={bos!r}")
    n_full = ids.numel() // text_per_window
    n = n_full if windows is None else min(windows, n_full)
    if n < 1:
        raise Big2SmallError(
            f"the text has {ids.numel()} tokens: not one full window of {text_per_window}"
        )
    if windows is not None and windows > n_full:
        raise Big2SmallError(
            f"asked for {windows} windows of {text_per_window} tokens but the text "
            f"({ids.numel()} tokens) holds only {n_full}"
        )
    body = ids[: n * text_per_window].view(n, text_per_window)
    if bos in ("prepend", "per_window"):
        body = torch.cat([torch.full((n, 1), bos_id, dtype=torch.long), body], dim=1)
    return body


def _logits(output: Any) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if hasattr(output, "logits"):
        return output.logits
    return output[0]


def _tokenizer_name(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    size = getattr(tokenizer, "vocab_size", None)
    return f"{name} (vocab {size})" if size is not None else str(name)


def perplexity(
    model: torch.nn.Module,
    tokenizer: Any,
    text: str,
    *,
    context: int = 512,
    windows: int | None = 20,
    bos: str = "prepend",
    bos_token_id: int | str | None = None,
    batch_size: int = 4,
    progress: bool = True,
    dataset: str = "text",
) -> PerplexityResult:
    """Perplexity of a causal LM on ``text`` over non-overlapping windows.

    Args:
        model: a causal LM called as ``model(input_ids=ids)`` returning logits ``[B, T, V]``
            (a tensor, a tuple, or an object with ``.logits``). It is run in eval mode under
            ``torch.inference_mode`` on its own device; its training flag is restored.
        tokenizer: a Hugging Face-style tokenizer; the text is tokenised once, without special
            tokens.
        text: the evaluation text (e.g. :func:`big2small.evaluate.data.wiki_text`).
        context: window length L in tokens (see the module docstring for what a window holds
            under each ``bos`` mode).
        windows: use the first ``windows`` full windows; ``None`` uses all of them.
        bos: where the start token goes: ``"prepend"``, ``"per_window"``, ``"once"`` or
            ``"none"`` (module docstring).
        bos_token_id: the start token: ``None`` (default) takes the model's own, from
            :func:`start_token` with ``model.config``; a token id; or ``"none"``.
        batch_size: windows per forward pass (memory: ``batch_size * (L+1) * V`` fp32 logits).
        progress: show progress with an ETA on stderr (big2small.progress: a bar, or plain lines when piped).
        dataset: a label for the text, stored in the protocol.

    Returns:
        :class:`PerplexityResult` with ppl (unitless), mean_nll (nats/token), tokens_scored.
    """
    if bos not in BOS_MODES:
        raise Big2SmallError(f"bos must be one of {BOS_MODES}, got {bos!r}")
    bos_id, bos_source = (None, "not used") if bos == "none" else start_token(
        tokenizer, getattr(model, "config", None), bos_token_id)
    if bos_id is None:
        bos = "none"
    ids = _tokenize(tokenizer, text)
    inputs = window_token_ids(ids, context=context, windows=windows, bos=bos, bos_id=bos_id)
    n_windows, positions = inputs.shape
    device = next(model.parameters()).device

    window_sums = []
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), progress_bar("perplexity", n_windows, enabled=progress, unit="windows") as advance:
            for start in range(0, n_windows, batch_size):
                batch = inputs[start : start + batch_size].to(device)
                logits = _logits(model(input_ids=batch))[:, :-1].float()
                targets = batch[:, 1:]
                nll = F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none"
                )
                window_sums.append(nll.view(targets.shape).double().sum(dim=1).cpu())
                advance(batch.shape[0])
    finally:
        model.train(was_training)

    per_window = torch.cat(window_sums)
    tokens_scored = n_windows * (positions - 1)
    mean_nll = float(per_window.sum()) / tokens_scored
    protocol = {
        "metric": "perplexity",
        "dataset": dataset,
        "text_chars": len(text),
        "text_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()[:16],
        "text_tokens": int(ids.numel()),
        "tokenizer": _tokenizer_name(tokenizer),
        "add_special_tokens": False,
        "context": context,
        "stride": _text_per_window(context, bos),
        "positions_per_window": positions,
        "text_tokens_per_window": _text_per_window(context, bos),
        "windows": "all" if windows is None else windows,
        "windows_used": n_windows,
        "partial_window": "dropped",
        "bos": bos,
        "bos_token_id": bos_id,
        "bos_token": _token_text(tokenizer, bos_id),
        "bos_source": bos_source,
        "loss": "mean token NLL over every predicted position, fp32 log-softmax",
        "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    return PerplexityResult(
        ppl=math.exp(mean_nll) if mean_nll < _MAX_EXP_ARG else math.inf,  # a badly broken model: report inf
        mean_nll=mean_nll,
        tokens_scored=tokens_scored,
        protocol=protocol,
        window_nll=tuple((per_window / (positions - 1)).tolist()),
    )
