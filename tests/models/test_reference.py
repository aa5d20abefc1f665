"""Reference generators: exact Gaussian conditionals, and a baseline that provably lacks them."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from synthehr.errors import DataError
from synthehr.models import Generator, IndependentMarginals, MultivariateGaussian, TableSchema, load_model

from .conftest import make_mixed_table

# ------------------------------------------------------------ calibration set-up
MU = np.array([1.0, -2.0, 0.5, 3.0])
SD = np.array([1.0, 2.0, 0.5, 1.5])
R = np.array([[1.0, 0.7, 0.4, 0.2],
              [0.7, 1.0, 0.5, 0.3],
              [0.4, 0.5, 1.0, 0.6],
              [0.2, 0.3, 0.6, 1.0]])
SIGMA = R * np.outer(SD, SD)
NAMES = ["x0", "x1", "x2", "x3"]
OBS, UNOBS = [0, 2], [1, 3]
X_O = np.array([MU[0] + 1.5 * SD[0], MU[2] - 1.0 * SD[2]])  # a point well off the mean
N_FIT = N_DRAW = 20_000


def closed_form(mu: np.ndarray, sigma: np.ndarray, o: list[int], u: list[int], x_o: np.ndarray):
    """Textbook Gaussian conditional: mu_u + S_uo S_oo^-1 (x_o - mu_o), S_uu - S_uo S_oo^-1 S_ou."""
    s_oo, s_uo = sigma[np.ix_(o, o)], sigma[np.ix_(u, o)]
    k = s_uo @ np.linalg.inv(s_oo)
    return mu[u] + k @ (x_o - mu[o]), sigma[np.ix_(u, u)] - k @ s_uo.T


def gaussian_table(n: int = N_FIT, seed: int = 0) -> pd.DataFrame:
    return pd.DataFrame(np.random.default_rng(seed).multivariate_normal(MU, SIGMA, size=n), columns=NAMES)


def calibration_failures(draws: np.ndarray, mean: np.ndarray, cov: np.ndarray, n_fit: int, mahal2: float) -> list[str]:
    """Compare conditional draws with the true conditional; return the entries that are off.

    Two error sources, both O(1/sqrt(n)): Monte-Carlo error of n draws, and the fitted model's
    own estimation error from n_fit training rows. For the mean, the latter is the OLS prediction
    variance C_ii (1 + d^2) / n_fit at a point with squared Mahalanobis distance d^2 from the
    mean of the observed features. For a covariance entry both use the sample-covariance
    variance (C_ii C_jj + C_ij^2) / n. Tolerance: 4 standard errors (false alarm < 1e-4/entry).
    """
    n = len(draws)
    failures = []
    se_mean = np.sqrt(np.diag(cov) * (1.0 / n + (1.0 + mahal2) / n_fit))
    for i, (got, want, se) in enumerate(zip(draws.mean(axis=0), mean, se_mean)):
        if abs(got - want) > 4 * se:
            failures.append(f"mean[{i}] = {got:.4f}, closed form {want:.4f} (tolerance {4 * se:.4f})")
    emp = np.cov(draws, rowvar=False)
    var = np.diag(cov)
    se_cov = np.sqrt((np.outer(var, var) + cov**2) * (1.0 / n + 1.0 / n_fit))
    for i in range(len(cov)):
        for j in range(i, len(cov)):
            if abs(emp[i, j] - cov[i, j]) > 4 * se_cov[i, j]:
                failures.append(f"cov[{i},{j}] = {emp[i, j]:.4f}, closed form {cov[i, j]:.4f} "
                                f"(tolerance {4 * se_cov[i, j]:.4f})")
    return failures


@pytest.fixture(scope="module")
def gaussian_data() -> pd.DataFrame:
    return gaussian_table()


def _conditional_draws(model: Generator) -> np.ndarray:
    observed = dict(zip([NAMES[i] for i in OBS], X_O))
    out = model.condition(observed, n=N_DRAW, seed=11)
    assert (out[[NAMES[i] for i in OBS]].to_numpy() == X_O).all()
    return out[[NAMES[i] for i in UNOBS]].to_numpy()


MAHAL2 = float((X_O - MU[OBS]) @ np.linalg.solve(SIGMA[np.ix_(OBS, OBS)], X_O - MU[OBS]))


def test_gaussian_conditional_samples_match_the_closed_form(gaussian_data: pd.DataFrame) -> None:
    mean, cov = closed_form(MU, SIGMA, OBS, UNOBS, X_O)
    model = MultivariateGaussian().fit(gaussian_data)
    assert calibration_failures(_conditional_draws(model), mean, cov, N_FIT, MAHAL2) == []


def test_independent_marginals_fail_the_same_calibration_check(gaussian_data: pd.DataFrame) -> None:
    """Negative control: the check can fail. Independent draws keep the marginal mean/variance."""
    mean, cov = closed_form(MU, SIGMA, OBS, UNOBS, X_O)
    model = IndependentMarginals().fit(gaussian_data)
    failures = calibration_failures(_conditional_draws(model), mean, cov, N_FIT, MAHAL2)
    assert any(f.startswith("mean[0]") for f in failures), failures
    assert any(f.startswith("cov[0,0]") for f in failures), failures


def test_conditional_mean_cov_is_the_closed_form_in_raw_units(gaussian_data: pd.DataFrame) -> None:
    model = MultivariateGaussian().fit(gaussian_data)
    names, mean, cov = model.conditional_mean_cov({"x0": X_O[0], "x2": X_O[1]})
    assert names == ["x1", "x3"]
    want_mean, want_cov = closed_form(MU, SIGMA, OBS, UNOBS, X_O)
    se = np.sqrt(np.diag(want_cov) * (1.0 + MAHAL2) / N_FIT)
    assert np.all(np.abs(mean - want_mean) < 4 * se)
    var = np.diag(want_cov)
    assert np.all(np.abs(cov - want_cov) < 4 * np.sqrt((np.outer(var, var) + want_cov**2) / N_FIT))
    # and exactly the closed form of the model's own fitted parameters
    fitted = gaussian_data.to_numpy()
    mean_f, cov_f = closed_form(fitted.mean(axis=0), np.cov(fitted, rowvar=False), OBS, UNOBS, X_O)
    np.testing.assert_allclose(mean, mean_f, rtol=1e-5)
    np.testing.assert_allclose(cov, cov_f, rtol=1e-4)


def test_conditional_mean_cov_with_nothing_observed_is_the_marginal(gaussian_data: pd.DataFrame) -> None:
    model = MultivariateGaussian().fit(gaussian_data)
    names, mean, cov = model.conditional_mean_cov({})
    assert names == NAMES
    np.testing.assert_allclose(mean, gaussian_data.mean().to_numpy())
    np.testing.assert_allclose(cov, gaussian_data.cov().to_numpy(), rtol=1e-4)


# ------------------------------------------------------------ log density
def test_log_prob_unobserved_matches_scipy_row_by_row() -> None:
    data = gaussian_table(2000, seed=3)
    model = MultivariateGaussian().fit(data)
    table = gaussian_table(30, seed=4)
    rng = np.random.default_rng(5)
    mask = rng.random(table.shape) < 0.5
    mask[0] = True   # nothing left to score
    mask[1] = False  # everything scored from the joint
    got = model.log_prob_unobserved(table, mask)

    loc, scale = data.mean().to_numpy(), data.std().to_numpy()
    z = (table.to_numpy() - loc) / scale
    corr = np.cov((data.to_numpy() - loc) / scale, rowvar=False) + 1e-6 * np.eye(4)  # the model's ridge
    for i in range(len(table)):
        o, u = list(np.flatnonzero(mask[i])), list(np.flatnonzero(~mask[i]))
        if not u:
            assert got[i] == 0.0
            continue
        m, c = closed_form(np.zeros(4), corr, o, u, z[i, o]) if o else (np.zeros(len(u)), corr[np.ix_(u, u)])
        assert got[i] == pytest.approx(stats.multivariate_normal(m, c).logpdf(z[i, u]), rel=1e-9, abs=1e-9)


def test_log_prob_unobserved_accepts_a_dataframe_mask(mixed_table: pd.DataFrame) -> None:
    model = MultivariateGaussian().fit(mixed_table)
    mask = pd.DataFrame(False, index=range(5), columns=mixed_table.columns)
    mask["age"] = True
    lp = model.log_prob_unobserved(mixed_table.head(5), mask)
    assert lp.shape == (5,) and np.isfinite(lp).all()


# ------------------------------------------------------- structure each keeps
def test_independent_marginals_destroy_correlation_gaussian_keeps_it() -> None:
    rng = np.random.default_rng(2)
    xy = rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], size=5000)
    data = pd.DataFrame(xy, columns=["x", "y"])
    assert data.corr().iloc[0, 1] == pytest.approx(0.8, abs=0.02)
    indep = IndependentMarginals().fit(data).sample(5000, seed=1)
    gauss = MultivariateGaussian().fit(data).sample(5000, seed=1)
    # sd of a sample correlation near 0 is 1/sqrt(n) = 0.014; near 0.8 it is (1 - 0.64)/sqrt(n) = 0.005
    assert abs(indep.corr().iloc[0, 1]) < 4 / np.sqrt(5000)
    assert gauss.corr().iloc[0, 1] == pytest.approx(data.corr().iloc[0, 1], abs=0.03)


def test_independent_marginals_keep_each_marginal() -> None:
    data = make_mixed_table(3000, seed=5)
    out = IndependentMarginals().fit(data).sample(3000, seed=2)
    for col in ["age", "bmi", "sbp", "hr"]:
        assert stats.ks_2samp(data[col], out[col]).pvalue > 1e-3, col
        assert data[col].min() <= out[col].min() and out[col].max() <= data[col].max()
    assert out["female"].mean() == pytest.approx(data["female"].mean(), abs=0.04)
    freq = out["stage"].value_counts(normalize=True)
    for level, p in data["stage"].value_counts(normalize=True).items():
        assert freq[level] == pytest.approx(p, abs=0.04)


def test_independent_marginals_store_at_most_max_quantiles(mixed_table: pd.DataFrame, tmp_path: Path) -> None:
    model = IndependentMarginals(max_quantiles=51).fit(mixed_table)
    tensors, _ = model.get_state()
    assert tensors["quantiles_0"].shape == (51,)
    assert load_model(model.save(tmp_path / "m")).max_quantiles == 51


def test_gaussian_categorical_conditioning_moves_correlated_features(mixed_table: pd.DataFrame) -> None:
    """stage is cut from sbp's latent, so conditioning on it must move sbp; observed stage via one-hot."""
    model = MultivariateGaussian().fit(make_mixed_table(2000, seed=7))
    low = model.condition({"stage": "I"}, 2000, seed=1)
    high = model.condition({"stage": "III"}, 2000, seed=1)
    assert (low["stage"] == "I").all() and (high["stage"] == "III").all()
    assert high["sbp"].mean() - low["sbp"].mean() > 15.0  # about two thirds of 1.5 sd apart
    names, mean, _ = model.conditional_mean_cov({"stage": "III"})
    assert not any(n.startswith("stage=") for n in names)
    assert mean[names.index("sbp")] > 130.0
    names, _, _ = model.conditional_mean_cov({"age": 60.0})
    assert names[-3:] == ["stage=I", "stage=II", "stage=III"]


def test_gaussian_pairwise_complete_estimate_is_not_shrunk_by_missing_cells() -> None:
    """The documented choice: pairwise-complete covariance, not mean filling (which gives ~0.8 * 0.7)."""
    rng = np.random.default_rng(8)
    xy = rng.multivariate_normal([0, 0], [[1, 0.8], [0.8, 1]], size=4000)
    data = pd.DataFrame(xy, columns=["x", "y"])
    holes = rng.random(data.shape) < 0.3
    holes[holes.all(axis=1), 0] = False
    model = MultivariateGaussian().fit(data.mask(holes))
    assert model.cov_[0, 1] == pytest.approx(0.8, abs=0.03)
    assert model.cov_[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_gaussian_conditioning_solves_once_per_observed_pattern(mixed_table: pd.DataFrame, monkeypatch) -> None:
    model = MultivariateGaussian().fit(mixed_table)
    table = mixed_table.head(100).copy()
    table.loc[0:39, ["bmi", "stage"]] = np.nan
    table.loc[40:79, ["age", "female", "hr"]] = np.nan
    table.loc[80:99, :] = np.nan
    calls: list[int] = []
    real = MultivariateGaussian._conditional

    def counting(self, o, u):
        calls.append(len(o))
        return real(self, o, u)

    monkeypatch.setattr(MultivariateGaussian, "_conditional", counting)
    start = time.perf_counter()
    out = model.impute(table, seed=0)
    assert time.perf_counter() - start < 1.0
    assert len(calls) == 3
    assert out.notna().all().all()


def test_gaussian_same_seed_same_rows_different_seed_different(mixed_table: pd.DataFrame) -> None:
    model = MultivariateGaussian().fit(mixed_table)
    pd.testing.assert_frame_equal(model.sample(20, seed=4), model.sample(20, seed=4))
    assert not model.sample(20, seed=4).equals(model.sample(20, seed=5))


def test_ridge_is_a_saved_hyperparameter(mixed_table: pd.DataFrame, tmp_path: Path) -> None:
    model = MultivariateGaussian(ridge=1e-3).fit(mixed_table)
    loaded = load_model(model.save(tmp_path / "g"))
    assert isinstance(loaded, MultivariateGaussian) and loaded.ridge == 1e-3
    np.testing.assert_array_equal(loaded.cov_, model.cov_)


@pytest.mark.parametrize("cls", [IndependentMarginals, MultivariateGaussian])
def test_a_column_with_no_observed_value_is_named(cls: type[Generator], mixed_table: pd.DataFrame) -> None:
    data = mixed_table.copy()
    data["hr"] = np.nan
    schema = TableSchema.infer(mixed_table)
    with pytest.raises(DataError, match="'hr'"):
        cls().fit(data, schema)
