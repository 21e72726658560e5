"""Tests for big2small.evaluate.data: the offline real-data loaders."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from big2small.errors import Big2SmallError
from big2small.evaluate import data

FASHION_INSTALLED = (data.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file()


def test_cache_dir_respects_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    assert (tmp_path / "c").is_dir()


def test_wiki_text_is_cleaned_and_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("BIG2SMALL_CACHE", str(tmp_path))
    data.wiki_text.cache_clear()
    try:
        text = data.wiki_text()
        cached = list(tmp_path.glob("wiki_text-*.txt"))
        assert len(cached) == 1
        assert cached[0].read_text(encoding="utf-8") == text
    finally:
        data.wiki_text.cache_clear()
    assert text.startswith("'''Anarchism''' is a political philosophy")
    # Redirect pages are dropped, and wiki markup such as [[links]] and {{templates}} is gone.
    assert "#REDIRECT" not in text and "REDIRECT " not in text
    assert "[[" not in text and "{{" not in text
    assert len(text.split()) > 400_000


def test_lee_background_docs_counts():
    assert len(data.lee_background_docs()) == 300
    docs = data.lee_background_docs(5)
    assert len(docs) == 5 and all(isinstance(d, str) and len(d) > 100 for d in docs)
    with pytest.raises(Big2SmallError):
        data.lee_background_docs(301)


def test_lee50_matrix_is_symmetric_ratings():
    docs, sims = data.lee50()
    assert len(docs) == 50
    assert sims.shape == (50, 50)
    assert torch.equal(sims, sims.T)
    assert torch.all(sims.diagonal() == 1)
    assert sims.min() >= 0 and sims.max() <= 1
    # The file stores the upper triangle only; mirroring must not leave zeros below it.
    assert sims[1, 0] == pytest.approx(0.3)


def test_lee50_returns_copies():
    docs, sims = data.lee50()
    docs.clear()
    sims.zero_()
    docs2, sims2 = data.lee50()
    assert len(docs2) == 50 and sims2[0, 0] == 1


def test_photo_crops_shape_and_range():
    x = data.photo_crops(n=6, size=32, seed=0)
    assert x.shape == (6, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= -1 and x.max() <= 1
    assert x.std() > 0.1  # real image content, not a constant


def test_photo_crops_deterministic_given_seed():
    a = data.photo_crops(n=4, size=24, seed=3)
    b = data.photo_crops(n=4, size=24, seed=3)
    c = data.photo_crops(n=4, size=24, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_photo_crops_protocol_names_photos():
    proto = data.photo_crops_protocol(n=4, size=24, seed=3)
    assert proto["photos"][:2] == ["sklearn.china", "sklearn.flower"]
    assert proto["seed"] == 3 and proto["n"] == 4 and proto["size"] == 24


def test_digits_shapes():
    x, y = data.digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1
    assert set(y.tolist()) == set(range(10))


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def fake_fashion(tmp_path, monkeypatch):
    images = np.arange(3 * 28 * 28, dtype=np.uint64).reshape(3, 28, 28) % 256
    labels = np.array([7, 0, 9])
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    monkeypatch.setenv("BIG2SMALL_FASHION_MNIST_DIR", str(tmp_path))
    data._fashion_mnist.cache_clear()
    yield images, labels
    data._fashion_mnist.cache_clear()


def test_fashion_mnist_parses_idx(fake_fashion):
    images, labels = fake_fashion
    x, y = data.fashion_mnist("test")
    assert x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(images.astype(np.uint8)))
    assert y.tolist() == [7, 0, 9]


def test_fashion_mnist_missing_names_apt_command(fake_fashion):
    with pytest.raises(Big2SmallError, match="apt-get install -y dataset-fashion-mnist"):
        data.fashion_mnist("train")


def test_fashion_mnist_rejects_bad_split():
    with pytest.raises(Big2SmallError):
        data.fashion_mnist("validation")


@pytest.mark.skipif(not FASHION_INSTALLED, reason="apt-get install -y dataset-fashion-mnist")
def test_fashion_mnist_real_test_split():
    x, y = data.fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
