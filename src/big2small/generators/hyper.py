"""Hyper-compression, improved (`hyper`): one integer index per short vector of weights.

Weights are paired along each row of the matrix view (vectors of `dim` weights, 2 by default; an
odd row is padded with a 0 that is encoded, paid for and dropped). Each group of `group_size`
weights along a row shares one fp16 scale; the normalised vector is replaced by the index of its
nearest codeword in a codebook of 2**bits points, so a weight costs bits/dim plus 16/group_size.

Codebooks (docs/hyper-compression.md#codebooks; the faithful reproduction of the reference code is `hyper_ref`):
- "winding": the paper's hyperfunction, an irrational winding on [-1, 1]^dim (the plastic number
  for pairs); groups scaled by their absolute maximum. 0 stored bits.
- "lattice": the reference code's grid, centred; absmax scaling. 0 stored bits.
- "shaped" (default): a family of seven fixed codebooks, fitted offline and data-free (Lloyd from
  the Gaussian-warped winding) to rms-normalised groups of Gaussian-like weights with lighter or
  heavier tails; groups are scaled by their RMS, and each tensor takes the member whose kurtosis is
  nearest to that of its normalised weights (8 stored bits: the member's number). The common
  settings ship with the package (codebook.py), so one search table serves many tensors.
- "gaussian": one fixed codebook fitted to a plain unit Gaussian (for comparison).
- "fitted": the Gaussian member refined by Lloyd steps on this tensor's own normalised vectors,
  stored in fp16 (2**bits * dim * 16 bits per tensor); slower.

Scales: each group tries its scale times each factor of `scale_grid` and keeps the one with the
least squared error; with rms scaling, a group whose largest weight lies beyond the codebook's edge
also tries the scale that reaches it, so a lone outlier is not clipped.
Optional rings (winding and lattice): points outside the unit square are companded into it, as in
the reference code, with ring radii from the tensor's largest radius R (stored in fp16).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from big2small import bitpack
from big2small.errors import Big2SmallError
from big2small.generators import codebook as cb
from big2small.generators import rotation
from big2small.generators.base import (
    HEADER_BITS,
    ArrayForm,
    Encoded,
    byte_arrays,
    register,
    stored_array,
)
from big2small.generators.straight_through import straight_through
from big2small.generators.grouping import element_counts, grouped, grouping, nominal_group_len, per_element
from big2small.layout import MatrixLayout
from big2small.specs import as_list

CODEBOOKS = ("shaped", "gaussian", "fitted", "winding", "lattice")
# Scale per codebook when scale="auto": uniform codebooks cover [-1, 1], Gaussian ones N(0, 1).
AUTO_SCALE = {"shaped": "rms", "gaussian": "rms", "fitted": "rms", "winding": "absmax", "lattice": "absmax"}
RING_KAPPA = 2.5  # with rings, groups are scaled by kappa * RMS so most points fall inside the square
BUDGET_GROUP_SIZES = (32, 64, 128, 256, 0)
OUTLIER_WIDENING = (1.0, 1.15, 1.3, 1.5)
MAX_BITS = 16


@dataclass
class HyperConfig(rotation.RotatableConfig):
    """bits: index width (one index per `dim` weights, so bits/dim bits per weight plus scales).
    group_size: weights per fp16 scale along a row (0 = one per row). codebook: shaped, gaussian,
    fitted, winding or lattice. rings: companding rings for points outside the square (winding, lattice).
    scale: auto, absmax or rms. scale_grid: factors tried on each group's scale. lloyd_iters and
    sample_size: the per-tensor fit of the "fitted" codebook (vectors subsampled with the seed).
    rotate: none | input | both (generators.rotation)."""

    method = "hyper"
    allocatable = True
    bits: int = 8
    dim: int = 2
    group_size: int = 128
    codebook: str = "shaped"
    rings: int = 0
    scale: str = "auto"
    scale_grid: list[float] = field(default_factory=lambda: [1.0, 0.9, 1.1, 1.2])
    lloyd_iters: int = 10
    sample_size: int = 1 << 16

    def __post_init__(self) -> None:
        self.scale_grid = as_list(self.scale_grid, float)

    @classmethod
    def options_for_bits(cls, bits: float, options: dict[str, Any]) -> dict[str, Any]:
        """`bits` per weight is an index of bits * dim bits per vector of `dim` weights (4 bits per
        weight on pairs: 8-bit indices), plus 16 bits per group for its scale."""
        dim = options.get("dim", cls.dim)
        if not isinstance(dim, int) or not float(bits * dim).is_integer():
            raise Big2SmallError(f"hyper: --bits {bits:g} per weight is no whole index width on vectors of {dim} "
                                 "weights (bits x dim must be a whole number)")
        return {"bits": int(bits * dim)}

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.dim <= 4:
            raise Big2SmallError(f"hyper: dim must be in 1..4, got {self.dim}")
        if not self.dim <= self.bits <= MAX_BITS:
            raise Big2SmallError(f"hyper: bits must be in {self.dim}..{MAX_BITS} (one index per {self.dim} weights), got {self.bits}")
        if self.codebook not in CODEBOOKS:
            raise Big2SmallError(f"hyper: codebook must be one of {', '.join(CODEBOOKS)}, got {self.codebook!r}")
        if self.codebook == "lattice" and (self.dim != 2 or self.bits % 2):
            raise Big2SmallError("hyper: the lattice codebook needs dim=2 and an even number of bits")
        if self.group_size < 0:
            raise Big2SmallError(f"hyper: group_size must be >= 0 (0 = per row), got {self.group_size}")
        if self.group_size % self.dim:
            raise Big2SmallError(f"hyper: group_size must be a multiple of dim={self.dim}, got {self.group_size}")
        if self.scale not in ("auto", "absmax", "rms"):
            raise Big2SmallError(f"hyper: scale must be auto, absmax or rms, got {self.scale!r}")
        if (not isinstance(self.scale_grid, list) or not self.scale_grid
                or any(isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 4 for f in self.scale_grid)):
            raise Big2SmallError(f"hyper: scale_grid factors must be in (0, 4], got {self.scale_grid}")
        if self.rings:
            if self.codebook not in ("winding", "lattice") or self.dim != 2:
                raise Big2SmallError("hyper: rings work with the winding or lattice codebook on pairs only")
            if self.rings < 0 or (1 << self.bits) % (self.rings + 1):
                raise Big2SmallError(f"hyper: rings + 1 must divide 2**bits, got rings={self.rings}")
            inner_bits = self.bits - int(math.log2(self.rings + 1))
            if self.codebook == "lattice" and inner_bits % 2:
                raise Big2SmallError("hyper: with the lattice codebook, 2**bits / (rings + 1) must be a power of 4")

    @property
    def scale_kind(self) -> str:
        return ("rms" if self.rings else AUTO_SCALE[self.codebook]) if self.scale == "auto" else self.scale

    @property
    def inner_bits(self) -> int:
        """Bits of the codebook proper; the remaining index bits number the ring."""
        return self.bits - int(math.log2(self.rings + 1))


def base_codebook(cfg: HyperConfig, group_len: int, shape: int = 1) -> torch.Tensor:
    """The codebook a tensor starts from, [2**inner_bits, dim]: a function of the config and, for
    "shaped" and "fitted", of the group length and the tail-family member number."""
    if cfg.codebook == "winding":
        return cb.winding(cfg.inner_bits, cfg.dim)
    if cfg.codebook == "lattice":
        return cb.lattice(cfg.inner_bits)
    if cfg.codebook == "gaussian":
        return cb.gaussian_codebook(cfg.bits, cfg.dim)
    return cb.shaped_codebook(cfg.bits, cfg.dim, cb.TAIL_POWERS[shape], group_len)


def padded_layout(layout: MatrixLayout, dim: int) -> MatrixLayout:
    """The matrix view with its columns rounded up to a multiple of `dim` (whole vectors)."""
    return MatrixLayout((layout.rows, math.ceil(layout.cols / dim) * dim))


@register
class HyperGenerator(rotation.RotatingGenerator):
    config_type = HyperConfig

    def encode_matrix(self, matrix: torch.Tensor, layout: MatrixLayout, *, seed: int) -> Encoded:
        cfg: HyperConfig = self.config
        padded = _pad_cols(matrix, cfg.dim)
        playout = MatrixLayout(tuple(padded.shape))
        gp = grouping(playout, cfg.group_size)
        group_len = nominal_group_len(playout, cfg.group_size)
        scale = _group_scale(grouped(padded, gp), element_counts(gp, playout), cfg)
        tensors: dict[str, torch.Tensor] = {}
        bits: dict[str, int] = {}
        shape = 1  # the Gaussian member
        if cfg.codebook == "shaped":
            shape = _tail_member(padded, per_element(_fp16_scale(scale).float(), gp, playout), cfg.dim, group_len)
            tensors["shape"] = torch.tensor([shape], dtype=torch.uint8)
            bits["shape"] = 8
        codebook = base_codebook(cfg, group_len, shape).to(matrix.device)
        if cfg.codebook == "fitted":
            codebook = _fit(padded, per_element(scale, gp, playout), codebook, cfg, seed)
            tensors["codebook"] = codebook.to(torch.float16)
            bits["codebook"] = codebook.numel() * 16
            codebook = tensors["codebook"].float()
        best_codes, best_scale, radius = _search_scales(padded, gp, scale, codebook, cfg)
        tensors["codes"] = bitpack.pack(best_codes, cfg.bits)
        tensors["scales"] = best_scale
        bits.update({"codes": best_codes.numel() * cfg.bits, "scales": 16 * gp.n_groups, "header": HEADER_BITS})
        if radius is not None:
            tensors["radius"] = radius.reshape(1)
            bits["radius"] = 16
        return Encoded(cfg.method, cfg, layout, matrix.dtype, tensors, bits)

    def decode_matrix(self, enc: Encoded) -> torch.Tensor:
        cfg: HyperConfig = enc.config
        layout = enc.layout
        playout = padded_layout(layout, cfg.dim)
        cols = playout.cols
        n_vectors = playout.numel // cfg.dim
        gp = grouping(playout, cfg.group_size)
        codes = enc.tensors.get("indices")  # present when the codes were unpacked once (on-the-fly mode)
        if codes is None and cfg.bits == 8:
            codes = enc.tensors["codes"]  # 8-bit codes are their own bytes: no unpacking
        elif codes is None:
            codes = bitpack.unpack(enc.tensors["codes"], cfg.bits, n_vectors)
        codebook = codebook_of(enc).to(codes.device, torch.float32)
        radius = float(enc.tensors["radius"]) if "radius" in enc.tensors else None
        values = _lookup(codes, codebook, cfg, radius).reshape(layout.rows, cols)
        scales = enc.tensors["scales"].float()
        if gp.rows_per_group_row == 1 and cols % gp.group_len == 0:
            # The common case: groups tile each row exactly, so the scales broadcast, in place.
            values.view(layout.rows, -1, gp.group_len).mul_(scales.view(layout.rows, -1, 1))
        else:
            values = values * per_element(scales, gp, playout)
        return values[:, : layout.cols]

    trainable = "scales"

    def fake_quantize(self, matrix: torch.Tensor, enc: Encoded, scales: torch.Tensor) -> torch.Tensor:
        padded, codes, codebook, s = _codes_for_scales(matrix, enc, scales)
        vectors = (padded / torch.where(s == 0, torch.ones_like(s), s)).reshape(-1, enc.config.dim)
        if not enc.config.rings:
            # Beyond the codebook's reach a coordinate is clipped: like a uniform code clamped to
            # its range (LSQ), it passes no gradient (identity there would push its scale the
            # wrong way: the decoded value grows with the scale, the identity says it shrinks).
            vectors = torch.where(vectors.detach().abs() <= codebook.abs().amax(0), vectors, vectors.detach())
        values = straight_through(vectors, _lookup(codes, codebook, enc.config, _radius(enc)))
        return (values.reshape(padded.shape) * s)[:, : enc.layout.cols]

    def requantize(self, matrix: torch.Tensor, enc: Encoded, scales: torch.Tensor) -> Encoded:
        scales = scales.to(torch.float16)
        codes = _codes_for_scales(matrix, enc, scales.float())[1]
        return replace(enc, tensors={**enc.tensors, "codes": bitpack.pack(codes, enc.config.bits), "scales": scales},
                       bits=dict(enc.bits), meta=dict(enc.meta))

    def resident_tensors(self, enc: Encoded, *, unpack: bool = False) -> dict[str, torch.Tensor]:
        """Stored tensors plus the fp32 codebook (a few KB, saves rebuilding it per call); with
        `unpack`, the codes as int32 indices (32 bits per vector in memory, ready for the gather)."""
        cfg: HyperConfig = enc.config
        out = dict(enc.tensors)
        out["codebook"] = codebook_of(enc)
        if unpack:
            n_vectors = padded_layout(enc.layout, cfg.dim).numel // cfg.dim
            codes = bitpack.unpack(enc.tensors["codes"], cfg.bits, n_vectors)
            out["indices"] = codes.to(torch.int32)
            del out["codes"]
        return out

    @classmethod
    def bits_for(cls, config: HyperConfig, layout: MatrixLayout) -> int:
        padded = padded_layout(layout, config.dim)
        n_groups = grouping(padded, config.group_size).n_groups
        bits = padded.numel // config.dim * config.bits + 16 * n_groups + HEADER_BITS
        if config.codebook == "fitted":
            bits += (1 << config.bits) * config.dim * 16
        if config.codebook == "shaped":
            bits += 8
        if config.rings:
            bits += 16
        return bits + rotation.stored_bits(config)

    @classmethod
    def stored_form(cls, enc: Encoded) -> dict[str, ArrayForm]:
        cfg: HyperConfig = enc.config
        padded = padded_layout(enc.layout, cfg.dim)
        n_groups = grouping(padded, cfg.group_size).n_groups
        form = {**byte_arrays({"codes": bitpack.packed_nbytes(padded.numel // cfg.dim, cfg.bits)}),
                "scales": (torch.float16, (n_groups,))}
        if cfg.codebook == "shaped":
            form["shape"] = (torch.uint8, (1,))
            member = int(stored_array(enc, "shape", torch.uint8, (1,))[0])
            if member >= len(cb.TAIL_POWERS):
                raise Big2SmallError(f"hyper: stored codebook member {member}; there are {len(cb.TAIL_POWERS)}")
        if cfg.codebook == "fitted":
            form["codebook"] = (torch.float16, (1 << cfg.bits, cfg.dim))
        if cfg.rings:
            form["radius"] = (torch.float16, (1,))
        return {**form, **rotation.stored_form(cfg)}

    @classmethod
    def for_budget(cls, bits_per_weight: float, layout: MatrixLayout, fixed: dict[str, Any]) -> HyperConfig:
        # As for uniform: a wider index beats finer groups at equal size, so take the widest index
        # that fits, then the finest group size that still fits.
        base = {k: v for k, v in fixed.items() if k not in ("bits", "group_size")}
        dim = base.get("dim", 2)
        bit_choices = [fixed["bits"]] if "bits" in fixed else range(min(MAX_BITS, 6 * dim), dim - 1, -1)
        group_choices = [fixed["group_size"]] if "group_size" in fixed else BUDGET_GROUP_SIZES
        budget = bits_per_weight * layout.numel
        for b in bit_choices:
            for g in group_choices:
                cfg = HyperConfig(bits=b, group_size=g, **base)
                try:
                    cfg.validate()
                except Big2SmallError:
                    continue
                if cls.bits_for(cfg, layout) <= budget:
                    return cfg
        raise Big2SmallError(f"hyper: no setting fits {bits_per_weight:.3f} bits per weight on a {list(layout.shape)} tensor")


def codebook_of(enc: Encoded) -> torch.Tensor:
    """The fp32 codebook an encoded tensor decodes with: stored ("fitted"), or rebuilt from the
    config (and the tail-family member for "shaped")."""
    if "codebook" in enc.tensors:
        return enc.tensors["codebook"].float()
    cfg: HyperConfig = enc.config
    group_len = nominal_group_len(padded_layout(enc.layout, cfg.dim), cfg.group_size)
    shape = int(enc.tensors["shape"][0]) if "shape" in enc.tensors else 1
    return base_codebook(cfg, group_len, shape)


def _radius(enc: Encoded) -> float | None:
    return float(enc.tensors["radius"]) if "radius" in enc.tensors else None


def _codes_for_scales(matrix: torch.Tensor, enc: Encoded, scales: torch.Tensor):
    """The codes the scales [n_groups] (fp16 values) choose for `matrix` under enc's codebook, as
    the encoder chooses them for its best scales: (the padded matrix, codes, the codebook, the
    scales per element)."""
    cfg: HyperConfig = enc.config
    padded = _pad_cols(matrix, cfg.dim)
    playout = MatrixLayout(tuple(padded.shape))
    s = per_element(scales, grouping(playout, cfg.group_size), playout)
    codebook = codebook_of(enc).to(matrix.device)
    with torch.no_grad():
        vectors = (padded / torch.where(s == 0, torch.ones_like(s), s)).reshape(-1, cfg.dim)
        radius = _radius(enc)
        codes = _ring_codes(vectors, codebook, cfg, radius) if cfg.rings else \
            cb.nearest(vectors, codebook, cache=cfg.codebook != "fitted")
    return padded, codes, codebook, s


def _pad_cols(matrix: torch.Tensor, dim: int) -> torch.Tensor:
    pad = (-matrix.shape[1]) % dim
    return torch.nn.functional.pad(matrix, (0, pad)) if pad else matrix


def _search_scales(padded: torch.Tensor, gp, scale: torch.Tensor, codebook: torch.Tensor,
                   cfg: HyperConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Codes and fp16 scales: each group keeps the candidate scale with the least squared error.

    Candidates are the group's scale times each factor of `scale_grid`, and, for rms-scaled
    codebooks, the factor that puts the group's largest weight on the codebook's edge, tried only
    on groups that need more than the grid offers (a lone outlier would otherwise be clipped).
    Returns (codes, scales, the ring radius R or None).
    """
    playout = MatrixLayout(tuple(padded.shape))
    candidates: list[tuple[torch.Tensor, torch.Tensor | None]] = [(torch.full_like(scale, f), None) for f in cfg.scale_grid]
    if cfg.scale_kind == "rms" and not cfg.rings:
        reach = float(codebook.abs().amax())
        fit = grouped(padded, gp).abs().amax(1) / (scale * reach).clamp_min(1e-30)
        need = fit > max(cfg.scale_grid)
        if need.any():
            # The codebook's edge is ragged (its extreme points rarely sit on the axes), so a few
            # widths are tried; the groups concerned are few, so this costs little.
            candidates += [(fit.clamp(min=1) * widen, need) for widen in OUTLIER_WIDENING]
    radius = best_err = best_codes = best_scale = None
    for factors, only in candidates:
        s16 = _fp16_scale(scale * factors)
        s = per_element(s16.float(), gp, playout)
        vectors = (padded / torch.where(s == 0, torch.ones_like(s), s)).reshape(-1, cfg.dim)
        if cfg.rings:
            if radius is None:  # one R for the tensor, from the first candidate
                radius = torch.tensor(max(1.0, float(vectors.norm(dim=1).max())), dtype=torch.float16)
            codes = _ring_codes(vectors, codebook, cfg, float(radius))
        elif only is None:
            # A fitted codebook is used once, so keeping its search table would only churn the cache.
            codes = cb.nearest(vectors, codebook, cache=cfg.codebook != "fitted")
        else:
            chosen = per_element(only.float(), gp, playout).reshape(-1, cfg.dim)[:, 0] > 0
            codes = best_codes.clone()
            codes[chosen] = cb.nearest(vectors[chosen], codebook, cache=cfg.codebook != "fitted")
        decoded = _lookup(codes, codebook, cfg, None if radius is None else float(radius)).reshape(padded.shape) * s
        err = grouped((decoded - padded) ** 2, gp).sum(1)
        if best_err is None:
            best_err, best_codes, best_scale = err, codes, s16
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, s16, best_scale)
        take = per_element(better.float(), gp, playout).reshape(-1, cfg.dim)[:, 0] > 0
        best_codes = torch.where(take, codes, best_codes)
    return best_codes, best_scale, radius


def _fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    s16 = scale.to(torch.float16)
    if not torch.isfinite(s16).all():
        raise Big2SmallError("hyper: weights too large for fp16 group scales")
    return s16


def _group_scale(groups: torch.Tensor, counts: torch.Tensor, cfg: HyperConfig) -> torch.Tensor:
    """Per-group scale in fp32 (rounded to fp16 by the caller); 0 for an all-zero group."""
    if cfg.scale_kind == "absmax":
        return groups.abs().amax(1)
    rms = ((groups * groups).sum(1) / counts.clamp_min(1)).sqrt()
    return rms * RING_KAPPA if cfg.rings else rms


def _tail_member(padded: torch.Tensor, scale: torch.Tensor, dim: int, group_len: int) -> int:
    """The tail-family member whose kurtosis is nearest to that of the rms-normalised weights (a
    direct choice: only the chosen member's codebook is ever built)."""
    live = scale != 0
    x = padded[live] / scale[live]
    if x.numel() == 0:
        return 1
    kurtosis = float((x**4).mean() / (x**2).mean().clamp_min(1e-30) ** 2)
    distances = [abs(cb.shaped_kurtosis(dim, p, cb.effective_group_len(group_len)) - kurtosis) for p in cb.TAIL_POWERS]
    return distances.index(min(distances))


def _fit(padded: torch.Tensor, scale: torch.Tensor, init: torch.Tensor, cfg: HyperConfig, seed: int) -> torch.Tensor:
    """Lloyd steps on a seeded subsample of this tensor's normalised vectors."""
    s = _fp16_scale(scale).float()
    vectors = (padded / torch.where(s == 0, torch.ones_like(s), s)).reshape(-1, cfg.dim)
    vectors = vectors[(s.reshape(-1, cfg.dim)[:, 0] != 0)]
    if vectors.shape[0] > cfg.sample_size:
        gen = torch.Generator().manual_seed(seed)
        pick = torch.randperm(vectors.shape[0], generator=gen)[: cfg.sample_size].to(vectors.device)
        vectors = vectors[pick]
    if vectors.shape[0] == 0:
        return init
    return cb.lloyd(vectors, init, cfg.lloyd_iters)


def _ring_radii(cfg: HyperConfig, radius: float, device) -> torch.Tensor:
    """r_0 = 1 (the square) and r_i = 1 + i (R - 1) / C for the C rings."""
    return 1 + torch.arange(cfg.rings + 1, device=device, dtype=torch.float32) * ((radius - 1) / cfg.rings)


def _ring_codes(vectors: torch.Tensor, codebook: torch.Tensor, cfg: HyperConfig, radius: float) -> torch.Tensor:
    """Points inside the square keep ring 0; others go to the smallest ring that holds them and are
    companded by 1/r_i into the unit disk before the search (docs/hyper-compression.md#rings)."""
    radii = _ring_radii(cfg, radius, vectors.device)
    norm = vectors.norm(dim=1)
    outside = vectors.abs().amax(1) > 1
    ring = torch.searchsorted(radii[1:].contiguous(), norm.contiguous()).clamp(max=cfg.rings - 1) + 1
    ring = torch.where(outside, ring, torch.zeros_like(ring))
    codes = cb.nearest(vectors / radii[ring].unsqueeze(1), codebook)
    return codes + ring * codebook.shape[0]


def _lookup(codes: torch.Tensor, codebook: torch.Tensor, cfg: HyperConfig, radius: float | None) -> torch.Tensor:
    """Normalised vectors [n, dim] from indices: a gather, and with rings one multiply."""
    if not cfg.rings and cfg.dim == 2:
        # One 8-byte gather per pair: the codebook's rows viewed as float64 words (bit-exact).
        words = codebook.contiguous().view(torch.float64).reshape(-1)
        index = codes if codes.dtype in (torch.int32, torch.int64) else codes.to(torch.int32)
        return torch.index_select(words, 0, index.reshape(-1)).view(torch.float32).reshape(-1, 2)
    codes = codes.to(torch.int64)
    if not cfg.rings:
        return codebook[codes]
    inner = codebook.shape[0]
    ring = torch.div(codes, inner, rounding_mode="floor")
    return codebook[codes - ring * inner] * _ring_radii(cfg, radius or 1.0, codes.device)[ring].unsqueeze(1)
