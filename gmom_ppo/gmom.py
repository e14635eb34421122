"""GMOM: the geometric median of block means as a robust gradient estimate (Garg et al. §5).

The minibatch's per-sample gradients g_1..g_B are split into k blocks, each block is averaged,
and the update direction is the geometric median of the k block means,
    ĝ = argmin_z Σ_j ‖z − μ_j‖₂,
found by (ε-smoothed) Weiszfeld iterations. A few heavy-tailed samples move at most the blocks
that hold them, and the median of the blocks barely moves (breakdown point ½ over blocks).
"""

from __future__ import annotations

import torch


def geometric_median(
    points: torch.Tensor, tol: float = 1e-6, max_iter: int = 100, eps: float = 1e-12
) -> tuple[torch.Tensor, int]:
    """Weiszfeld iterations for argmin_z Σ_j ‖z − x_j‖ over the rows x_j of `points` (k, P).

    z ← Σ_j w_j x_j / Σ_j w_j with w_j = 1 / max(‖z − x_j‖, ε), starting from the mean; stops
    when a step moves z by at most tol·‖z‖ (relative) or after max_iter steps.
    Returns (median, iterations used).
    """
    if points.ndim != 2 or points.shape[0] == 0:
        raise ValueError(f"points must have shape (k, P) with k >= 1, got {tuple(points.shape)}")
    median = points.mean(0)
    for iteration in range(1, max_iter + 1):
        weights = 1.0 / (points - median).norm(dim=1).clamp_min(eps)
        updated = weights @ points / weights.sum()
        moved = (updated - median).norm()
        median = updated
        if moved <= tol * median.norm().clamp_min(eps):
            return median, iteration
    return median, max_iter


def block_means(per_sample: torch.Tensor, num_blocks: int) -> torch.Tensor:
    """Means of `num_blocks` contiguous, near-equal blocks of the rows of `per_sample` (B, P)."""
    if not 1 <= num_blocks <= per_sample.shape[0]:
        raise ValueError(f"num_blocks={num_blocks} must be in [1, {per_sample.shape[0]}]")
    return torch.stack([b.mean(0) for b in per_sample.tensor_split(num_blocks)])


def median_of_means(
    per_sample: torch.Tensor,
    num_blocks: int,
    tol: float = 1e-6,
    max_iter: int = 100,
    eps: float = 1e-12,
) -> tuple[torch.Tensor, int]:
    """GMOM estimate of the mean gradient from per-sample gradients (B, P); see module doc."""
    return geometric_median(block_means(per_sample, num_blocks), tol, max_iter, eps)
