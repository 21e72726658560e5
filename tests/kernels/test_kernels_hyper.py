"""The hyper codec's compiled kernels against its own decode."""

import pytest

from big2small.generators import GeneratorConfig, generator_for
from big2small.kernels import kernel_for
from kernel_checks import check_kernels


@pytest.mark.parametrize("options", [
    {"bits": 8},                                    # the default: 8-bit index per pair, shaped codebook
    {"bits": 6, "group_size": 64},
    {"bits": 12, "codebook": "fitted", "group_size": 32},
    {"bits": 9, "dim": 3, "group_size": 0, "codebook": "winding"},  # indices across bytes, odd vector size
    {"bits": 4, "dim": 1, "group_size": 256},        # groups span rows
    {"bits": 8, "codebook": "winding"},
    {"bits": 16, "dim": 4, "group_size": 64},
])
def test_codebooks_and_widths_match_the_codec(options):
    check_kernels({"method": "hyper", "scale_grid": [1.0], **options}, (17, 45))


def test_ring_codes_have_no_kernel():
    enc = generator_for(GeneratorConfig.from_dict({"method": "hyper", "bits": 8, "codebook": "winding", "rings": 1})).encode(
        __import__("torch").randn(8, 64))
    assert kernel_for(enc) is None


@pytest.mark.parametrize("by_table", [True, False])
@pytest.mark.parametrize("options, shape, batch", [
    ({"bits": 8}, (1, 45), 1),                                  # one row; columns not a multiple of the pair
    ({"bits": 8, "group_size": 6}, (70, 7), 3),                  # segments not a multiple of the units per pass
    ({"bits": 5, "dim": 3, "group_size": 0}, (65, 130), 2),      # rows past one block, odd vector size
    ({"bits": 4, "dim": 1, "group_size": 256}, (9, 100), 1),     # groups span rows
    ({"bits": 8}, (17, 45), 0),                                  # no input rows
])
def test_product_by_table_or_by_decode_equals_the_dense_product(monkeypatch, options, shape, batch, by_table):
    """Both ways the product can take (table lookups, or decode then a dense product) give x W^T."""
    from big2small.kernels import hyper

    monkeypatch.setattr(hyper, "by_table", lambda enc: by_table)
    check_kernels({"method": "hyper", "scale_grid": [1.0], **options}, shape, batch=batch)


def test_tables_are_used_where_they_pay():
    """The default 8-bit pairs use tables on a layer of a few hundred rows; 16-bit codebooks do not."""
    import torch
    from big2small.kernels import hyper

    def enc(bits, dim, rows):
        return generator_for(GeneratorConfig.from_dict({"method": "hyper", "bits": bits, "dim": dim, "scale_grid": [1.0]})).encode(
            torch.randn(rows, 64))

    assert hyper.by_table(enc(8, 2, 192)) and not hyper.by_table(enc(16, 4, 192))


def test_one_thread_runs_the_serial_build():
    """At one numba thread the kernels run their serial build (no parallel-region launch per call),
    at two the parallel one; check_kernels tests both against the codec."""
    import torch
    from big2small.kernels import hyper

    enc = generator_for(GeneratorConfig.from_dict({"method": "hyper", "bits": 8})).encode(torch.randn(130, 64))
    tensors = hyper.resident(enc)
    serial, parallel = (hyper.arrays(tensors, enc, threads=t) for t in (1, 2))
    assert (serial.product, serial.decode) == (hyper._product_serial, hyper._decode_serial)
    assert (parallel.product, parallel.decode) == (hyper._product_parallel, hyper._decode_parallel)
    assert serial.args[-1] == 1 and parallel.args[-1] == 2  # runs of blocks: one per thread
