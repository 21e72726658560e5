"""The data-free least-squares repair of folded transformer MLPs."""

import torch
from torch import nn

from big2small.folding import FoldConfig, fold
from big2small.folding.lsq_repair import mlp_hidden, refit_output, synthetic_inputs

from tiny_models import tiny_bert, tiny_llama


def test_refit_recovers_an_exact_linear_map():
    torch.manual_seed(0)
    hidden = torch.randn(500, 6)
    layer = nn.Linear(6, 3)
    true_w, true_b = torch.randn(3, 6), torch.randn(3)
    refit_output(layer, hidden, hidden @ true_w.T + true_b)
    torch.testing.assert_close(layer.weight, true_w, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(layer.bias, true_b, atol=1e-2, rtol=1e-2)


def test_synthetic_inputs_follow_the_norm_scale_and_shift():
    norm = nn.LayerNorm(4)
    norm.weight.data = torch.tensor([1.0, 2.0, 0.5, 3.0])
    norm.bias.data = torch.tensor([0.0, 1.0, -1.0, 0.0])
    x = synthetic_inputs(norm, 20000, seed=0)
    torch.testing.assert_close(x.std(0), norm.weight.data, atol=0.05, rtol=0.05)
    torch.testing.assert_close(x.mean(0), norm.bias.data, atol=0.05, rtol=0.05)


def _mlp_error(original, folded, prefix_original, prefix_folded, x):
    def out(model, prefix):
        modules = dict(model.named_modules())
        if prefix + ".mlp" in modules:
            mlp = modules[prefix + ".mlp"]
            return mlp.down_proj(mlp_hidden(mlp, x))
        return modules[prefix + ".output.dense"](mlp_hidden(modules[prefix + ".intermediate"], x))

    return (out(original, prefix_original) - out(folded, prefix_folded)).pow(2).mean()


def _near_duplicate_units(model, producers):
    """Make hidden unit 2i+1 a noisy copy of unit 2i (redundancy that folding can exploit)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for weight in producers(model):
            weight[1::2] = weight[0::2] + 0.3 * weight[0::2].std() * torch.randn(weight[0::2].shape, generator=g)
    return model


def test_lsq_lowers_the_folded_mlp_error_on_fresh_inputs():
    llama = _near_duplicate_units(tiny_llama(), lambda m: [p for l in m.model.layers for p in (l.mlp.gate_proj.weight, l.mlp.up_proj.weight)])
    bert = _near_duplicate_units(tiny_bert(), lambda m: [l.intermediate.dense.weight for l in m.encoder.layer])
    for model, prefix, norm in ((llama, "model.layers.0", "model.layers.0.post_attention_layernorm"),
                                (bert, "encoder.layer.0", "encoder.layer.0.attention.output.LayerNorm")):
        config = dict(sparsity=None, ratio=0.5, fold_attention=False, n_init=2)
        naive = fold(model, FoldConfig(**config), progress=False).model
        lsq = fold(model, FoldConfig(**config, norm_repair="lsq"), progress=False).model
        x = synthetic_inputs(dict(model.named_modules())[norm], 2000, seed=123)  # not the fitting seed
        assert _mlp_error(model, lsq, prefix, prefix, x) < 0.97 * _mlp_error(model, naive, prefix, prefix, x)
