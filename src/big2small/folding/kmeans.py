"""k-means in torch (docs/folding.md#clustering): k-means++ seeding, Lloyd iterations, several restarts,
empty clusters reseeded with the worst-fitted point. Runs on whatever device the features are on.
"""

from __future__ import annotations

import torch


def kmeans(features: torch.Tensor, k: int, *, n_init: int = 10, max_iter: int = 100, tol: float = 1e-6,
           seed: int = 0) -> torch.Tensor:
    """Cluster the rows of `features` [n, d] into k groups; return labels [n] (int64, in [0, k)).

    The run with the lowest inertia (sum of squared distances) of `n_init` restarts is kept; a
    run stops when the inertia's relative change falls below `tol`. Deterministic for a seed.
    """
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    if k == n:
        return torch.arange(n, device=features.device)
    x = features.float()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    # Pairwise distances once, for all restarts' seeding, where they fit in memory (~256 MB).
    distances = torch.cdist(x, x).pow(2) if n <= 8192 else None
    best_labels, best_inertia = None, float("inf")
    for _ in range(n_init):
        labels, inertia = _lloyd(x, _plus_plus(x, k, generator, distances), max_iter, tol)
        if inertia < best_inertia:
            best_labels, best_inertia = labels, inertia
    return best_labels


def _plus_plus(x: torch.Tensor, k: int, generator: torch.Generator, distances: torch.Tensor | None = None) -> torch.Tensor:
    """k-means++ seeding: each new centre drawn with probability proportional to the squared
    distance to the nearest centre so far. `distances` [n, n]: squared pairwise distances, if
    precomputed (seeding is then O(n) per centre)."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    chosen = [first]
    row = (lambda i: distances[i]) if distances is not None else (lambda i: ((x - x[i]) ** 2).sum(1))
    nearest = row(first).clamp_min(0)
    draws = torch.rand(k, generator=generator, dtype=torch.float64).tolist()
    for step in range(1, k):
        cumulative = torch.cumsum(nearest.double().cpu(), 0)
        total = float(cumulative[-1])
        if total <= 0:  # every point coincides with a centre: take any point
            index = int(draws[step] * n) % n
        else:
            index = min(int(torch.searchsorted(cumulative, draws[step] * total, right=True)), n - 1)
        chosen.append(index)
        nearest = torch.minimum(nearest, row(index).clamp_min(0))
    return x[torch.tensor(chosen, device=x.device)]


def _lloyd(x: torch.Tensor, centres: torch.Tensor, max_iter: int, tol: float) -> tuple[torch.Tensor, float]:
    k = centres.shape[0]
    previous = float("inf")
    for _ in range(max_iter):
        distances = torch.cdist(x, centres).pow(2)
        nearest, labels = distances.min(1)
        counts = torch.bincount(labels, minlength=k)
        for empty in (counts == 0).nonzero().reshape(-1).tolist():
            # Reseed with the point farthest from its centre, taken out of its cluster.
            far = int(nearest.argmax())
            labels[far] = empty
            nearest[far] = 0.0
            counts = torch.bincount(labels, minlength=k)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        centres = sums / counts.clamp_min(1).unsqueeze(1).to(x.dtype)
        inertia = float(((x - centres[labels]) ** 2).sum())
        if previous < float("inf") and abs(previous - inertia) <= tol * max(previous, 1e-30):
            break
        previous = inertia
    return labels, inertia
