"""GMOM: the geometric median of block means (Garg et al. §5)."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from gmom_ppo.gmom import block_means, geometric_median, median_of_means


def test_one_block_is_the_mean():
    samples = torch.randn(64, 10, dtype=torch.float64)
    estimate, _ = median_of_means(samples, num_blocks=1)
    torch.testing.assert_close(estimate, samples.mean(0))


def test_block_means_partition_the_samples():
    samples = torch.randn(12, 3, dtype=torch.float64)
    means = block_means(samples, 4)
    torch.testing.assert_close(means, samples.view(4, 3, 3).mean(1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_scipy_minimiser_of_the_sum_of_distances(seed):
    rng = np.random.default_rng(seed)
    points = rng.standard_t(df=2, size=(9, 4))

    def total_distance(z):
        return np.linalg.norm(points - z, axis=1).sum()

    reference = minimize(
        total_distance,
        points.mean(0),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000},
    ).x
    median, _ = geometric_median(torch.from_numpy(points), tol=1e-12, max_iter=10_000)
    assert total_distance(median.numpy()) <= total_distance(reference) + 1e-8
    np.testing.assert_allclose(median.numpy(), reference, atol=1e-4)


def test_an_outlier_block_barely_moves_the_estimate():
    torch.manual_seed(0)
    samples = torch.randn(64, 5, dtype=torch.float64) + 1.0
    corrupted = samples.clone()
    corrupted[:8] += 1e4  # one of 8 blocks is entirely outliers
    mean_shift = (corrupted.mean(0) - samples.mean(0)).norm()
    clean, _ = median_of_means(samples, 8, tol=1e-10, max_iter=1000)
    robust, _ = median_of_means(corrupted, 8, tol=1e-10, max_iter=1000)
    assert mean_shift > 1e3
    assert (robust - clean).norm() < 1.0
    assert (robust - torch.ones(5, dtype=torch.float64)).norm() < 1.0


def test_bad_block_count_is_refused():
    with pytest.raises(ValueError, match="num_blocks=9 must be in"):
        block_means(torch.zeros(8, 2), 9)
