import pytest
import torch

from big2small.distill.text import random_tokens, retokenize, sample_text
from big2small.errors import Big2SmallError
from helpers import peaked_llama
from tiny_models import tiny_bert


def test_sampling_is_reproducible_from_the_seed_and_follows_the_schedule():
    model = peaked_llama()
    first = sample_text(model, samples=6, seq_len=16, start_token_id=1, seed=5, greedy_tokens=3, progress=False)
    assert first.shape == (6, 16) and bool((first[:, 0] == 1).all())
    assert torch.equal(first, sample_text(model, samples=6, seq_len=16, start_token_id=1, seed=5, greedy_tokens=3,
                                          batch_size=4, progress=False))
    assert not torch.equal(first, sample_text(model, samples=6, seq_len=16, start_token_id=1, seed=6, greedy_tokens=3,
                                              progress=False))
    with torch.no_grad():
        top1 = model(first).logits.argmax(-1)  # top1[:, i] is the model's choice for position i + 1
    assert torch.equal(first[:, 2:5], top1[:, 1:4])  # positions 2-4: greedy after the sampled first token
    assert len({tuple(row) for row in first[:, 5:].tolist()}) == 6  # sampled continuations differ


def test_an_encoder_cannot_sample_and_says_what_to_use():
    with pytest.raises(Big2SmallError, match="source smollm2.*random"):
        sample_text(tiny_bert(), samples=2, seq_len=8, start_token_id=1, progress=False)


def test_random_tokens_avoid_special_ids_and_keep_the_frame():
    ids = random_tokens(10, samples=50, seq_len=12, seed=0, special_ids=(0, 1, 2), first_id=1, last_id=2)
    assert bool((ids[:, 0] == 1).all()) and bool((ids[:, -1] == 2).all())
    assert int(ids[:, 1:-1].min()) >= 3 and int(ids.max()) < 10
    assert torch.equal(ids, random_tokens(10, samples=50, seq_len=12, seed=0, special_ids=(0, 1, 2), first_id=1, last_id=2))


class _WordTokenizer:
    """Words <-> ids over a fixed vocabulary, with the calls retokenize makes."""

    vocab = ["[PAD]", "[CLS]", "[SEP]", "the", "cat", "sat"]

    def batch_decode(self, rows, skip_special_tokens=True):
        return [" ".join(self.vocab[i] for i in row if not (skip_special_tokens and self.vocab[i].startswith("["))) for row in rows]

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        rows = [[1] + [self.vocab.index(w) for w in t.split()][:max_length - 2] + [2] for t in texts]
        mask = [[1] * len(r) + [0] * (max_length - len(r)) for r in rows]
        return {"input_ids": torch.tensor([r + [0] * (max_length - len(r)) for r in rows]), "attention_mask": torch.tensor(mask)}


def test_retokenize_goes_through_text():
    tok = _WordTokenizer()
    out = retokenize(torch.tensor([[1, 3, 4, 5, 2]]), tok, tok, 8)
    assert out["input_ids"].tolist() == [[1, 3, 4, 5, 2, 0, 0, 0]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0, 0]]
