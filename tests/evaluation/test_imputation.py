import numpy as np
import pytest

from synthehr.evaluation import gaussian_nll, imputation_mse, interval_coverage, random_mask


def test_random_mask_ratio_and_row_guarantees():
    mask = random_mask((2000, 3), ratio=0.5, seed=1)
    assert mask.shape == (2000, 3)
    assert mask.any(axis=1).all() and (~mask).any(axis=1).all()
    assert mask.mean() == pytest.approx(0.5, abs=0.03)
    np.testing.assert_array_equal(mask, random_mask((2000, 3), ratio=0.5, seed=1))
    assert not np.array_equal(mask, random_mask((2000, 3), ratio=0.5, seed=2))


def test_random_mask_needs_two_features():
    with pytest.raises(ValueError):
        random_mask((5, 1))


TRUTH = np.array([[0.0, 0.0], [2.0, 2.0]])  # column std (ddof=0) = 1
MASK = np.array([[True, False], [False, True]])


def test_imputation_mse_in_standardized_units():
    assert imputation_mse(TRUTH, TRUTH + 1.0, MASK) == pytest.approx(1.0)
    assert imputation_mse(TRUTH * 10, TRUTH * 10 + 10.0, MASK) == pytest.approx(1.0)  # scale-free
    assert imputation_mse(TRUTH, np.where(MASK, TRUTH, 99.0), MASK) == 0.0  # observed cells ignored


def test_gaussian_nll_from_draws():
    draws = np.stack([TRUTH - 1.0, TRUTH + 1.0])  # per cell: mean = truth, sd (ddof=1) = sqrt(2)
    assert gaussian_nll(TRUTH, draws, MASK) == pytest.approx(0.5 * np.log(2 * np.pi * 2.0))
    assert gaussian_nll(TRUTH, draws + 3.0, MASK) > gaussian_nll(TRUTH, draws, MASK)


def test_interval_coverage():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(400, 2))
    draws = rng.normal(size=(200, 400, 2))
    mask = np.ones_like(truth, dtype=bool)
    assert interval_coverage(truth, draws, mask, level=0.9) == pytest.approx(0.9, abs=0.05)
    assert interval_coverage(truth, draws + 10, mask) == 0.0
