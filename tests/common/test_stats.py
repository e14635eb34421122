"""The seed-spread rule against scipy.stats: sample std (ddof = 1) and the 95% t-interval."""

import math

import numpy as np
import pytest
from scipy import stats

from common.stats import format_summary, std_over_seeds, summarize


@pytest.mark.parametrize("values", [[0.85, 0.88, 0.76], [1.0, 2.0], list(np.linspace(0, 1, 10))])
def test_summary_matches_scipy(values):
    s = summarize(values)
    low, high = stats.t.interval(
        0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values)
    )
    assert s.n == len(values)
    assert s.std == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert (s.low, s.high) == (pytest.approx(low, rel=1e-9), pytest.approx(high, rel=1e-9))


def test_one_seed_has_no_spread_and_bad_input_is_refused():
    s = summarize([0.5])
    assert s.mean == 0.5 and math.isnan(s.std) and format_summary(s) == "0.50 (n=1)"
    with pytest.raises(ValueError, match="NaN"):
        summarize([0.1, float("nan")])
    with pytest.raises(ValueError, match="non-empty"):
        summarize([])


def test_format_states_n_and_the_interval():
    assert format_summary(summarize([1.0, 3.0]), digits=1) == "2.0 ± 1.4 (n=2; 95% CI -10.7–14.7)"


def test_std_over_seeds_is_the_sample_std_per_point_and_nan_below_two_values():
    curves = np.array(
        [[1.0, 2.0, 3.0, np.nan], [3.0, 2.0, np.nan, np.nan], [2.0, 5.0, np.nan, 1.0]]
    )
    std = std_over_seeds(curves)
    expected = [np.std([1.0, 3.0, 2.0], ddof=1), np.std([2.0, 2.0, 5.0], ddof=1)]
    np.testing.assert_allclose(std[:2], expected, rtol=1e-12)
    assert np.isnan(std[2:]).all()  # one value at each: no spread
    assert np.isnan(std_over_seeds(np.array([[0.1, 0.2]]))).all()  # one seed
