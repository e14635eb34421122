"""The results table: per-seed spread (sample std, ddof = 1), 95% interval, steps to 80%."""

import numpy as np
import pytest
from omegaconf import OmegaConf

from algo_distill.eval import label, results_markdown, summarise


def test_spread_over_seeds_is_the_sample_std_with_an_interval():
    # 3 seeds × 6 episodes of 10 steps; the last 5 episodes average to 2, 4 and 9 (of 10)
    curves = np.array([[0.0] + [2.0] * 5, [1.0] + [4.0] * 5, [5.0] + [9.0] * 5])
    row = summarise(curves, optimal=10.0, episode_len=10)
    assert row["first"].n == 3
    assert (row["first"].mean, row["first"].std) == (2.0, pytest.approx(7**0.5))
    assert row["last5"].std == pytest.approx(13**0.5)  # (9 + 1 + 16) / 2
    fraction = row["fraction_of_optimal"]
    assert (fraction.mean, fraction.std) == (pytest.approx(0.5), pytest.approx(0.13**0.5))
    # t(0.975, 2) = 4.303: the interval is mean ± 4.303 · std / √3
    assert fraction.high - fraction.mean == pytest.approx(4.3027 * 0.13**0.5 / 3**0.5, rel=1e-4)
    # only the third seed reaches 8 of 10, at its 2nd episode = 20 environment steps
    assert (row["steps_to_80"].mean, row["steps_to_80"].n, row["reached_80"]) == (20.0, 1, "1/3")
    line = results_markdown({"AD": row}, 10.0, "test").splitlines()[-1]
    assert line.startswith("| AD | 2.00 ± 2.65 (n=3; 95% CI -4.57–8.57) | 5.00 ± 3.61 (n=3;")
    assert line.endswith("| 20 (n=1) (1/3) |")


def test_never_reaching_80_percent_is_said():
    row = summarise(np.array([[1.0] * 6]), optimal=2.0, episode_len=5)
    assert row["steps_to_80"] is None
    assert results_markdown({"ED": row}, 2.0, "val").splitlines()[-1] == (
        "| ED | 1.00 (n=1) | 1.00 (n=1) | 0.50 (n=1) | never (0) |"
    )


def test_run_labels_name_the_subsampling():
    def cfg(method, every):
        return OmegaConf.create({"method": method, "subsample_every": every})

    assert label(cfg("algorithm_distillation", 1)) == "AD"
    assert label(cfg("algorithm_distillation", 2)) == "AD (every 2nd episode)"
    assert label(cfg("algorithm_distillation", 4)) == "AD (every 4th episode)"
    assert label(OmegaConf.create({"method": "expert_distillation"})) == "ED"
