"""Synthetic token sequences without data: a causal LM samples its own text, text sampled by one
model is re-tokenised for another, or plain random tokens (docs/distillation.md#synthetic-inputs).

The sampling schedule follows LLM-QAT (Liu et al., 2023): the first token after the start token is
drawn from the model's own distribution (so that sequences start differently), the next
`greedy_tokens` are its top-1 choices (a fluent start), the rest are sampled at `temperature`
(diverse continuations). Every draw comes from one seeded table of uniforms, one per sequence and
position, so a seed gives the same ids whatever the batch size.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from big2small.errors import Big2SmallError
from big2small.progress import progress_bar


def can_generate(model: nn.Module) -> bool:
    """Whether `model` is a causal LM whose forward returns next-token logits (an HF *ForCausalLM
    or *LMHeadModel, the names models.tasks maps to causal-lm)."""
    config = getattr(model, "config", None)
    return hasattr(model, "get_output_embeddings") and model.get_output_embeddings() is not None and \
        not getattr(config, "is_encoder_decoder", False) and type(model).__name__.endswith(("ForCausalLM", "LMHeadModel"))


@torch.no_grad()
def sample_text(model: nn.Module, *, samples: int, seq_len: int, start_token_id: int, seed: int = 0,
                greedy_tokens: int = 4, temperature: float = 1.0, batch_size: int = 32,
                progress: bool = True) -> torch.Tensor:
    """int64 [samples, seq_len] token ids the causal LM `model` writes itself, each row starting
    with `start_token_id` (module docstring: the schedule). Uses the KV cache: one forward of one
    token per position and batch."""
    if not can_generate(model):
        raise Big2SmallError(f"{type(model).__name__} cannot generate text (not a causal LM): "
                             "use text sampled by another model (source smollm2) or random tokens (source random)")
    # One uniform draw per (sequence, position), made up front: a sequence does not depend on the batch size.
    uniforms = torch.rand((samples, seq_len), generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()
    device = next(model.parameters()).device
    # transformers 5 renamed the KV cache argument and output from past_key_values to cache
    cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    was_training = model.training
    model.eval()
    rows = []
    try:
        with progress_bar("sampling synthetic text", samples * (seq_len - 1), enabled=progress, unit="tokens") as advance:
            for start in range(0, samples, batch_size):
                n = min(batch_size, samples - start)
                ids = torch.full((n, 1), start_token_id, dtype=torch.long, device=device)
                past, step_input = None, ids
                for position in range(1, seq_len):
                    out = model(input_ids=step_input, use_cache=True, **{cache_name: past} if past is not None else {})
                    past = getattr(out, cache_name)
                    logits = out.logits[:, -1].float().cpu()
                    greedy = 1 < position <= 1 + greedy_tokens
                    if greedy:
                        nxt = logits.argmax(-1)
                    else:  # inverse-CDF sampling with this row's own uniform draw
                        cdf = torch.softmax(logits / temperature, -1).cumsum(-1)
                        u = uniforms[start:start + n, position].unsqueeze(1) * cdf[:, -1:]
                        nxt = torch.searchsorted(cdf, u).squeeze(1).clamp_max(cdf.shape[1] - 1)
                    step_input = nxt.unsqueeze(1).to(device)
                    ids = torch.cat([ids, step_input], dim=1)
                    advance(n)
                rows.append(ids.cpu())
    finally:
        model.train(was_training)
    return torch.cat(rows)


def random_tokens(vocab_size: int, *, samples: int, seq_len: int, seed: int = 0,
                  special_ids: tuple[int, ...] = (), first_id: int | None = None,
                  last_id: int | None = None) -> torch.Tensor:
    """int64 [samples, seq_len]: uniform random ids from the vocabulary minus `special_ids`,
    framed by `first_id` / `last_id` when given (an encoder's [CLS] ... [SEP])."""
    allowed = torch.ones(vocab_size, dtype=torch.bool)
    allowed[[i for i in special_ids if 0 <= i < vocab_size]] = False
    pool = allowed.nonzero().squeeze(1)
    if len(pool) == 0:
        raise Big2SmallError("random tokens: the vocabulary holds only special tokens")
    generator = torch.Generator().manual_seed(seed)
    ids = pool[torch.randint(len(pool), (samples, seq_len), generator=generator)]
    if first_id is not None:
        ids[:, 0] = first_id
    if last_id is not None:
        ids[:, -1] = last_id
    return ids


def retokenize(ids: torch.Tensor, source_tokenizer: Any, target_tokenizer: Any, seq_len: int) -> dict[str, torch.Tensor]:
    """Token ids of one tokenizer as text, then as the other's ids (special tokens added,
    truncated and padded to `seq_len`): {"input_ids", "attention_mask"}, int64 [N, seq_len]."""
    texts = source_tokenizer.batch_decode(ids.tolist(), skip_special_tokens=True)
    enc = target_tokenizer(texts, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt")
    return {"input_ids": enc["input_ids"].long(), "attention_mask": enc["attention_mask"].long()}
