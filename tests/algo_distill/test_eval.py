"""The seed spread of the results table: sample std (ddof = 1)."""

import numpy as np
import pytest

from algo_distill.eval import results_markdown, summarise


def test_spread_over_seeds_is_the_sample_std():
    # 3 seeds × 6 episodes; the last 5 episodes average to 2, 4 and 9 (of an optimal 10)
    curves = np.array([[0.0] + [2.0] * 5, [1.0] + [4.0] * 5, [5.0] + [9.0] * 5])
    row = summarise(curves, optimal=10.0)
    assert row["seeds"] == 3
    assert row["first"] == (pytest.approx(2.0), pytest.approx(7**0.5))  # (4 + 1 + 9) / 2
    assert row["last5"] == (pytest.approx(5.0), pytest.approx(13**0.5))  # (9 + 1 + 16) / 2
    assert row["fraction_of_optimal"] == (pytest.approx(0.5), pytest.approx(0.13**0.5))
    assert "| AD | 2.00 ± 2.65 | 5.00 ± 3.61 | 0.50 ± 0.36 | 3 |" in results_markdown(
        {"AD": row}, 10.0
    )


def test_one_seed_shows_the_mean_alone():
    row = summarise(np.array([[1.0] * 6]), optimal=2.0)
    assert "| ED | 1.00 | 1.00 | 0.50 | 1 |" in results_markdown({"ED": row}, 2.0)
