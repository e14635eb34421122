"""The seed spread of the results table: sample std (ddof = 1), undefined seeds left out."""

import math

import pytest

from causal_seq.eval import aggregate, results_markdown

METRICS = ("late_optimal", "regret", "return", "tv_do", "tv_cond")


def _result(seed: int, late_optimal: float, tv_cond: float) -> dict:
    summary = {m: 1.0 for m in METRICS} | {"late_optimal": late_optimal, "tv_cond": tv_cond}
    summary["curves"] = {"optimal": [late_optimal, late_optimal]}
    return {"task": "bandit", "seed": seed, "policies": {"gru factual": summary}}


def test_spread_over_seeds_is_the_sample_std():
    results = [_result(1, 0.2, 0.1), _result(2, 0.4, math.nan), _result(3, 0.9, 0.3)]
    entry = aggregate(results)["bandit"]["gru factual"]
    assert entry["seeds"] == 3
    # (0.2, 0.4, 0.9): mean 0.5, squared deviations 0.09 + 0.01 + 0.16 over n - 1 = 2
    assert entry["late_optimal"] == (pytest.approx(0.5), pytest.approx(0.13**0.5))
    # the undefined seed is left out: (0.1, 0.3), std √(0.02 / 1)
    assert entry["tv_cond"] == (pytest.approx(0.2), pytest.approx(0.02**0.5))
    assert "| 0.500 ± 0.361 |" in results_markdown(aggregate(results))


def test_one_seed_shows_the_mean_alone():
    markdown = results_markdown(aggregate([_result(1, 0.25, 0.1)]))
    assert "| bandit | gru factual | 0.250 | 1.000 | 1.000 | 0.100 | 1 |" in markdown
