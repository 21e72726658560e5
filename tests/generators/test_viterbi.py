"""The trellis search is optimal: it finds the code sequence a brute-force search over every
sequence finds, on both of its implementations (the compiled CPU kernel and the torch recursion)."""

import itertools

import pytest
import torch

from big2small.generators import viterbi


def _sequential_states(codes, k, state_bits):
    state = torch.zeros(codes.shape[0], dtype=torch.int64)
    out = []
    for t in range(codes.shape[1]):
        state = ((state << k) | codes[:, t].long()) & ((1 << state_bits) - 1)
        out.append(state)
    return torch.stack(out, 1)


def _cost(x, values, codes, k, state_bits):
    return ((x - values[viterbi.decode_states(codes, k, state_bits)]) ** 2).sum(-1)


@pytest.mark.parametrize("k,state_bits,length", [(1, 3, 8), (2, 4, 5), (2, 5, 4), (3, 5, 3), (1, 4, 9)])
@pytest.mark.parametrize("impl", ["search", "torch"])
def test_search_finds_the_brute_force_optimum(k, state_bits, length, impl):
    g = torch.Generator().manual_seed(k * 100 + state_bits * 10 + length)
    values = torch.randn(1 << state_bits, generator=g)
    x = torch.randn(7, length, generator=g)
    every = torch.tensor(list(itertools.product(range(1 << k), repeat=length)))
    brute = _cost(x.unsqueeze(1), values, every, k, state_bits).min(1).values
    if impl == "search":
        codes = viterbi.search(x, values, k)
    else:
        codes = viterbi._search_torch(x, values, k, state_bits)
    assert codes.dtype == torch.uint8 and codes.shape == x.shape and int(codes.max()) < 1 << k
    torch.testing.assert_close(_cost(x, values, codes, k, state_bits), brute, rtol=1e-5, atol=1e-6)


def test_both_implementations_agree_on_a_larger_problem():
    g = torch.Generator().manual_seed(0)
    values, x = torch.randn(1 << 8, generator=g), torch.randn(40, 300, generator=g)
    a, b = viterbi.search(x, values, 2), viterbi._search_torch(x, values, 2, 8)
    torch.testing.assert_close(_cost(x, values, a, 2, 8), _cost(x, values, b, 2, 8), rtol=1e-5, atol=1e-5)


def test_decode_states_is_the_shift_register():
    codes = torch.randint(0, 8, (5, 33), generator=torch.Generator().manual_seed(1))
    for k, state_bits in [(3, 8), (3, 10), (1, 3), (3, 4)]:
        c = codes & ((1 << k) - 1)
        assert torch.equal(viterbi.decode_states(c, k, state_bits), _sequential_states(c, k, state_bits))


def test_empty_input_and_bad_tables_are_handled():
    assert viterbi.search(torch.zeros(0, 5), torch.randn(16), 2).shape == (0, 5)
    with pytest.raises(ValueError, match="2\\^L"):
        viterbi.search(torch.zeros(2, 5), torch.randn(15), 2)
    with pytest.raises(ValueError, match="k < L"):
        viterbi.search(torch.zeros(2, 5), torch.randn(16), 4)
