"""Matplotlib (Agg) plots shared by the papers: learning curves over seeds and heatmaps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from common.stats import std_over_seeds  # noqa: E402


def plot_curves(
    curves: Mapping[str, np.ndarray],
    path: str | Path,
    *,
    x: np.ndarray | None = None,
    xlabel: str = "step",
    ylabel: str = "",
    title: str = "",
    ax: plt.Axes | None = None,
) -> Path | None:
    """Plot the mean over seeds of each curve with a band of ± the sample std (ddof = 1,
    `common.stats.std_over_seeds`: none where fewer than two seeds have a value);
    `curves[label]` has shape (seeds, points); NaNs are left out.

    With `ax`, draw into it and leave saving to the caller (returns None).
    """
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6, 4))
    for label, values in curves.items():
        values = np.atleast_2d(np.asarray(values, dtype=float))
        xs = np.arange(values.shape[1]) if x is None else np.asarray(x)
        mean = np.nanmean(values, axis=0)
        std = std_over_seeds(values)
        (line,) = ax.plot(xs, mean, label=f"{label} (n={values.shape[0]})")
        ax.fill_between(xs, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if not own:
        return None
    return save(fig, path)


def plot_heatmap(
    matrix: np.ndarray,
    path: str | Path,
    *,
    xlabels: Sequence[str],
    ylabels: Sequence[str],
    title: str = "",
    fmt: str = "{:.2f}",
) -> Path:
    """Annotated heatmap of a (rows, cols) matrix."""
    matrix = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 * len(xlabels) + 2, 0.6 * len(ylabels) + 1.5))
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(xlabels)), xlabels, rotation=30, ha="right")
    ax.set_yticks(range(len(ylabels)), ylabels)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, fmt.format(matrix[i, j]), ha="center", va="center", color="w", fontsize=8)
    fig.colorbar(image, ax=ax)
    ax.set_title(title)
    return save(fig, path)


def save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
