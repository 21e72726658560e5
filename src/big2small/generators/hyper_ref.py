"""Hyper-Compression as its reference code does it (`hyper_ref`, docs/hyper-compression.md#reference-scheme).

A faithful reproduction of `Juntongkuki/Hyper-Compression` (`lib/param_compress_new_uint_i.py`:
`get_Try`, `find_inner_outer`, `test_ClassLoss`, `compress_decom_v3`, `decompress_v3`;
`lib/Compress_Params_Standard.py`: `multi_compress_decom_v3`, `save_new_param_compress`), vectorised
in torch. Per tensor:

1. Flatten the tensor in its stored (PyTorch) order and take consecutive pairs as 2-D points; an
   odd length is padded with the tensor mean. Tensors of fewer than 10 elements are stored raw fp32.
2. c = the mean of the points; the inner square has side L = `rect_l`, centred at c.
3. Codebook: c as code 0, then n = `num_inner` codewords in the square. "grid" (the released
   pipeline): point j = ((j L/m^2) mod L, (j L/m) mod L) + c - (L/2, L/2), m = ceil(sqrt n), with
   the reference's float64 arithmetic (`get_Try`), quirks included: where j L/m lands just below
   a multiple of L, the codeword sits on the top edge of the square instead of the bottom (14 of
   the 225 codewords for n = 225, none for n = 1600). "winding" (the paper's hyperfunction, kept in
   the reference as a comment): point j = c - (L/2, L/2) + L frac(j a) with a = (1/pi, 1/(pi + 1)) / 10,
   which is the reference's `b = 1/(pi + k)` for k = 0, 1 (`np.linspace(0, K - 1, K)`) with its
   step 1/R, R = 10. 1, 1/pi and 1/(pi + 1) are rationally independent (pi is transcendental).
4. A point inside the square (bounds included) stores the index of its nearest codeword.
5. Outside the square, in C rings: R = |farthest point - c|, D = (R - L/2)/C, r_i = L/2 + i D; a
   point takes the smallest ring i >= 1 with |p - c| <= r_i (ring C ends exactly at R); it is
   companded to B = c + f_i (p - c), f_i = (L/2)/r_i, and stores code(B*) + (n + 1) i, where B* is
   the nearest codeword of B. It decodes as c + (B* - c)/f_i.
6. For each n of `num_inner_list` in turn: if no point lies outside the square, C = 0; else try
   C = 1..`class_max`, keep the best MAE (ties to the larger C, as the reference's `<=`), and stop
   at the first C whose MAE <= `loss_threshold`. Move on to the next n only while the MAE is above
   `loss_max`. The MAE is that of the reference's search: over every coordinate of the padded
   points. With `set_loss_limit`, a tensor whose MAE over its real elements exceeds `loss_limit`
   is stored raw fp32.
7. Indices are bit-packed at uint_i = bit_length(largest index used) bits (1 if all are 0).

Stored tensors: "codes" (the packed indices), "centre" and "farthest" (2 x fp32 each), "side"
(uint8 [C, index into num_inner_list, padding flag, uint_i]) and "num_inner_list" (int64, like the
reference's uint64 file); a raw tensor stores "raw" (fp32, in stored order) alone. Every stored bit
is counted, plus the 128-bit header (docs/bit-accounting.md#the-bit-ledger).

Deviations from the reference, none of which changes a stored bit count:
- The bit stream is packed LSB-first (`big2small.bitpack`, docs/bit-accounting.md#bit-packing) rather than MSB-first
  with the reference's leading zero padding; the bits per index and the total are the same.
- uint_i travels in "side" (8 bits) instead of the reference's file name, and `num_inner_list` is
  stored with each tensor rather than once per model.
- The nearest codeword is found by the exact search of `codebook.nearest` (ties to the lowest
  index) instead of sklearn's KDTree; it runs in fp32 on coordinates relative to c (the codebook
  is built in float64), so a point within ~1e-9 of a Voronoi boundary may pick the other codeword.
- The centre is the float64 mean rounded to fp32 (numpy's float32 pairwise mean can differ in the
  last bit), distances are float64, and the encoder compands with the radii the decoder rebuilds
  (r_C = L/2 + C D rather than the encoder-side R of the reference, equal up to rounding), so
  the MAE used for every decision is that of the tensor actually decoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from big2small import bitpack
from big2small.errors import Big2SmallError
from big2small.specs import as_list
from big2small.generators.base import (
    HEADER_BITS,
    ArrayForm,
    Encoded,
    Generator,
    GeneratorConfig,
    byte_arrays,
    meta_int,
    register,
    stored_array,
)
from big2small.generators.codebook import index_bits, nearest
from big2small.layout import MatrixLayout

HYPERFUNCTIONS = ("grid", "winding")
MIN_NUMEL = 10  # smaller tensors stay raw fp32, as in the reference
RECT_L_RANGE = (1e-100, 1e100)  # the codebook's float64 arithmetic squares L: it must neither underflow nor overflow
WINDING_STEP = 10.0  # the reference's R: the winding advances by (1/pi, 1/(pi + 1)) / R per step
# Side data bits: centre 2 x fp32, farthest point 2 x fp32, "side" 4 x uint8.
CENTRE_BITS = 64
FARTHEST_BITS = 64
SIDE_BITS = 32
LIST_ENTRY_BITS = 64
# Pairs x codewords above which the nearest-codeword search builds (and keeps) its grid table: the
# table costs seconds to build once per codebook, and the centred codebook is shared by every
# tensor; below this, brute force is cheaper than building it.
GRID_MIN_WORK = 1 << 26


@dataclass
class HyperRefConfig(GeneratorConfig):
    """rect_l: side L of the inner square (one global value). num_inner_list: codeword counts n
    tried in turn. class_max: most rings C tried. loss_threshold: the C search stops at the first C
    whose MAE is at most this. loss_max: the next n is tried while the MAE is above this.
    set_loss_limit / loss_limit: store a tensor raw fp32 when its MAE exceeds loss_limit.
    hyperfunction: "grid" (the released lattice) or "winding" (the paper's irrational winding)."""

    method = "hyper_ref"
    rect_l: float = 0.1
    num_inner_list: list[int] = field(default_factory=lambda: [1600])
    class_max: int = 3
    loss_threshold: float = 0.001
    loss_max: float = 0.001
    set_loss_limit: bool = False
    loss_limit: float = 0.006
    hyperfunction: str = "grid"

    def __post_init__(self) -> None:
        self.num_inner_list = as_list(self.num_inner_list, int)

    def validate(self) -> None:
        def bad(msg: str) -> Big2SmallError:
            return Big2SmallError(f"hyper_ref: {msg}")

        if not isinstance(self.rect_l, (int, float)) or not RECT_L_RANGE[0] <= self.rect_l <= RECT_L_RANGE[1]:
            raise bad(f"rect_l must be a number in [{RECT_L_RANGE[0]:g}, {RECT_L_RANGE[1]:g}], got {self.rect_l!r}")
        if not isinstance(self.num_inner_list, list) or not 1 <= len(self.num_inner_list) <= 256:
            raise bad(f"num_inner_list must be a list of 1 to 256 counts, got {self.num_inner_list!r}")
        for n in self.num_inner_list:
            if not _is_int(n) or n < 1:
                raise bad(f"num_inner_list entries must be integers >= 1, got {n!r}")
        if not _is_int(self.class_max) or not 1 <= self.class_max <= 255:
            raise bad(f"class_max must be an integer in 1..255, got {self.class_max!r}")
        for name in ("loss_threshold", "loss_max", "loss_limit"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise bad(f"{name} must be a number >= 0, got {v!r}")
        if not isinstance(self.set_loss_limit, bool):
            raise bad(f"set_loss_limit must be true or false, got {self.set_loss_limit!r}")
        if self.hyperfunction not in HYPERFUNCTIONS:
            raise bad(f"hyperfunction must be one of {list(HYPERFUNCTIONS)}, got {self.hyperfunction!r}")
        width = index_bits((max(self.num_inner_list) + 1) * (self.class_max + 1))
        if width > bitpack.MAX_BITS:
            raise bad(
                f"(max num_inner + 1) * (class_max + 1) needs {width} bits per index; at most {bitpack.MAX_BITS} are supported"
            )


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@lru_cache(maxsize=32)
def _centred_codebook_cached(n: int, rect_l: float, hyperfunction: str) -> torch.Tensor:
    j = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    if hyperfunction == "grid":
        # get_Try(tan_alpha=m, step_size, n, node_ld=c - L/2, rect_l=L), operation for operation.
        m = math.ceil(math.sqrt(n))
        d_inner = rect_l / m
        l1 = math.sqrt(rect_l**2 + d_inner**2)
        sin_alpha = rect_l / l1
        step = (rect_l / sin_alpha) / m
        direction = (rect_l / m, rect_l)
        norm = math.sqrt(direction[0] * direction[0] + direction[1] * direction[1])
        cn = torch.tensor([direction[0] / norm * step, direction[1] / norm * step], dtype=torch.float64)
        offsets = torch.fmod(j * cn, rect_l)  # j * cn >= 0, so fmod is numpy's %
    else:
        cn = torch.tensor([1 / (math.pi + k) / WINDING_STEP for k in (0, 1)], dtype=torch.float64)
        offsets = rect_l * torch.fmod(j * cn, 1.0)
    # Relative to the centre c: code 0 is c itself, the others c - L/2 + offset.
    return torch.cat([torch.zeros(1, 2, dtype=torch.float64), offsets - rect_l / 2])


def centred_codebook(n: int, rect_l: float, hyperfunction: str, device: torch.device | str = "cpu") -> torch.Tensor:
    """The n + 1 codewords minus the centre c, float64 [n + 1, 2]: a function of (n, L, kind) alone."""
    return _centred_codebook_cached(int(n), float(rect_l), hyperfunction).to(device).clone()


def _radius(diff: torch.Tensor) -> torch.Tensor:
    """Euclidean length of each row of [k, 2] float64, computed the same way on both sides."""
    return torch.sqrt(diff[:, 0] * diff[:, 0] + diff[:, 1] * diff[:, 1])


def _ring_radii(centre: torch.Tensor, farthest: torch.Tensor, rect_l: float, classes: int) -> torch.Tensor:
    """r_i = L/2 + i (R - L/2)/C for i = 0..C (float64), R = |farthest - c| from the stored fp32 values."""
    far = float(_radius((farthest.double() - centre.double()).unsqueeze(0))[0])
    delta = (far - rect_l / 2) / classes
    i = torch.arange(classes + 1, dtype=torch.float64, device=centre.device)
    return rect_l / 2 + i * delta


def _prepare(flat: torch.Tensor, rect_l: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """find_inner_outer: (points [k, 2] fp32, padded with the mean; centre fp32 [2]; farthest point
    fp32 [2] (the first at the largest distance); inside-the-square mask [k], bounds included)."""
    padded = torch.cat([flat, flat.double().mean().float().reshape(1)]) if flat.numel() % 2 else flat
    points = padded.reshape(-1, 2)
    centre = points.double().mean(0).float()
    p64, c64 = points.double(), centre.double()
    farthest = points[_radius(p64 - c64).argmax()].clone()
    inner = ((p64 >= c64 - rect_l / 2) & (p64 <= c64 + rect_l / 2)).all(1)
    return points, centre, farthest, inner


class _Fit:
    """The search state of one tensor for one n: points, inner codes and per-C outer encodings."""

    def __init__(self, points: torch.Tensor, centre: torch.Tensor, farthest: torch.Tensor,
                 inner: torch.Tensor, rect_l: float, n: int, hyperfunction: str):
        self.rect_l = rect_l
        self.n = n
        self.centre = centre
        self.farthest = farthest
        self.inner = inner
        self.c64 = centre.double()
        self.p64 = points.double()
        self.codebook = centred_codebook(n, rect_l, hyperfunction, points.device)
        self.codebook32 = self.codebook.float()
        self.coords = 2 * points.shape[0]
        self.cache = points.shape[0] * (n + 1) >= GRID_MIN_WORK
        rel = points[inner].double() - self.c64
        self.inner_codes = nearest(rel.float(), self.codebook32, cache=self.cache)
        decoded = self.c64 + self.codebook[self.inner_codes]
        self.inner_abs = (decoded - self.p64[inner]).abs().sum().item()
        self.outer_idx = (~inner).nonzero().squeeze(1)
        self.has_outer = self.outer_idx.numel() > 0
        self._by_classes: dict[int, tuple[float, torch.Tensor, torch.Tensor]] = {}

    def classes(self, classes: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        """(MAE over the padded coordinates, outer codes, outer rings) with C = `classes` rings."""
        if classes not in self._by_classes:
            half = self.rect_l / 2
            p_out = self.p64[self.outer_idx]
            rel = p_out - self.c64
            radii = _ring_radii(self.centre, self.farthest, self.rect_l, classes)
            # The smallest i >= 1 with |p - c| <= r_i; ring C catches everything up to R.
            dist = _radius(rel)
            ring = 1 + (dist.unsqueeze(1) > radii[1:classes].unsqueeze(0)).sum(1)
            factor = (half / radii[ring]).unsqueeze(1)
            codes = nearest((rel * factor).float(), self.codebook32, cache=self.cache)
            decoded = self.c64 + self.codebook[codes] / factor
            outer_abs = (decoded - p_out).abs().sum().item()
            self._by_classes[classes] = ((self.inner_abs + outer_abs) / self.coords, codes, ring)
        return self._by_classes[classes]

    def search_classes(self, class_max: int, loss_threshold: float) -> tuple[int, float]:
        """compress_decom_v3's C search: (C, MAE)."""
        if not self.has_outer:
            return 0, self.inner_abs / self.coords
        best_mae, best_c = 100.0, 1
        for classes in range(1, class_max + 1):
            mae = self.classes(classes)[0]
            if mae <= best_mae:
                best_mae, best_c = mae, classes
            if mae <= loss_threshold:
                break
        return best_c, best_mae

    def indices(self, classes: int) -> torch.Tensor:
        idx = torch.empty(self.p64.shape[0], dtype=torch.int64, device=self.p64.device)
        idx[self.inner] = self.inner_codes
        if self.has_outer:
            _, codes, ring = self.classes(classes)
            idx[self.outer_idx] = codes + (self.n + 1) * ring
        return idx


def _decode_points(idx: torch.Tensor, centre: torch.Tensor, farthest: torch.Tensor, classes: int, n: int,
                   rect_l: float, hyperfunction: str) -> torch.Tensor:
    """decompress_v3: indices [k] -> decoded points [k, 2] in float64."""
    codebook = centred_codebook(n, rect_l, hyperfunction, idx.device)
    c64 = centre.double()
    if classes == 0:
        return c64 + codebook[idx]
    ring = torch.div(idx, n + 1, rounding_mode="floor")
    code = idx - ring * (n + 1)
    radii = _ring_radii(centre, farthest, rect_l, classes)
    factor = (rect_l / 2 / radii[ring]).unsqueeze(1)
    return c64 + codebook[code] / factor


@register
class HyperRefGenerator(Generator):
    config_type = HyperRefConfig

    def encode_matrix(self, matrix: torch.Tensor, layout: MatrixLayout, *, seed: int) -> Encoded:
        cfg: HyperRefConfig = self.config
        flat = layout.from_matrix(matrix).reshape(-1).float()  # the stored tensor's own order
        numel = flat.numel()
        if numel < MIN_NUMEL:
            return self._raw(flat, layout, cfg, mae=0.0)
        pad = numel % 2
        points, centre, farthest, inner = _prepare(flat, cfg.rect_l)
        for li, n in enumerate(cfg.num_inner_list):
            fit = _Fit(points, centre, farthest, inner, cfg.rect_l, n, cfg.hyperfunction)
            classes, mae = fit.search_classes(cfg.class_max, cfg.loss_threshold)
            if mae > cfg.loss_max and li != len(cfg.num_inner_list) - 1:
                continue
            break

        idx = fit.indices(classes)
        decoded = _decode_points(idx, centre, farthest, classes, fit.n, cfg.rect_l, cfg.hyperfunction)
        real_mae = (decoded.reshape(-1)[:numel] - flat.double()).abs().mean().item()
        if cfg.set_loss_limit and real_mae > cfg.loss_limit:
            return self._raw(flat, layout, cfg, mae=real_mae)

        width = max(1, int(idx.max()).bit_length())
        side = torch.tensor([classes, li, pad, width], dtype=torch.uint8, device=flat.device)
        tensors = {
            "codes": bitpack.pack(idx, width),
            "centre": centre,
            "farthest": farthest,
            "side": side,
            "num_inner_list": torch.tensor(cfg.num_inner_list, dtype=torch.int64, device=flat.device),
        }
        bits = {
            "codes": idx.numel() * width,
            "centre": CENTRE_BITS,
            "farthest": FARTHEST_BITS,
            "side": SIDE_BITS,
            "num_inner_list": LIST_ENTRY_BITS * len(cfg.num_inner_list),
            "header": HEADER_BITS,
        }
        meta = {"raw": 0, "classes": classes, "num_inner": fit.n, "uint_i": width, "mae": real_mae}
        return Encoded(cfg.method, cfg, layout, matrix.dtype, tensors, bits, meta)

    @staticmethod
    def _raw(flat: torch.Tensor, layout: MatrixLayout, cfg: HyperRefConfig, *, mae: float) -> Encoded:
        raw = flat.float().contiguous().clone()
        bits = {"raw": 32 * raw.numel(), "header": HEADER_BITS}
        meta = {"raw": 1, "mae": mae}
        return Encoded(cfg.method, cfg, layout, torch.float32, {"raw": raw}, bits, meta)

    def decode_matrix(self, enc: Encoded) -> torch.Tensor:
        cfg: HyperRefConfig = enc.config
        layout = enc.layout
        if "raw" in enc.tensors:
            flat = enc.tensors["raw"].float()
        else:
            classes, li, pad, width = (int(v) for v in enc.tensors["side"].tolist())
            n = int(enc.tensors["num_inner_list"][li])
            count = (layout.numel + 1) // 2
            if pad != layout.numel % 2:
                raise Big2SmallError("hyper_ref: the stored padding flag does not match the tensor shape")
            idx = bitpack.unpack(enc.tensors["codes"], width, count)
            if int(idx.max()) >= (n + 1) * (classes + 1):
                raise Big2SmallError(f"hyper_ref: a stored index is beyond the {(n + 1) * (classes + 1)} codewords")
            decoded = _decode_points(idx, enc.tensors["centre"], enc.tensors["farthest"], classes, n,
                                     cfg.rect_l, cfg.hyperfunction)
            flat = decoded.reshape(-1)[: layout.numel].float()
        return layout.to_matrix(flat.reshape(layout.shape))

    @classmethod
    def bits_bound(cls, config: HyperRefConfig, layout: MatrixLayout) -> tuple[int, bool]:
        return cls.bits_for(config, layout), False

    @classmethod
    def bits_for(cls, config: HyperRefConfig, layout: MatrixLayout) -> int:
        """An upper bound: the index width and the raw fallback depend on the data."""
        config.validate()
        raw = 32 * layout.numel + HEADER_BITS
        if layout.numel < MIN_NUMEL:
            return raw
        pairs = (layout.numel + 1) // 2
        width = index_bits((max(config.num_inner_list) + 1) * (config.class_max + 1))
        side = CENTRE_BITS + FARTHEST_BITS + SIDE_BITS + LIST_ENTRY_BITS * len(config.num_inner_list)
        bound = pairs * width + side + HEADER_BITS
        return max(bound, raw) if config.set_loss_limit else bound

    @classmethod
    def stored_bits(cls, enc: Encoded) -> int:
        """Exact, from the stored side data: the index width follows the data (bits_for is a bound)."""
        side = _stored_side(enc)
        if side is None:
            return 32 * enc.numel + HEADER_BITS
        width, list_len = side[3], len(enc.config.num_inner_list)
        return ((enc.numel + 1) // 2 * width + CENTRE_BITS + FARTHEST_BITS + SIDE_BITS
                + LIST_ENTRY_BITS * list_len + HEADER_BITS)

    @classmethod
    def stored_form(cls, enc: Encoded) -> dict[str, ArrayForm]:
        side = _stored_side(enc)
        if side is None:
            return {"raw": (torch.float32, (enc.numel,))}
        return {**byte_arrays({"codes": bitpack.packed_nbytes((enc.numel + 1) // 2, side[3]), "side": 4}),
                "centre": (torch.float32, (2,)), "farthest": (torch.float32, (2,)),
                "num_inner_list": (torch.int64, (len(enc.config.num_inner_list),))}


def _stored_side(enc: Encoded) -> tuple[int, int, int, int] | None:
    """(rings C, index into num_inner_list, padding flag, index width) of a stored coded record,
    None for one stored raw; refused unless they are what its config and shape allow."""
    cfg: HyperRefConfig = enc.config
    numel = enc.numel
    if meta_int(enc, "raw", 0, 1):
        if numel >= MIN_NUMEL and not cfg.set_loss_limit:
            raise Big2SmallError(f"hyper_ref: a {numel}-weight tensor is stored raw, which its config never does")
        return None
    if numel < MIN_NUMEL:
        raise Big2SmallError(f"hyper_ref: a tensor of fewer than {MIN_NUMEL} weights is stored raw, not coded")
    classes, li, pad, width = (int(v) for v in stored_array(enc, "side", torch.uint8, (4,)).tolist())
    stored_list = stored_array(enc, "num_inner_list", torch.int64, (len(cfg.num_inner_list),)).tolist()
    if stored_list != cfg.num_inner_list:
        raise Big2SmallError(f"hyper_ref: stored num_inner_list {stored_list} is not the config's {cfg.num_inner_list}")
    if li >= len(cfg.num_inner_list) or classes > cfg.class_max or pad != numel % 2:
        raise Big2SmallError(f"hyper_ref: stored side data {[classes, li, pad, width]} does not fit its config and shape")
    most = max(1, index_bits((cfg.num_inner_list[li] + 1) * (classes + 1)))
    if not 1 <= width <= most:
        raise Big2SmallError(f"hyper_ref: stored index width {width} is outside 1..{most}")
    return classes, li, pad, width
