"""The seed spread of the results table: sample std (ddof = 1)."""

import math

import numpy as np
import pytest

from gmom_ppo.eval import _pm, aggregate


def _run(seed: int, final_return: float) -> dict:
    return {
        "env": "Hopper-v5",
        "algo": "ppo",
        "seed": seed,
        "last_step": 100,
        "return_steps": np.array([0.0, 100.0]),
        "returns": np.array([0.0, final_return]),
        "final_return": final_return,
        "steps_per_s": 1000.0 + seed,
        "rollout_fraction": 0.5,
        "probes": {},
    }


def test_spread_over_seeds_is_the_sample_std():
    entry = aggregate([_run(1, 200.0), _run(2, 400.0), _run(3, 900.0)], 5)["Hopper-v5"]["ppo"]
    # (200, 400, 900): mean 500, std √((9 + 1 + 16)·10⁴ / 2) = 360.6 (ddof = 0: 294.4)
    assert entry["final_return"] == (pytest.approx(500.0), pytest.approx(130_000**0.5))
    assert entry["steps_per_s"] == (pytest.approx(1002.0), pytest.approx(1.0))
    assert _pm(entry["final_return"]) == "500 ± 361"


def test_one_seed_shows_the_mean_alone_and_a_missing_value_shows_nan():
    entry = aggregate([_run(1, 710.0)], 5)["Hopper-v5"]["ppo"]
    assert _pm(entry["final_return"]) == "710"
    entry = aggregate([_run(1, 710.0), _run(2, math.nan)], 5)["Hopper-v5"]["ppo"]
    assert _pm(entry["final_return"]) == "nan"
