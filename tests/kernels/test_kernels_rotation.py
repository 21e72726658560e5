"""The compiled rotation of input and output rows against generators.rotation's own."""

import pytest
import torch

from big2small.generators import rotation
from big2small.generators.uniform import UniformConfig
from big2small.kernels.rotation import rotate_rows
from big2small.layout import MatrixLayout


@pytest.mark.parametrize("n", [1, 2, 9, 64, 96, 576, 1536])
@pytest.mark.parametrize("which", [0, 1])
def test_rows_rotate_as_the_codec_rotates(n, which):
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(n))
    for inverse in (False, True):
        expected = rotation._apply(x, 11, which, inverse=inverse).double()
        got = rotate_rows(x, 11, which, inverse=inverse)
        assert got.dtype == torch.float32 and got.shape == x.shape
        assert torch.allclose(got.double(), expected, atol=1e-5), (got - expected).abs().max()
    assert torch.allclose(rotate_rows(rotate_rows(x, 11, which, inverse=False), 11, which, inverse=True), x, atol=1e-5)


@pytest.mark.parametrize("mode", ["none", "input", "both"])
@pytest.mark.parametrize("shape", [(48, 96), (40, 576), (24, 1031 * 2)])  # 1031: odd part too large, left as it is
def test_a_product_with_the_coded_matrix_of_rotated_inputs_is_the_layers_product(mode, shape):
    """W x = Q_rows^T (W_coded (Q_cols x)): a layer can multiply in the coded domain."""
    config = UniformConfig(rotate=mode)
    layout = MatrixLayout(shape)
    gen = torch.Generator().manual_seed(1)
    w, x = torch.randn(shape, generator=gen), torch.randn(5, shape[1], generator=gen)
    coded = rotation.rotate(w, config, layout, 7)
    on_rows, on_cols = rotation.rotated_dims(config, layout)
    y = (rotate_rows(x, 7, 0, inverse=False) if on_cols else x) @ coded.T
    y = rotate_rows(y, 7, 1, inverse=True) if on_rows else y
    assert torch.allclose(y, x @ w.T, atol=1e-4)
