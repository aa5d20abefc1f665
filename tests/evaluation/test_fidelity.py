import numpy as np
import pandas as pd
import pytest

from synthehr.evaluation import (
    correlation_difference,
    dimension_wise_r2,
    fidelity_summary,
    gaussian_kernel_mmd,
    intergenehr_mean_mmd,
    ks_statistics,
    mape,
    rmspe,
    wasserstein_distances,
)

REAL = pd.DataFrame({"a": [1.0, 3.0], "b": [10.0, 30.0]})  # means 2, 20
SHIFTED = pd.DataFrame({"a": [2.0, 4.0], "b": [20.0, 28.0]})  # means 3, 24: diffs 1, 4; relative 0.5, 0.2


def correlated(n: int, seed: int, rho: float = 0.8) -> pd.DataFrame:
    cov = np.full((4, 4), rho) + (1 - rho) * np.eye(4)
    x = np.random.default_rng(seed).multivariate_normal(np.zeros(4), cov, size=n)
    return pd.DataFrame(x * [1, 2, 3, 4] + [5, 10, 15, 20], columns=list("wxyz"))


def test_intergenehr_metrics_on_a_known_mean_shift():
    assert intergenehr_mean_mmd(REAL, SHIFTED) == pytest.approx(4.0)
    assert rmspe(REAL, SHIFTED) == pytest.approx(100 * np.sqrt((0.5**2 + 0.2**2) / 2))
    assert mape(REAL, SHIFTED) == pytest.approx(100 * (0.5 + 0.2) / 2)


def test_numpy_arrays_are_accepted():
    assert mape(REAL.to_numpy(), SHIFTED.to_numpy()) == pytest.approx(35.0)


def test_zero_mean_features_are_excluded_and_reported():
    real, synth = REAL.assign(c=[-1.0, 1.0]), SHIFTED.assign(c=[5.0, 5.0])
    with pytest.warns(RuntimeWarning, match="'c'"):
        assert mape(real, synth) == pytest.approx(35.0)
    summary = fidelity_summary(real, synth)
    assert summary["intergenehr_excluded"] == ["c"]
    assert summary["intergenehr_mmd"] == pytest.approx(5.0)  # MMD keeps every feature


def test_faithful_sample_scores_better_than_shifted_one():
    real, faithful = correlated(600, 1), correlated(600, 2)
    shifted = faithful + faithful.std() * 0.5
    assert gaussian_kernel_mmd(real, faithful, seed=0) < 0.01 < gaussian_kernel_mmd(real, shifted, seed=0)
    assert gaussian_kernel_mmd(real, shifted, unbiased=False) > 0
    assert ks_statistics(real, faithful).max() < 0.1 < ks_statistics(real, shifted).min()
    assert wasserstein_distances(real, shifted).to_numpy() == pytest.approx(0.5, abs=0.15)  # standardized units


def binary(n: int, seed: int, p: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame((np.random.default_rng(seed).random((n, p.size)) < p).astype(int))


def test_dimension_wise_r2_on_binary_features():
    p = np.linspace(0.05, 0.9, 10)
    real, faithful, flipped = binary(1000, 1, p), binary(1000, 2, p), binary(1000, 3, p[::-1])
    assert dimension_wise_r2(real, faithful) > 0.95
    assert dimension_wise_r2(real, flipped) < 0
    assert dimension_wise_r2(real, real) == 1.0


def test_shuffled_columns_destroy_correlation():
    real, faithful = correlated(800, 1), correlated(800, 2)
    rng = np.random.default_rng(3)
    shuffled = faithful.apply(lambda col: rng.permutation(col.to_numpy()))
    good, bad = correlation_difference(real, faithful), correlation_difference(real, shuffled)
    assert good["mean_abs"] < 0.1
    assert bad["mean_abs"] > 0.6
    assert bad["frobenius"] > 5 * good["frobenius"]


def test_summary_is_flat_and_seeded():
    real, synth = correlated(300, 1), correlated(300, 2)
    a = fidelity_summary(real, synth, standardize_with=real, seed=4)
    b = fidelity_summary(real, synth, standardize_with=real, seed=4)
    assert a == b
    assert all(not isinstance(v, dict) for v in a.values())
    assert a["n_features"] == 4
