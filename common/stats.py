"""Spread and intervals over seeds, the one rule every paper's eval reports with
(CONVENTIONS.md, "Spread"): mean ± sample standard deviation (ddof = 1) with n, and a 95%
Student-t interval of the mean for threshold claims."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Summary:
    """mean, sample std (ddof = 1; NaN for n = 1), n, and the 95% t-interval of the mean."""

    mean: float
    std: float
    n: int
    low: float
    high: float

    def __str__(self) -> str:
        return format_summary(self)


def _t_quantile(p: float, dof: int) -> float:
    """Quantile of Student's t with `dof` degrees of freedom: bisection on the CDF, which is
    1/2 + ∫₀ᵗ density (Simpson's rule, 20,000 panels; ~1e-12 from scipy's for p ≤ 0.995).
    scipy would do this, but it is a test-only dependency of the project."""
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)

    def cdf(t: float) -> float:
        xs = torch.linspace(0.0, t, 20001, dtype=torch.float64)
        density = torch.exp(log_norm - (dof + 1) / 2 * torch.log1p(xs**2 / dof))
        h = t / 20000
        simpson = density[0] + density[-1] + 4 * density[1:-1:2].sum() + 2 * density[2:-1:2].sum()
        return 0.5 + float(simpson) * h / 3

    lo, hi = 0.0, 1000.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Summary of per-seed values; NaNs are an error (a seed without a number must be said)."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"summarize needs a non-empty 1-D list of per-seed values, got {x.shape}")
    if np.isnan(x).any():
        raise ValueError(f"summarize got NaN among {x.tolist()}")
    n, mean = x.size, float(x.mean())
    if n == 1:
        return Summary(mean, math.nan, 1, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = _t_quantile(0.5 + confidence / 2, n - 1) * std / math.sqrt(n)
    return Summary(mean, std, n, mean - half, mean + half)


def std_over_seeds(curves: np.ndarray) -> np.ndarray:
    """Sample std (ddof = 1) over seeds (axis 0) of per-seed curves (seeds, points), NaNs left
    out; NaN at a point with fewer than two values (one seed has no spread: no band to draw)."""
    x = np.atleast_2d(np.asarray(curves, dtype=np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "degrees of freedom <= 0": the NaNs
        return np.nanstd(x, axis=0, ddof=1)


def format_summary(s: Summary, digits: int = 2) -> str:
    """The form every results table uses: "0.83 ± 0.05 (n=3; 95% CI 0.71–0.95)"."""
    if s.n == 1:
        return f"{s.mean:.{digits}f} (n=1)"
    return (
        f"{s.mean:.{digits}f} ± {s.std:.{digits}f} "
        f"(n={s.n}; 95% CI {s.low:.{digits}f}–{s.high:.{digits}f})"
    )
