"""Codebooks for vector quantisation of short weight vectors, and the exact nearest-codeword search.

Hyper-compression stores one integer per short vector of weights (a pair by default): the index of
the nearest point of a codebook. This module builds the codebooks (the paper's irrational winding,
the reference code's lattice, Gaussian-shaped ones) and finds nearest codewords fast.

Nearest-codeword search is exact. Brute force costs about 4K flops per vector (K codewords); for
2-D codebooks `nearest` instead looks the point's cell up in a fine grid whose cells list every
codeword that can be nearest to any point of the cell (usually one), and computes distances only to
those. That is a direct computation in the sense of the issue (no KD-tree), and it is vectorised
torch on any device. Ties go to the lowest index in both paths.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import torch

# Chunks of the brute-force distance matrix stay near this many elements (fits in cache).
_BRUTE_CHUNK_ELEMENTS = 1 << 20
# Grid tables for at most this many codebooks are kept per process (fixed codebooks reuse them).
_GRID_CACHE_SIZE = 8


def generalized_golden_ratio(dim: int) -> float:
    """The unique positive root of x**(dim+1) = x + 1: the golden ratio for dim 1, the plastic
    number (1.3247...) for dim 2. Its inverse powers give a low-discrepancy irrational winding."""
    x = 2.0
    for _ in range(64):
        x -= (x ** (dim + 1) - x - 1) / ((dim + 1) * x**dim - 1)
    return x


def winding_phases(count: int, dim: int) -> torch.Tensor:
    """frac(0.5 + j * alpha) for j < count, alpha = (1/phi, ..., 1/phi**dim): [count, dim] in [0, 1).

    Since 1, 1/phi, ..., 1/phi**dim are rationally independent, the orbit is dense in the torus
    (Kronecker-Weyl); this choice of alpha also has low discrepancy. Computed in float64 so that
    j * alpha keeps its fractional digits for j up to 2**24.
    """
    phi = generalized_golden_ratio(dim)
    alpha = torch.tensor([phi ** -(k + 1) for k in range(dim)], dtype=torch.float64)
    j = torch.arange(count, dtype=torch.float64).unsqueeze(1)
    return torch.frac(0.5 + j * alpha)


def winding(bits: int, dim: int = 2) -> torch.Tensor:
    """The paper's hyperfunction: 2**bits points of an irrational winding on [-1, 1]**dim; code 0 is
    the origin. Costs no stored bits (a function of `bits` and `dim` alone)."""
    return (2 * winding_phases(1 << bits, dim) - 1).float()


def lattice(bits: int) -> torch.Tensor:
    """The reference code's grid, centred: a slightly sheared square lattice of 2**bits points on
    [-1, 1]**2 (bits even). Point j = ((j + 0.5) * 2/K - 1, ((j mod m) + 0.5) * 2/m - 1), m = sqrt(K)."""
    if bits % 2:
        raise ValueError("the lattice codebook needs an even number of bits")
    k, m = 1 << bits, 1 << (bits // 2)
    j = torch.arange(k, dtype=torch.float64)
    return torch.stack([(j + 0.5) * 2 / k - 1, ((j % m) + 0.5) * 2 / m - 1], 1).float()


def gaussian_winding(bits: int, dim: int = 2) -> torch.Tensor:
    """The winding warped coordinate-wise to a unit Gaussian: the start of every fitted codebook."""
    phases = winding_phases(1 << bits, dim).clamp(1e-4, 1 - 1e-4)
    return torch.special.ndtri(phases).float()


# Lloyd steps for the fixed codebooks; above FIXED_LLOYD_MAX_BITS the fit would take seconds per
# process, and the warped winding alone is already close to the fitted shape.
FIXED_LLOYD_ITERS = 20
FIXED_LLOYD_MAX_BITS = 10
# The tail family of the "shaped" codebooks: each coordinate of a unit Gaussian is warped to
# sign(z) |z|^p and rescaled to unit variance; p = 1 is the Gaussian, a larger p has heavier tails
# and a p below 1 lighter ones.
TAIL_POWERS = (0.9, 1.0, 1.1, 1.2, 1.35, 1.5, 1.7)


def _tail_warp(z: torch.Tensor, power: float) -> torch.Tensor:
    if power == 1.0:
        return z
    w = z.sign() * z.abs() ** power
    # Unit variance: E|z|^(2p) = 2^p Gamma(p + 1/2) / sqrt(pi) for a unit Gaussian.
    second_moment = 2**power * math.gamma(power + 0.5) / math.sqrt(math.pi)
    return w / math.sqrt(second_moment)


def _group_normalised_sample(count: int, dim: int, power: float, group_len: int) -> torch.Tensor:
    """`count` vectors of `dim` coordinates drawn as weights are encoded: tail-warped unit Gaussians
    in groups of `group_len`, each group divided by its own RMS. The division matters: it bounds a
    group's values by sqrt(group_len) and narrows the shape, and a codebook fitted to it wins about
    0.3 dB over one fitted to the plain Gaussian. Seeded, so the result is a pure function of the
    arguments."""
    gen = torch.Generator().manual_seed(0)
    per_group = max(1, group_len // dim)
    z = _tail_warp(torch.randn(math.ceil(count / per_group), per_group * dim, generator=gen), power)
    z = z / z.pow(2).mean(1, keepdim=True).sqrt()
    return z.reshape(-1, dim)[:count]


def effective_group_len(group_len: int) -> int:
    """The group length the fixed codebooks are fitted for: a power of two in [16, 1024] (longer
    groups normalise like 1024, and rounding keeps the number of distinct codebooks small)."""
    return 1 << min(10, max(4, round(math.log2(max(group_len, 1)))))


@lru_cache(maxsize=64)
def shaped_kurtosis(dim: int, power: float, group_len: int) -> float:
    """Kurtosis E[x^4] / E[x^2]^2 of the values a shaped codebook is fitted to."""
    x = _group_normalised_sample(1 << 16, dim, power, group_len)
    return float((x**4).mean() / (x**2).mean() ** 2)


# The common shaped codebooks ship with the package (fitted offline on more samples, by
# scripts/make_codebooks.py): encoding then starts at once, and the encoder and every decoder use
# bit-identical codebooks whatever their BLAS. Other settings are fitted on first use.
PACKAGED_CODEBOOKS = Path(__file__).with_name("shaped_codebooks.safetensors")
PACKAGED_BITS = (4, 6, 8, 10)
PACKAGED_GROUP_LENS = (64, 128)
PACKAGED_SAMPLES, PACKAGED_ITERS = 1 << 16, 30


def packaged_key(bits: int, dim: int, member: int, group_len: int) -> str:
    return f"bits{bits}_dim{dim}_member{member}_group{group_len}"


@lru_cache(maxsize=1)
def _packaged() -> dict[str, torch.Tensor]:
    if not PACKAGED_CODEBOOKS.is_file():
        return {}
    from safetensors.torch import load_file

    return load_file(PACKAGED_CODEBOOKS)


def fit_shaped_codebook(bits: int, dim: int, power: float, group_len: int, samples: int, iters: int) -> torch.Tensor:
    """Lloyd from the tail-warped winding on `samples` group-normalised vectors (see shaped_codebook)."""
    init = _tail_warp(gaussian_winding(bits, dim), power)
    if bits > FIXED_LLOYD_MAX_BITS:
        return init
    return lloyd(_group_normalised_sample(samples, dim, power, group_len), init, iters)


@lru_cache(maxsize=64)
def _shaped_codebook_cached(bits: int, dim: int, power: float, group_len: int) -> torch.Tensor:
    key = packaged_key(bits, dim, TAIL_POWERS.index(power), group_len) if power in TAIL_POWERS else None
    if key in _packaged():
        return _packaged()[key]
    return fit_shaped_codebook(bits, dim, power, group_len, min(1 << 16, 64 << bits), FIXED_LLOYD_ITERS)


def shaped_codebook(bits: int, dim: int = 2, power: float = 1.0, group_len: int = 128) -> torch.Tensor:
    """A fixed codebook of 2**bits points fitted (Lloyd) to rms-normalised groups of `group_len`
    tail-warped Gaussian weights (power 1 = Gaussian), data-free. Real weight groups are close to
    one member of this family, so it serves every tensor and needs no storage beyond the member's
    number. Deterministic; computed once per process."""
    return _shaped_codebook_cached(bits, dim, power, effective_group_len(group_len)).clone()


def gaussian_codebook(bits: int, dim: int = 2) -> torch.Tensor:
    """A fixed codebook fitted to a plain unit Gaussian (no group normalisation)."""
    return _gaussian_codebook_cached(bits, dim).clone()


@lru_cache(maxsize=32)
def _gaussian_codebook_cached(bits: int, dim: int) -> torch.Tensor:
    init = gaussian_winding(bits, dim)
    if bits > FIXED_LLOYD_MAX_BITS:
        return init
    # Scrambled Sobol points through the inverse normal CDF: a deterministic, very even sample.
    sobol = torch.quasirandom.SobolEngine(dim, scramble=True, seed=0).draw(min(1 << 16, 32 << bits), dtype=torch.float64)
    return lloyd(torch.special.ndtri(sobol.clamp(1e-6, 1 - 1e-6)).float(), init, FIXED_LLOYD_ITERS)


def lloyd(samples: torch.Tensor, init: torch.Tensor, iters: int) -> torch.Tensor:
    """`iters` Lloyd (k-means) steps from `init` [K, d] on `samples` [n, d]. A codeword whose cell is
    empty keeps its position, so the codebook keeps K distinct-purpose entries."""
    codebook = init.to(samples.device, torch.float32).clone()
    k = codebook.shape[0]
    for _ in range(iters):
        idx = nearest(samples, codebook, cache=False)
        counts = torch.bincount(idx, minlength=k).unsqueeze(1).float()
        sums = torch.zeros_like(codebook).index_add_(0, idx, samples)
        codebook = torch.where(counts > 0, sums / counts.clamp_min(1), codebook)
    return codebook


def nearest(points: torch.Tensor, codebook: torch.Tensor, *, cache: bool = True) -> torch.Tensor:
    """Index (int64) of the nearest codeword (squared Euclidean) of each point: [n, d] -> [n].

    Exact; ties go to the lowest index. 2-D codebooks with enough points to amortise it use a grid
    table (kept across calls for the same codebook when `cache` is true); others use brute force.
    """
    points = points.float()
    codebook = codebook.to(points.device, torch.float32)
    n, k = points.shape[0], codebook.shape[0]
    if codebook.shape[1] == 2 and k >= 16:
        grid = _grid_for(codebook) if cache else None
        if grid is not None or n * k > 4 * _GridIndex.build_cost(k):
            return (grid or _GridIndex(codebook)).nearest(points)
    return _brute_force(points, codebook)


def _brute_force(points: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    norms = (codebook * codebook).sum(1)
    chunk = max(1, _BRUTE_CHUNK_ELEMENTS // codebook.shape[0])
    out = torch.empty(points.shape[0], dtype=torch.int64, device=points.device)
    for start in range(0, points.shape[0], chunk):
        x = points[start : start + chunk]
        # ||x||^2 is the same for every codeword, so it does not change the argmin.
        d = torch.addmm(norms.unsqueeze(0), x, codebook.t(), alpha=-2)
        out[start : start + chunk] = d.argmin(1)
    return out


_GRID_CACHE: OrderedDict[tuple, _GridIndex] = OrderedDict()


def _grid_for(codebook: torch.Tensor) -> _GridIndex:
    key = (str(codebook.device), codebook.shape[0], codebook.cpu().numpy().tobytes())
    grid = _GRID_CACHE.get(key)
    if grid is None:
        grid = _GRID_CACHE[key] = _GridIndex(codebook)
        while len(_GRID_CACHE) > _GRID_CACHE_SIZE:
            _GRID_CACHE.popitem(last=False)
    else:
        _GRID_CACHE.move_to_end(key)
    return grid


class _GridIndex:
    """A fine T x T grid over the codebook's bounding box (plus a margin). Each cell lists, in
    ascending order, every codeword that can be nearest to some point of the cell: those within
    d_min + 2h of the cell centre (d_min: the centre's nearest distance, h: half the cell diagonal),
    which by the triangle inequality includes the true nearest codeword of every point in the cell.

    Lists are built coarse-to-fine (a fine cell only checks its coarse cell's list), so building
    costs about (T/16)^2 K + T^2 * 64 distance evaluations rather than T^2 K. Cells whose list would
    be long (far outside the codebook, where many codewords are almost equidistant) are flagged, and
    their points, like points outside the box, fall back to brute force: rare for data that the
    codebook was made for.
    """

    MAX_COARSE_LIST = 64
    MAX_FINE_LIST = 8

    @staticmethod
    def fine_cells(k: int) -> int:
        """Fine cells per axis: about 32 x 32 per codeword on average, so that most cells hold one
        candidate, capped so that the table stays within tens of MB."""
        return min(1024, max(256, 1 << math.ceil(math.log2(32 * math.sqrt(k)))))

    @staticmethod
    def build_cost(k: int) -> int:
        fine = _GridIndex.fine_cells(k)
        per = _GridIndex.fine_per_coarse(k)
        return (fine // per) ** 2 * k + fine**2 * _GridIndex.MAX_COARSE_LIST

    @staticmethod
    def fine_per_coarse(k: int) -> int:
        """Coarse cells must stay small enough that their lists fit MAX_COARSE_LIST near the
        codebook's dense centre: 16 fine cells per axis up to 1024 codewords, fewer beyond."""
        return 16 if k <= 1024 else 8 if k <= 4096 else 4

    def __init__(self, codebook: torch.Tensor):
        device = codebook.device
        k = codebook.shape[0]
        self.codebook = codebook
        span = (codebook.amax(0) - codebook.amin(0)).clamp_min(1e-6)
        self.lo = codebook.amin(0) - 0.05 * span
        self.hi = codebook.amax(0) + 0.05 * span
        fine = self.fine_cells(k)
        per = self.fine_per_coarse(k)
        coarse = fine // per
        every = torch.arange(k, device=device).expand(coarse * coarse, -1)
        coarse_lists, coarse_ok = self._lists(coarse, every, self.MAX_COARSE_LIST)
        fy, fx = torch.meshgrid(torch.arange(fine, device=device), torch.arange(fine, device=device), indexing="ij")
        parent = ((fy // per) * coarse + fx // per).reshape(-1)
        # Near the centre of a Gaussian-shaped codebook, codewords are about 3x denser than on
        # average, so large codebooks need longer lists there.
        fine_cap = self.MAX_FINE_LIST * (4 if k > 1024 else 1)
        self.lists, ok = self._lists(fine, coarse_lists[parent], fine_cap)
        self.ok = ok & coarse_ok[parent]
        self.size = fine
        self.step = (self.hi - self.lo) / fine
        single = self.ok & (self.lists == self.lists[:, :1]).all(1)
        # Border cells also collect every point clamped into them from outside the box, so they
        # always take the careful path. -1 marks a cell that needs it.
        border = torch.zeros(fine, fine, dtype=torch.bool, device=device)
        border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
        self.direct = torch.where(single & ~border.reshape(-1), self.lists[:, 0], -1).to(torch.int32)
        self.inv_step = 1 / self.step

    def _lists(self, cells: int, pool: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Candidate lists [cells**2, <= cap] (ascending, padded with the last entry) for a grid of
        `cells` per axis, chosen from `pool` [cells**2, P] (ascending codeword indices), and whether
        each cell's list fitted in `cap`."""
        device = self.codebook.device
        step = (self.hi - self.lo) / cells
        centres_1d = [self.lo[a] + (torch.arange(cells, device=device) + 0.5) * step[a] for a in range(2)]
        cy, cx = torch.meshgrid(centres_1d[0], centres_1d[1], indexing="ij")
        centres = torch.stack([cy.reshape(-1), cx.reshape(-1)], 1)
        half_diag = float(step.norm()) / 2
        n_cells, width = pool.shape[0], min(cap, pool.shape[1])
        lists = torch.empty(n_cells, width, dtype=torch.int64, device=device)
        counts = torch.empty(n_cells, dtype=torch.int64, device=device)
        chunk = max(1, (1 << 22) // pool.shape[1])
        for s in range(0, n_cells, chunk):
            part = pool[s : s + chunk]
            d = (self.codebook[part] - centres[s : s + chunk].unsqueeze(1)).norm(dim=2)
            # A small slack keeps the list a superset despite fp32 rounding.
            keep = d <= d.amin(1, keepdim=True) + 2 * half_diag * (1 + 1e-4) + 1e-6
            keep[:, 1:] &= part[:, 1:] != part[:, :-1]  # a padded pool repeats its last entry
            # Kept entries first, in pool (ascending) order.
            order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :width]
            lists[s : s + chunk] = torch.gather(part, 1, order)
            counts[s : s + chunk] = keep.sum(1)
        fits = counts <= width
        col = torch.arange(width, device=device).unsqueeze(0)
        last = torch.gather(lists, 1, (counts.clamp(max=width) - 1).unsqueeze(1))
        return torch.where(col < counts.unsqueeze(1), lists, last), fits

    def nearest(self, points: torch.Tensor) -> torch.Tensor:
        # Cell coordinates, clamped: a point outside the box lands in a border cell, which sends it
        # down the careful path below.
        cell = ((points - self.lo) * self.inv_step).clamp_(0, self.size - 1).to(torch.int32)
        flat = cell[:, 0] * self.size + cell[:, 1]
        out = self.direct[flat].to(torch.int64)
        hard_idx = (out < 0).nonzero().squeeze(1)
        if not hard_idx.numel():
            return out
        pts, cells = points[hard_idx], flat[hard_idx].to(torch.int64)
        rel = (pts - self.lo) * self.inv_step
        inside = ((rel >= 0) & (rel < self.size)).all(1)
        listed = inside & self.ok[cells]
        res = torch.empty(hard_idx.numel(), dtype=torch.int64, device=points.device)
        if listed.any():
            cand = self.lists[cells[listed]]  # [m, width]
            d = ((self.codebook[cand] - pts[listed].unsqueeze(1)) ** 2).sum(2)
            res[listed] = torch.gather(cand, 1, d.argmin(1, keepdim=True)).squeeze(1)
        if (~listed).any():
            res[~listed] = _brute_force(pts[~listed], self.codebook)
        out[hard_idx] = res
        return out


def index_bits(count: int) -> int:
    """Bits of an index into `count` items: ceil(log2 count), 0 for a single item."""
    return max(0, math.ceil(math.log2(count))) if count > 1 else 0
