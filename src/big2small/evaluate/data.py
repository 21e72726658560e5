"""Loaders for the real data sets that install offline (see the shared ASSETS document).

Every loader is cached in-process (``functools.lru_cache``); the one whose parsing is slow
(the Wikipedia extract) is also cached on disk under :func:`cache_dir`. Loaders that return
mutable objects hand out copies, so a caller that edits its result cannot corrupt the cache.

Missing optional data raises :class:`big2small.errors.Big2SmallError` with the command that
installs it.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import importlib.util
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from big2small.cache import cache_dir
from big2small.errors import Big2SmallError

__all__ = [
    "FASHION_MNIST_APT",
    "FASHION_MNIST_DIR",
    "PHOTO_SCALE_RANGE",
    "cache_dir",
    "digits",
    "fashion_mnist",
    "fashion_mnist_normalised",
    "fashion_mnist_splits",
    "FashionSplits",
    "lee50",
    "lee_background_docs",
    "photo_crops",
    "photo_crops_protocol",
    "photo_sources",
    "wiki_text",
]

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
# Bump when the cleaning changes, so stale disk caches are not reused.
_WIKI_CLEANING_VERSION = 1

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_APT = "apt-get install -y dataset-fashion-mnist"

# Crop side as a fraction of the photo's shorter side: small enough to give varied content,
# large enough that a 224-pixel crop still shows a recognisable object.
PHOTO_SCALE_RANGE = (0.3, 1.0)

# Colour natural photographs only; the other skimage images are greyscale, synthetic,
# microscopy or astronomy, which an ImageNet classifier would treat as out-of-distribution.
_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def _gensim_test_file(name: str) -> Path:
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise Big2SmallError(
            f"gensim is not installed (needed for its bundled test data {name}); "
            "install it with: pip install gensim"
        )
    path = Path(spec.submodule_search_locations[0]) / "test" / "test_data" / name
    if not path.is_file():
        raise Big2SmallError(
            f"{path} is missing from the gensim install; reinstall it with: "
            "pip install --force-reinstall gensim"
        )
    return path


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    # Concurrent processes may race to fill the cache; os.replace keeps the file whole.
    os.replace(tmp, path)


def _clean_wiki(path: Path) -> str:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    articles = []
    with bz2.open(path, "rb") as handle:
        for _title, markup, _page_id in extract_pages(handle):
            if markup.lstrip().lower().startswith("#redirect"):
                continue
            articles.append(filter_wiki(markup).strip())
    return "\n\n".join(a for a in articles if a)


@functools.lru_cache(maxsize=1)
def wiki_text() -> str:
    """The cleaned Wikipedia extract shipped in the gensim wheel, as one string.

    Pages come from ``gensim/test/test_data/<WIKI_FILE>`` in file order. Each page is read with
    ``gensim.corpora.wikicorpus.extract_pages``, redirects (markup starting ``#REDIRECT``) are
    dropped, the rest is cleaned with ``filter_wiki`` and stripped, and the articles are joined
    with ``"\\n\\n"``. The result (106 articles, about 2.9 M characters) is cached on disk,
    keyed on the source file's size and modification time, since parsing takes seconds.
    """
    source = _gensim_test_file(WIKI_FILE)
    stat = source.stat()
    key = hashlib.sha256(
        f"{_WIKI_CLEANING_VERSION}:{stat.st_size}:{stat.st_mtime_ns}".encode()
    ).hexdigest()[:16]
    cached = cache_dir() / f"wiki_text-{key}.txt"
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    text = _clean_wiki(source)
    try:
        _atomic_write_text(cached, text)
    except OSError:
        pass  # a read-only cache only costs speed
    return text


@functools.lru_cache(maxsize=None)
def _lines(name: str) -> tuple[str, ...]:
    text = _gensim_test_file(name).read_text(encoding="latin-1")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def lee_background_docs(n: int = 300) -> list[str]:
    """The first ``n`` of the 300 Lee background news articles (gensim ``lee_background.cor``).

    One article per line, decoded as latin-1.
    """
    docs = _lines("lee_background.cor")
    if not 0 < n <= len(docs):
        raise Big2SmallError(f"lee_background_docs: n must be in 1..{len(docs)}, got {n}")
    return list(docs[:n])


@functools.lru_cache(maxsize=1)
def _lee50() -> tuple[tuple[str, ...], Tensor]:
    docs = _lines("lee.cor")
    # similarities0-1.txt is a tab-separated 50x50 matrix of mean human ratings in [0, 1];
    # only the upper triangle (and a unit diagonal) is filled, the lower triangle is zeros.
    sims = np.loadtxt(_gensim_test_file("similarities0-1.txt"), dtype=np.float64)
    if len(docs) != 50 or sims.shape != (50, 50):
        raise Big2SmallError(
            f"unexpected Lee-50 files: {len(docs)} documents and a {sims.shape} matrix"
        )
    upper = np.triu(sims, 1)
    full = upper + upper.T + np.eye(50)
    return docs, torch.from_numpy(full)


def lee50() -> tuple[list[str], Tensor]:
    """The 50 Lee documents and their 50x50 human similarity matrix.

    Returns ``(docs, sims)``: ``docs`` from gensim's ``lee.cor`` (one document per line, latin-1)
    and ``sims`` a symmetric float64 tensor of mean human similarity ratings in [0, 1] with a unit
    diagonal. The file stores only the upper triangle; it is mirrored here.
    """
    docs, sims = _lee50()
    return list(docs), sims.clone()


def _skimage_photos() -> list[tuple[str, np.ndarray]]:
    try:
        import skimage.data as skdata
    except ImportError:
        return []
    return [(f"skimage.data.{name}", getattr(skdata, name)()) for name in _SKIMAGE_PHOTOS]


def _sklearn_photos() -> list[tuple[str, np.ndarray]]:
    from sklearn.datasets import load_sample_images

    try:
        bunch = load_sample_images()
    except ImportError as exc:  # sklearn needs pillow to decode its JPEGs
        raise Big2SmallError(
            f"cannot load sklearn's sample photos ({exc}); install pillow: pip install pillow"
        ) from exc
    return [
        (f"sklearn.{Path(f).stem}", img)
        for f, img in zip(bunch.filenames, bunch.images, strict=True)
    ]


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[tuple[str, ...], tuple[Tensor, ...]]:
    items = _sklearn_photos() + _skimage_photos()
    names = tuple(name for name, _ in items)
    # uint8 HWC -> float CHW in [-1, 1], the range EfficientNet-Lite expects.
    tensors = tuple(
        torch.from_numpy(np.array(img[..., :3], dtype=np.uint8)).permute(2, 0, 1).float() / 127.5
        - 1.0
        for _, img in items
    )
    return names, tensors


def photo_sources() -> tuple[str, ...]:
    """Names of the bundled photos :func:`photo_crops` samples from, in sampling order.

    Always ``sklearn.china`` and ``sklearn.flower``; plus ``skimage.data.astronaut``,
    ``chelsea``, ``coffee`` and ``rocket`` when scikit-image is installed.
    """
    return _photos()[0]


@functools.lru_cache(maxsize=8)
def _photo_crops(n: int, size: int, seed: int) -> Tensor:
    import torch.nn.functional as F

    _, photos = _photos()
    gen = torch.Generator().manual_seed(seed)
    # All random draws happen up front, so the crops depend only on (n, size, seed, photos).
    which = torch.randint(len(photos), (n,), generator=gen)
    lo, hi = PHOTO_SCALE_RANGE
    scale = lo + (hi - lo) * torch.rand(n, generator=gen)
    pos = torch.rand(n, 2, generator=gen)
    out = torch.empty(n, 3, size, size)
    # One crop per iteration: photos differ in size, and antialiased resizing has no batched
    # per-crop-box form. n is small (hundreds), so this is not a hot loop.
    for i in range(n):
        img = photos[int(which[i])]
        h, w = img.shape[1:]
        side = max(1, int(round(float(scale[i]) * min(h, w))))
        top = int(float(pos[i, 0]) * (h - side))
        left = int(float(pos[i, 1]) * (w - side))
        crop = img[None, :, top : top + side, left : left + side]
        out[i] = F.interpolate(
            crop, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )[0]
    return out.clamp_(-1.0, 1.0)


def photo_crops(n: int = 256, size: int = 224, seed: int = 0) -> Tensor:
    """Seeded random square crops of bundled natural photos, for label-free CNN agreement tests.

    Each crop picks a photo uniformly from :func:`photo_sources`, a side of ``s`` times the photo's
    shorter side with ``s`` uniform in :data:`PHOTO_SCALE_RANGE`, and a uniform position; it is
    resized to ``size`` x ``size`` pixels (bilinear, antialiased). Deterministic given ``seed``
    (a ``torch.Generator``) and the installed photos.

    Returns a float32 tensor ``[n, 3, size, size]`` with values in [-1, 1] (pixel / 127.5 - 1).
    Record :func:`photo_crops_protocol` with any figure measured on it.
    """
    if n < 1 or size < 1:
        raise Big2SmallError(f"photo_crops: n and size must be positive, got n={n}, size={size}")
    return _photo_crops(n, size, seed).clone()


def photo_crops_protocol(n: int = 256, size: int = 224, seed: int = 0) -> dict:
    """The JSON-serialisable description of ``photo_crops(n, size, seed)``."""
    return {
        "dataset": "photo_crops",
        "photos": list(photo_sources()),
        "n": n,
        "size": size,
        "seed": seed,
        "scale_range": list(PHOTO_SCALE_RANGE),
        "resize": "bilinear, antialias",
        "range": [-1.0, 1.0],
    }


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    # IDX: two zero bytes, a type code (0x08 = uint8), the number of dims, then big-endian
    # uint32 sizes.
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise Big2SmallError(f"{path} is not a uint8 IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@functools.lru_cache(maxsize=2)
def _fashion_mnist(split: str) -> tuple[Tensor, Tensor]:
    root = Path(os.environ.get("BIG2SMALL_FASHION_MNIST_DIR", FASHION_MNIST_DIR))
    prefix = {"train": "train", "test": "t10k"}[split]
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    for path in (images_path, labels_path):
        if not path.is_file():
            raise Big2SmallError(
                f"Fashion-MNIST not found ({path} is missing); install it with: "
                f"{FASHION_MNIST_APT}"
            )
    images = torch.from_numpy(_read_idx(images_path).copy())
    labels = torch.from_numpy(_read_idx(labels_path).astype(np.int64))
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise Big2SmallError(f"corrupt Fashion-MNIST {split} files in {root}")
    return images, labels


def fashion_mnist(split: str = "train") -> tuple[Tensor, Tensor]:
    """Fashion-MNIST from Debian's ``dataset-fashion-mnist`` (in ``/usr/share/datasets``).

    ``split`` is ``"train"`` (60,000 images) or ``"test"`` (10,000). Returns ``(images, labels)``:
    uint8 ``[N, 28, 28]`` pixel intensities 0-255 and int64 ``[N]`` class ids 0-9. Set
    ``BIG2SMALL_FASHION_MNIST_DIR`` to read the ``*-ubyte.gz`` files from elsewhere.
    """
    if split not in ("train", "test"):
        raise Big2SmallError(f"fashion_mnist: split must be 'train' or 'test', got {split!r}")
    images, labels = _fashion_mnist(split)
    return images.clone(), labels.clone()


# Fashion-MNIST training-set pixel mean and standard deviation (intensities in [0, 1]).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


def fashion_mnist_normalised(split: str = "train") -> tuple[Tensor, Tensor]:
    """Fashion-MNIST as networks take it: float32 ``[N, 1, 28, 28]`` images scaled to [0, 1] and
    standardised with the training set's mean and std; int64 ``[N]`` labels."""
    images, labels = fashion_mnist(split)
    return ((images.float() / 255.0 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD).unsqueeze(1), labels


@dataclass
class FashionSplits:
    """Normalised [N, 1, 28, 28] images and labels: train, validation (held out of train), test."""

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]


def fashion_mnist_splits(val_size: int = 5000, limit: int | None = None) -> FashionSplits:
    """Fashion-MNIST for training: the last `val_size` training images held out for validation,
    the 10,000 test images for the reported accuracy only. `limit` keeps the first training
    images only (quick runs)."""
    x, y = fashion_mnist_normalised("train")
    train_x, train_y, val_x, val_y = x[:-val_size], y[:-val_size], x[-val_size:], y[-val_size:]
    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]
    return FashionSplits((train_x, train_y), (val_x, val_y), fashion_mnist_normalised("test"))


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(bunch.images).float().div_(16.0).unsqueeze(1)
    return images, torch.from_numpy(bunch.target).long()


def digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's 1,797 8x8 handwritten digits, for fast tests on real data.

    Returns ``(images, labels)``: float32 ``[1797, 1, 8, 8]`` intensities scaled from 0-16 to
    [0, 1], and int64 ``[1797]`` class ids 0-9.
    """
    images, labels = _digits()
    return images.clone(), labels.clone()
