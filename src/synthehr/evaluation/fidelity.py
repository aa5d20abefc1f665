"""Fidelity: how closely synthetic rows resemble real rows, feature by feature and jointly.

Units.  The InterGenEHR metrics (``intergenehr_mean_mmd``, ``rmspe``, ``mape``) are computed on raw
feature values, exactly as in the paper.  Every other metric is computed in standardized units
z = (x - mean_ref) / std_ref, where mean/std come from a reference table (normally the training
table, ``standardize_with=train``; default: the real table itself).  Missing values are skipped per
feature; the multivariate kernel MMD fills them with 0 (the reference mean) after standardizing.

Inputs are pandas DataFrames sharing numeric columns (the real table's numeric columns are used) or
2-D numpy arrays with the same number of columns.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist, pdist
from scipy.stats import ks_2samp, wasserstein_distance

from synthehr.evaluation._common import Standardizer, TableLike, align, r2_identity, subsample


# --------------------------------------------------------------------------- InterGenEHR (raw units)
def mean_differences(real: TableLike, synthetic: TableLike) -> pd.Series:
    """Per feature k: mu_syn_k - mu_real_k in raw units (means skip missing values)."""
    r, s = align(real, synthetic)
    return s.mean() - r.mean()


def intergenehr_mean_mmd(real: TableLike, synthetic: TableLike) -> float:
    """InterGenEHR "MMD" (Sec. IV-A): max_k |mu_syn_k - mu_real_k|, raw units.

    Note: despite its name this is the largest absolute difference of feature means, not a kernel MMD.
    """
    return float(np.max(np.abs(mean_differences(real, synthetic).to_numpy())))


def _relative_mean_errors(real: TableLike, synthetic: TableLike, eps: float) -> tuple[np.ndarray, list[str]]:
    """(mu_syn - mu_real) / mu_real for features with |mu_real| >= eps, and the names of the others."""
    r, s = align(real, synthetic)
    mu_r, mu_s = r.mean(), s.mean()
    keep = mu_r.abs() >= eps
    excluded = [str(c) for c in mu_r.index[~keep]]
    return ((mu_s[keep] - mu_r[keep]) / mu_r[keep]).to_numpy(), excluded


def _percentage_errors(real: TableLike, synthetic: TableLike, eps: float) -> tuple[float, float, list[str]]:
    rel, excluded = _relative_mean_errors(real, synthetic, eps)
    if rel.size == 0:
        return float("nan"), float("nan"), excluded
    return 100.0 * float(np.sqrt(np.mean(rel**2))), 100.0 * float(np.mean(np.abs(rel))), excluded


def _warn_excluded(excluded: list[str], eps: float) -> None:
    if excluded:
        msg = f"features with |mean_real| < {eps:g} excluded from RMSPE/MAPE: {excluded}"
        warnings.warn(msg, RuntimeWarning, stacklevel=3)


def rmspe(real: TableLike, synthetic: TableLike, eps: float = 1e-8) -> float:
    """InterGenEHR RMSPE (Sec. IV-A): 100 * sqrt(mean_k ((mu_syn_k - mu_real_k) / mu_real_k)^2), raw units.

    Features with |mu_real_k| < eps (or no observed values) are excluded, with a RuntimeWarning
    naming them; `fidelity_summary` lists them under ``intergenehr_excluded``.
    """
    value, _, excluded = _percentage_errors(real, synthetic, eps)
    _warn_excluded(excluded, eps)
    return value


def mape(real: TableLike, synthetic: TableLike, eps: float = 1e-8) -> float:
    """InterGenEHR MAPE (Sec. IV-A): 100 * mean_k |(mu_syn_k - mu_real_k) / mu_real_k|, raw units.

    Features with |mu_real_k| < eps are excluded and named in a RuntimeWarning (as in `rmspe`).
    """
    _, value, excluded = _percentage_errors(real, synthetic, eps)
    _warn_excluded(excluded, eps)
    return value


# --------------------------------------------------------------------------- FLEXGEN-EHR
def dimension_wise_r2(real: TableLike, synthetic: TableLike, standardize_with: TableLike | None = None) -> float:
    """FLEXGEN-EHR dimension-wise probability R2 (Sec. 4 / App. B.3).

    Each feature is min-max scaled to [0, 1] with the reference table's min and max (default: real),
    so for a 0/1 feature the per-dimension mean is P(x = 1) and for a continuous one its scaled mean.
    The R2 is the coefficient of determination of the synthetic per-dimension means against the real
    ones around the identity line: 1 - sum_k (p_syn_k - p_real_k)^2 / sum_k (p_real_k - mean(p_real))^2.
    Most informative on binary / discretised features (FLEXGEN uses FIDDLE's binary encoding); for
    symmetric continuous features the scaled means cluster near 0.5 and the R2 becomes noisy.
    """
    r, s, ref = align(real, synthetic, real if standardize_with is None else standardize_with)
    lo, span = ref.min(), (ref.max() - ref.min())
    span = span.where(span > 0, 1.0)
    p_real, p_syn = ((r - lo) / span).mean(), ((s - lo) / span).mean()
    ok = p_real.notna() & p_syn.notna()
    return r2_identity(p_real[ok], p_syn[ok])


def gaussian_kernel_mmd(
    real: TableLike,
    synthetic: TableLike,
    standardize_with: TableLike | None = None,
    max_rows: int | None = 2000,
    seed: int = 0,
    unbiased: bool = True,
) -> float:
    """Squared MMD with the Gaussian kernel k(x, y) = exp(-||x - y||^2 / (2 sigma^2)) (FLEXGEN-EHR eq. 12).

    Estimator: by default the unbiased U-statistic
    MMD^2 = mean_{i!=j} k(x_i, x_j) + mean_{i!=j} k(y_i, y_j) - 2 mean_{i,j} k(x_i, y_j),
    which is ~0 (and may be slightly negative) for two samples of one distribution; ``unbiased=False``
    gives the biased V-statistic (diagonals included, always >= 0).  Rows are standardized with the
    reference mean/std (missing -> 0) and at most `max_rows` rows per side are drawn with `seed`.
    Bandwidth: median heuristic, sigma = median pairwise Euclidean distance of the pooled sample.
    """
    r, s, ref = align(real, synthetic, real if standardize_with is None else standardize_with)
    scaler = Standardizer.fit(ref)
    x = scaler.transform(subsample(r, max_rows, seed), fill_missing=True)
    y = scaler.transform(subsample(s, max_rows, seed + 1), fill_missing=True)
    sigma = float(np.median(pdist(np.vstack([x, y])))) or 1.0

    def kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-cdist(a, b, "sqeuclidean") / (2.0 * sigma**2))

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    if unbiased:
        m, n = len(x), len(y)
        within = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    else:
        within = kxx.mean() + kyy.mean()
    return float(within - 2.0 * kxy.mean())


# --------------------------------------------------------------------------- marginals and correlations
def _per_column(r: pd.DataFrame, s: pd.DataFrame, fn: Callable[[np.ndarray, np.ndarray], float]) -> pd.Series:
    """fn(real_values, synthetic_values) per column on non-missing values (NaN if a side is empty)."""
    out = {}
    for c in r.columns:
        a, b = r[c].dropna().to_numpy(), s[c].dropna().to_numpy()
        out[c] = fn(a, b) if a.size and b.size else float("nan")
    return pd.Series(out, dtype=float)


def ks_statistics(real: TableLike, synthetic: TableLike) -> pd.Series:
    """Per feature: two-sample Kolmogorov-Smirnov statistic sup_x |F_real(x) - F_syn(x)| (scale-free)."""
    r, s = align(real, synthetic)
    return _per_column(r, s, lambda a, b: float(ks_2samp(a, b).statistic))


def wasserstein_distances(
    real: TableLike, synthetic: TableLike, standardize_with: TableLike | None = None
) -> pd.Series:
    """Per feature: 1-D Wasserstein-1 distance (integral |F_real - F_syn|), in reference-standardized units."""
    r, s, ref = align(real, synthetic, real if standardize_with is None else standardize_with)
    scaler = Standardizer.fit(ref)
    zr = pd.DataFrame(scaler.transform(r), columns=r.columns)
    zs = pd.DataFrame(scaler.transform(s), columns=s.columns)
    return _per_column(zr, zs, lambda a, b: float(wasserstein_distance(a, b)))


def per_feature_fidelity(
    real: TableLike, synthetic: TableLike, standardize_with: TableLike | None = None
) -> pd.DataFrame:
    """One row per feature: mean_real, mean_synthetic (raw), std_mean_bias = (mu_syn - mu_real) / std_ref,
    ks, wasserstein (standardized units)."""
    r, s, ref = align(real, synthetic, real if standardize_with is None else standardize_with)
    scaler = Standardizer.fit(ref)
    return pd.DataFrame(
        {
            "mean_real": r.mean(),
            "mean_synthetic": s.mean(),
            "std_mean_bias": (s.mean() - r.mean()) / scaler.std,
            "ks": ks_statistics(r, s),
            "wasserstein": wasserstein_distances(r, s, ref),
        }
    )


def correlation_difference(real: TableLike, synthetic: TableLike) -> dict[str, float]:
    """Difference of Pearson correlation matrices D = C_syn - C_real (pairwise-complete rows).

    ``mean_abs``: mean |D_ij| over the off-diagonal pairs i < j; ``frobenius``: ||D||_F over the full
    matrix (each pair counted twice).  An undefined correlation (constant column) counts as 0.
    """
    r, s = align(real, synthetic)
    d = np.nan_to_num(s.corr().to_numpy()) - np.nan_to_num(r.corr().to_numpy())
    iu = np.triu_indices(d.shape[0], k=1)
    return {
        "mean_abs": float(np.mean(np.abs(d[iu]))) if iu[0].size else float("nan"),
        "frobenius": float(np.linalg.norm(d, "fro")),
    }


# --------------------------------------------------------------------------- summary
def fidelity_summary(
    real: TableLike,
    synthetic: TableLike,
    standardize_with: TableLike | None = None,
    seed: int = 0,
    max_rows: int | None = 2000,
    eps: float = 1e-8,
) -> dict[str, Any]:
    """Flat dict of every fidelity metric above (see the module docstring for units).

    Keys: n_real, n_synthetic, n_features, intergenehr_mmd / _rmspe / _mape (raw units),
    intergenehr_excluded (features left out of RMSPE/MAPE), dimension_wise_r2, gaussian_mmd2,
    ks_mean, ks_max, wasserstein_mean, wasserstein_max, std_mean_bias_mean_abs, std_mean_bias_max_abs,
    corr_mean_abs_diff, corr_frobenius_diff.
    """
    r, s, ref = align(real, synthetic, real if standardize_with is None else standardize_with)
    rmspe_value, mape_value, excluded = _percentage_errors(r, s, eps)
    per = per_feature_fidelity(r, s, ref)
    corr = correlation_difference(r, s)
    bias = per["std_mean_bias"].abs()
    return {
        "n_real": len(r),
        "n_synthetic": len(s),
        "n_features": r.shape[1],
        "intergenehr_mmd": intergenehr_mean_mmd(r, s),
        "intergenehr_rmspe": rmspe_value,
        "intergenehr_mape": mape_value,
        "intergenehr_excluded": excluded,
        "dimension_wise_r2": dimension_wise_r2(r, s, ref),
        "gaussian_mmd2": gaussian_kernel_mmd(r, s, ref, max_rows=max_rows, seed=seed),
        "ks_mean": float(per["ks"].mean()),
        "ks_max": float(per["ks"].max()),
        "wasserstein_mean": float(per["wasserstein"].mean()),
        "wasserstein_max": float(per["wasserstein"].max()),
        "std_mean_bias_mean_abs": float(bias.mean()),
        "std_mean_bias_max_abs": float(bias.max()),
        "corr_mean_abs_diff": corr["mean_abs"],
        "corr_frobenius_diff": corr["frobenius"],
    }
