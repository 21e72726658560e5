"""A bank of small SIRENs fitted together, one per tile of weights (docs/inr.md#the-siren-bank).

Each SIREN maps a coordinate (u, v) in [-1, 1]^2 to one value:
    h_1 = sin(w0_first (W_1 x + b_1)),  h_{l+1} = sin(w0_hidden (W_l h_l + b_l)),  y = W_out h + b_out.
All T SIRENs of a bank share the architecture, so their parameters live in one flat tensor [T, P]
and every layer is one batched matmul (`torch.baddbmm`). The tiles are independent: the loss is a
sum of per-tile losses, so a tile's fit does not depend on which other tiles share its bank (Adam
normalises each parameter's step), and fitting many tensors in one bank only saves launches.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

FREQ_MODES = ("focal", "highpass", "amplitude")
# Tile states are compared (and the best kept) every this many steps.
EVAL_EVERY = 50
# Steps timed before a time budget shortens the schedule.
TIMING_STEPS = 10
# Activation memory allowed per chunk of tiles, bytes (forward values kept for backward included).
CHUNK_BYTES = 1.5e9


def parameter_count(width: int, depth: int, d_in: int = 2, d_out: int = 1) -> int:
    """P(h) = (d_in + 1) h + (depth - 1)(h^2 + h) + (h + 1) d_out; 2h^2 + 6h + 1 for the defaults."""
    return (d_in + 1) * width + (depth - 1) * (width * width + width) + (width + 1) * d_out


@dataclass(frozen=True)
class SirenShape:
    """The architecture shared by every SIREN of a bank."""

    width: int
    depth: int = 3
    omega0_first: float = 30.0
    omega0_hidden: float = 30.0
    d_in: int = 2

    @property
    def n_params(self) -> int:
        return parameter_count(self.width, self.depth, self.d_in)

    def layer_dims(self) -> list[tuple[int, int]]:
        h = self.width
        return [(self.d_in, h)] + [(h, h)] * (self.depth - 1) + [(h, 1)]

    def blocks(self) -> list[tuple[int, int]]:
        """(start, end) of each weight matrix and bias vector inside a flat parameter row."""
        out, offset = [], 0
        for fan_in, fan_out in self.layer_dims():
            for size in (fan_in * fan_out, fan_out):
                out.append((offset, offset + size))
                offset += size
        return out

    def init(self, n: int, seed: int) -> torch.Tensor:
        """[n, P] parameters with the SIREN initialisation, drawn on the CPU from `seed` (so that CPU
        and GPU fits start from the same values)."""
        g = torch.Generator().manual_seed(seed)
        parts = []
        for i, (fan_in, fan_out) in enumerate(self.layer_dims()):
            bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / self.omega0_hidden
            parts.append((torch.rand(n, fan_in * fan_out, generator=g) * 2 - 1) * bound)
            b_bound = 1.0 / math.sqrt(fan_in)
            parts.append((torch.rand(n, fan_out, generator=g) * 2 - 1) * b_bound)
        return torch.cat(parts, 1)

    def forward(self, phi: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """Values [T, M] of T SIRENs (phi [T, P]) at M shared coordinates (coords [M, d_in])."""
        t = phi.shape[0]
        x = coords.unsqueeze(0).expand(t, -1, -1)
        offset = 0
        dims = self.layer_dims()
        for i, (fan_in, fan_out) in enumerate(dims):
            w = phi[:, offset:offset + fan_in * fan_out].reshape(t, fan_in, fan_out)
            offset += fan_in * fan_out
            b = phi[:, offset:offset + fan_out].unsqueeze(1)
            offset += fan_out
            x = torch.baddbmm(b, x, w)
            if i < len(dims) - 1:
                x = torch.sin((self.omega0_first if i == 0 else self.omega0_hidden) * x)
        return x.squeeze(2)


def grid_axis(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """n coordinates spread over [-1, 1] (0 when n = 1)."""
    return torch.zeros(1, device=device) if n == 1 else torch.linspace(-1.0, 1.0, n, device=device)


def tile_grid(rows: int, cols: int, device: torch.device | str = "cpu", layers: torch.Tensor | None = None) -> torch.Tensor:
    """Coordinates of a tile, row-major: [rows * cols, 2] of (u_i, v_j), u_i = -1 + 2i/(rows-1).

    With `layers` (layer coordinates z), a shared SIREN's input: [len(z) * rows * cols, 3] of
    (u_i, v_j, z_l), ordered layer by layer."""
    u, v = torch.meshgrid(grid_axis(rows, device), grid_axis(cols, device), indexing="ij")
    uv = torch.stack([u.reshape(-1), v.reshape(-1)], 1)
    if layers is None:
        return uv
    z = layers.to(device).repeat_interleave(rows * cols).unsqueeze(1)
    return torch.cat([uv.repeat(len(layers), 1), z], 1)


@dataclass(frozen=True)
class FitSettings:
    """How a bank is fitted. Units: seconds for `max_seconds`; `target_mse` is the masked mean squared
    error on the standardised target (1.0 = predicting the mean)."""

    steps: int = 2000
    lr: float = 1e-3
    lr_final: float = 1e-5
    lambda_f: float = 0.5
    freq_mode: str = "focal"
    alpha: float = 1.0
    phi_qat_steps: int = 0
    phi_bits: int = 16
    max_seconds: float | None = None
    target_mse: float | None = None
    tiles_per_chunk: int = 0  # 0: as many as CHUNK_BYTES of activations allow


@dataclass
class FitResult:
    phi: torch.Tensor  # [T, P] fp32, the best state of each tile (already rounded to phi_bits)
    mse: torch.Tensor  # [T] masked MSE of each tile with the stored (rounded) parameters
    steps_run: int
    seconds: float


def quantise_params(shape: SirenShape, phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """8-bit storage of [T, P] parameters: int8 codes and one fp16 scale per tile and block (each
    weight matrix and bias vector: their ranges differ by orders of magnitude)."""
    codes = torch.empty(phi.shape, dtype=torch.int8, device=phi.device)
    scales = torch.empty(phi.shape[0], len(shape.blocks()), dtype=torch.float16, device=phi.device)
    for b, (start, end) in enumerate(shape.blocks()):  # a handful of blocks; each one vectorised over tiles
        block = phi[:, start:end]
        scale = (block.abs().amax(1) / 127).half().clamp_min(torch.finfo(torch.float16).tiny)
        scales[:, b] = scale
        codes[:, start:end] = torch.round(block / scale.float().unsqueeze(1)).clamp(-127, 127).to(torch.int8)
    return codes, scales


def dequantise_params(shape: SirenShape, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    widths = torch.tensor([end - start for start, end in shape.blocks()], device=codes.device)
    return codes.float() * scales.float().repeat_interleave(widths, dim=1)


def stored_params(shape: SirenShape, phi: torch.Tensor, phi_bits: int) -> torch.Tensor:
    """The parameters as the decoder will see them after storage at `phi_bits` (32, 16 or 8)."""
    if phi_bits == 16:
        return phi.half().float()
    if phi_bits == 8:
        return dequantise_params(shape, *quantise_params(shape, phi))
    return phi


def _highpass_weight(rows: int, cols: int, alpha: float, device) -> torch.Tensor:
    fr = torch.fft.fftfreq(rows, device=device).abs()
    fc = torch.fft.fftfreq(cols, device=device).abs()
    radius = torch.sqrt(fr[:, None] ** 2 + fc[None, :] ** 2)
    return (radius / radius.max().clamp_min(1e-12)) ** alpha


def tile_losses(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, settings: FitSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss [T], masked MSE [T]) of predictions against targets, both [T, ..., rows, cols] (a shared
    SIREN's tiles of several layers sit in the middle dimensions; the FFT is per 2-D tile).

    loss = MSE + lambda_f * L_freq (docs/inr.md#the-loss). By Parseval an unweighted spectral MSE of the
    orthonormal FFT equals the spatial MSE, so the frequency term acts only through its weighting.
    """
    dims = tuple(range(1, pred.dim()))
    count = mask.sum(dims).clamp_min(1.0)
    diff = (pred - target) * mask
    mse = diff.pow(2).sum(dims) / count
    if not settings.lambda_f:
        return mse, mse
    if settings.freq_mode == "amplitude":
        fp = torch.fft.fft2(pred * mask, norm="ortho")
        ft = torch.fft.fft2(target * mask, norm="ortho")
        amp = lambda z: torch.sqrt(z.real.pow(2) + z.imag.pow(2) + 1e-12)  # noqa: E731 - smooth at 0
        freq = (amp(fp) - amp(ft)).abs().mean(dims)
    else:
        spec = torch.fft.fft2(diff, norm="ortho")
        power = spec.real.pow(2) + spec.imag.pow(2)
        if settings.freq_mode == "focal":
            mag = power.detach().sqrt()
            weight = (mag / mag.amax((-2, -1), keepdim=True).clamp_min(1e-12)) ** settings.alpha
        else:
            weight = _highpass_weight(pred.shape[-2], pred.shape[-1], settings.alpha, pred.device)
        freq = (weight * power).mean(dims)
    return mse + settings.lambda_f * freq, mse


def _lr_at(step: int, total: int, settings: FitSettings) -> float:
    """Cosine decay from lr to lr_final over `total` steps."""
    frac = min(step / max(total - 1, 1), 1.0)
    return settings.lr_final + 0.5 * (settings.lr - settings.lr_final) * (1 + math.cos(math.pi * frac))


def chunk_size(shape: SirenShape, tile_numel: int, settings: FitSettings) -> int:
    """Tiles fitted at once: activations of every layer, about 4 copies each for the backward pass."""
    if settings.tiles_per_chunk:
        return settings.tiles_per_chunk
    per_tile = 4 * tile_numel * shape.width * (shape.depth + 1) * 4
    return max(1, int(CHUNK_BYTES // per_tile))


def fit_bank(shape: SirenShape, targets: torch.Tensor, masks: torch.Tensor, init: torch.Tensor,
             settings: FitSettings, advance: Callable[[float], None] | None = None,
             layers: torch.Tensor | None = None) -> FitResult:
    """Fit T SIRENs (initial parameters `init` [T, P]) to `targets` [T, rows, cols] under 0/1 `masks`;
    with `layers` (z coordinates), targets are [T, L, rows, cols] and each SIREN covers L layers.

    Runs on the targets' device, in fp32 with TF32 off (w0 = 30 amplifies matmul rounding inside the
    sine). Stops after `steps`, or earlier on `max_seconds` (the cosine schedule is shortened to fit)
    or once every tile's MSE is below `target_mse`. `advance(fraction)` reports progress in
    fractions of the whole fit.
    """
    device = targets.device
    n_tiles, rows, cols = targets.shape[0], targets.shape[-2], targets.shape[-1]
    coords = tile_grid(rows, cols, device, layers)
    per_chunk = chunk_size(shape, coords.shape[0], settings)
    chunks = [slice(i, min(i + per_chunk, n_tiles)) for i in range(0, n_tiles, per_chunk)]
    start = time.perf_counter()
    out_phi, out_mse, steps_run = [], [], 0
    old_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        for sl in chunks:
            seconds = None
            if settings.max_seconds is not None:
                left = settings.max_seconds - (time.perf_counter() - start)
                seconds = max(left, 0.0) * (sl.stop - sl.start) / (n_tiles - sl.start)
            phi, mse, steps = _fit_chunk(shape, coords, targets[sl], masks[sl], init[sl].to(device), settings,
                                         seconds, lambda f, w=(sl.stop - sl.start) / n_tiles: advance and advance(f * w))
            out_phi.append(phi)
            out_mse.append(mse)
            steps_run = max(steps_run, steps)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old_tf32
    return FitResult(torch.cat(out_phi), torch.cat(out_mse), steps_run, time.perf_counter() - start)


def _fit_chunk(shape: SirenShape, coords: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
               init: torch.Tensor, settings: FitSettings, seconds: float | None,
               advance: Callable[[float], None]) -> tuple[torch.Tensor, torch.Tensor, int]:
    t = target.shape[0]
    phi = init.clone().requires_grad_(True)
    opt = torch.optim.Adam([phi], lr=settings.lr, betas=(0.9, 0.999))
    best_phi = stored_params(shape, init, settings.phi_bits).clone()
    best_mse = torch.full((t,), float("inf"), device=target.device)
    total = settings.steps
    start = time.perf_counter()
    qat_from = total - settings.phi_qat_steps
    done = 0
    step = 0

    def evaluate() -> None:
        nonlocal best_mse
        with torch.no_grad():
            stored = stored_params(shape, phi.detach(), settings.phi_bits)
            pred = shape.forward(stored, coords).reshape(target.shape)
            _, mse = tile_losses(pred, target, mask, FitSettings(lambda_f=0.0))
            better = mse < best_mse
            best_phi[better] = stored[better]
            best_mse = torch.where(better, mse, best_mse)

    while step < total:
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, total, settings)
        params = phi
        if settings.phi_bits < 32 and step >= qat_from:
            # straight-through rounding: the forward pass sees the stored values
            params = phi + (stored_params(shape, phi.detach(), settings.phi_bits) - phi).detach()
        pred = shape.forward(params, coords).reshape(target.shape)
        loss, _ = tile_losses(pred, target, mask, settings)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        step += 1
        if seconds is not None and step == TIMING_STEPS:
            if target.is_cuda:
                torch.cuda.synchronize(target.device)  # kernels run asynchronously: time them finished
            per_step = (time.perf_counter() - start) / TIMING_STEPS
            total = max(step + 1, min(total, int(seconds / per_step)))
            qat_from = total - settings.phi_qat_steps
        if step % EVAL_EVERY == 0 or step == total:
            evaluate()
            if settings.target_mse is not None and bool((best_mse <= settings.target_mse).all()):
                break
        advance((step - done) / total)
        done = step
    if step == 0:
        evaluate()
    advance(max(0.0, 1.0 - done / max(total, 1)))
    return best_phi.detach(), best_mse, step
