"""The seed spread of the results table: sample std (ddof = 1)."""

import math

import numpy as np

from s4rl.eval import _mean_std, summarise


def test_spread_over_seeds_is_the_sample_std():
    # (0.2, 0.4, 0.9): mean 0.5, std √((0.09 + 0.01 + 0.16) / 2) = 0.361 (ddof = 0: 0.294)
    assert _mean_std([0.2, 0.4, 0.9]) == "0.500 ± 0.361"


def test_one_seed_no_seed_and_a_seed_without_a_value():
    assert _mean_std([0.25]) == "0.250"
    assert _mean_std([]) == "—"
    assert _mean_std([0.25, math.nan]) == "nan"


def _run(model: str, lr: float, seed: int, success: float) -> dict:
    return {
        "task": "memory63",
        "model": model,
        "lr": lr,
        "seed": seed,
        "steps": 1000,
        "memory_length": 63,
        "curve": (np.array([0.0, 1000.0]), np.array([0.0, 1.0])),
        "final_return": 1.0,
        "eval_return": 2 * success - 1,
        "eval_success": success,
        "steps_per_s": 100.0,
    }


def test_a_learning_rate_sweep_gets_one_row_per_lr(tmp_path):
    runs = [_run("lstm", lr, seed, s) for lr, s in ((3e-4, 0.5), (1e-3, 1.0)) for seed in (1, 2)]
    runs += [_run("s5", 1e-3, 1, 1.0)]
    table = summarise(runs, tmp_path, grid_points=5).splitlines()
    assert [line.split(" | ")[1] for line in table[2:]] == [
        "s5",
        "lstm (lr 0.0003)",
        "lstm (lr 0.001)",
    ]
    assert table[3].endswith("| 2 | 1,000 | 1.000 ± 0.000 | 0.000 ± 0.000 | 0.500 ± 0.000 | 100 |")
    assert (tmp_path / "memory63_returns.png").exists()
