"""The seed spread of the results table: sample std (ddof = 1)."""

import math

from s4rl.eval import _mean_std


def test_spread_over_seeds_is_the_sample_std():
    # (0.2, 0.4, 0.9): mean 0.5, std √((0.09 + 0.01 + 0.16) / 2) = 0.361 (ddof = 0: 0.294)
    assert _mean_std([0.2, 0.4, 0.9]) == "0.500 ± 0.361"


def test_one_seed_no_seed_and_a_seed_without_a_value():
    assert _mean_std([0.25]) == "0.250"
    assert _mean_std([]) == "—"
    assert _mean_std([0.25, math.nan]) == "nan"
