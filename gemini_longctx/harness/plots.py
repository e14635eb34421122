"""The report's long-context figures: the NIAH depth × length grid (§5.2.1, Fig. 1 / 9) and
cumulative NLL by position with its power-law fit (§5.1, Fig. 7)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LinearSegmentedColormap  # noqa: E402

from common.plotting import save  # noqa: E402
from gemini_longctx.harness.niah import NeedleResult  # noqa: E402
from gemini_longctx.harness.nll import PowerLaw  # noqa: E402

FOUND_MISSED = LinearSegmentedColormap.from_list("found_missed", ["#d62728", "#2ca02c"])


def _tokens(n: int) -> str:
    for size, unit in ((1_000_000, "M"), (1_000, "K")):
        if n >= size and n % (size // 10) == 0:
            return f"{n / size:g}{unit}"
    return str(n)


def plot_needle_heatmap(result: NeedleResult, path: str | Path, title: str = "") -> Path:
    """Accuracy per (depth, length) cell: green = found, red = missed, as in the report."""
    fig, ax = plt.subplots(figsize=(0.5 * len(result.lengths) + 3, 0.3 * len(result.depths) + 2))
    image = ax.imshow(result.accuracy, cmap=FOUND_MISSED, vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(result.lengths)), [_tokens(n) for n in result.lengths], rotation=45)
    ax.set_yticks(range(len(result.depths)), [f"{100 * d:.0f}%" for d in result.depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(title or f"needle in a haystack: {100 * result.accuracy.mean():.1f}% found")
    fig.colorbar(image, ax=ax, label="accuracy")
    return save(fig, path)


def plot_nll_by_position(
    nll: np.ndarray, path: str | Path, fit: PowerLaw | None = None, label: str = "model"
) -> Path:
    """Cumulative average NLL against position x = 1..len(nll) (log x), with the fitted law."""
    positions = np.arange(1, len(nll) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(positions, nll, label=label)
    if fit is not None:
        ax.plot(
            positions,
            fit(positions),
            "--",
            color="k",
            label=f"{fit.alpha:.3g}·x^{fit.beta:.3g} + {fit.gamma:.3g} (R² = {fit.r2:.3f})",
        )
    ax.set_xscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel("cumulative average NLL")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
