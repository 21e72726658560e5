"""Text forms of methods for the CLI and recipes: "uniform:bits=4,group_size=64", "keep"."""

from __future__ import annotations

from typing import Any

from big2small.errors import Big2SmallError

# What a size target counts (Recipe.target_over, --bpw-over): every stored bit over the model's
# parameters, or the compressed tensors' bits over their own weights.
TARGET_OVER = ("model", "compressed")


def parse_value(text: str) -> Any:
    low = text.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def as_list(value: Any, cast: type) -> Any:
    """A list option given on the command line: one value, or values joined by '/' ("1.0/0.9").
    Lists pass through; anything else is left for validate() to refuse."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [cast(value)]
    if isinstance(value, str) and value:
        try:
            return [cast(v) for v in value.split("/")]
        except ValueError:
            return value
    if isinstance(value, tuple):
        return list(value)
    return value


def parse_method_spec(text: str) -> tuple[str, dict[str, Any]]:
    """"uniform:bits=4,group_size=64" -> ("uniform", {"bits": 4, "group_size": 64})."""
    method, _, rest = text.strip().partition(":")
    options: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise Big2SmallError(f"bad option {item!r} in {text!r}: expected key=value")
        options[key.strip().replace("-", "_")] = parse_value(value.strip())
    if not method:
        raise Big2SmallError(f"bad method spec {text!r}")
    return method, options


_BYTE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def byte_size(size: str | int) -> int:
    """A size such as 2GB, 500MB, 1.5GiB or 1000000 (bytes; an int is bytes) as a number of bytes
    (GB = 10^9, GiB = 2^30, as Hugging Face reads them). ValueError for anything else."""
    if isinstance(size, int) and not isinstance(size, bool):
        value, unit = float(size), ""
    else:
        text = str(size).strip().upper()
        number = text.rstrip("BIKMGT")
        unit = text[len(number):]
        try:
            value = float(number)
        except ValueError:
            value = float("nan")
    if unit not in _BYTE_UNITS or not value > 0 or not value * _BYTE_UNITS[unit] >= 1:
        raise ValueError(f"bad size {size!r}: expected a positive number with B, KB, MB, GB, KiB, MiB or GiB")
    return int(value * _BYTE_UNITS[unit])
