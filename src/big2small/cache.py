"""The on-disk cache folder shared by everything that caches (dequantised GGUF models, trained zoo
networks, parsed data sets)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$BIG2SMALL_CACHE`` if set, else ``~/.cache/big2small``; created if needed."""
    root = os.environ.get("BIG2SMALL_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "big2small"
    path.mkdir(parents=True, exist_ok=True)
    return path
