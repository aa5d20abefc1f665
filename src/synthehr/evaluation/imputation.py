"""Imputation quality (InterGenEHR Sec. IV-C): hide a random 50% of the cells, let the model fill
them, score the fill.  ``mask`` is boolean, True = hidden (to be imputed).  Scores use only hidden
cells whose true value is known.  Errors are in standardized units: each feature is divided by a
reference standard deviation (the truth's own, unless `reference` - normally the training table -
is given), so features on different scales weigh equally.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from synthehr.errors import DataError
from synthehr.evaluation._common import TableLike, to_pandas


def random_mask(shape: tuple[int, int], ratio: float = 0.5, seed: int = 0) -> np.ndarray:
    """Boolean (rows, features) mask, True = hidden, each cell hidden independently with P = ratio.

    Repair step so every row is a valid conditioning problem: a row with no hidden cell gets one
    random cell hidden and a row with every cell hidden gets one random cell revealed.  Hence the
    realised ratio can differ slightly from `ratio`; needs at least 2 features.
    """
    n, d = shape
    if d < 2:
        raise ValueError("random_mask needs at least 2 features so each row keeps one observed and one hidden cell")
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    rng = np.random.default_rng(seed)
    mask = rng.random((n, d)) < ratio
    pick = rng.integers(0, d, size=n)
    rows = np.arange(n)
    none_hidden, all_hidden = ~mask.any(axis=1), mask.all(axis=1)
    mask[rows[none_hidden], pick[none_hidden]] = True
    mask[rows[all_hidden], pick[all_hidden]] = False
    return mask


def _prepare(
    truth: TableLike, mask: np.ndarray, reference: TableLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth as an array, the scored-cell mask (hidden and known) and the per-feature scale."""
    t = to_pandas(truth).to_numpy(dtype=float)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != t.shape:
        raise DataError(f"mask shape {mask.shape} does not match the truth table {t.shape}")
    ref = t if reference is None else to_pandas(reference).to_numpy(dtype=float)
    scale = np.nanstd(ref, axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    return t, mask & np.isfinite(t), scale


def _samples_array(samples: np.ndarray | list[pd.DataFrame], shape: tuple[int, int]) -> np.ndarray:
    if isinstance(samples, list):
        draws = np.stack([to_pandas(s).to_numpy(dtype=float) for s in samples])
    else:
        draws = np.asarray(samples, dtype=float)
    if draws.ndim != 3 or draws.shape[1:] != shape:
        raise DataError(f"samples must be (n_draws, {shape[0]}, {shape[1]}), got {draws.shape}")
    return draws


def imputation_mse(truth: TableLike, imputed: TableLike, mask: np.ndarray, reference: TableLike | None = None) -> float:
    """MSE = mean over scored cells of ((imputed - truth) / std_ref_feature)^2 (standardized units)."""
    t, scored, scale = _prepare(truth, mask, reference)
    err = (to_pandas(imputed).to_numpy(dtype=float) - t) / scale
    return float(np.mean(err[scored] ** 2))


def gaussian_nll(
    truth: TableLike,
    samples: np.ndarray | list[pd.DataFrame],
    mask: np.ndarray,
    reference: TableLike | None = None,
    min_std: float = 1e-3,
) -> float:
    """Mean negative log-likelihood of the truth under a per-cell Gaussian fitted to imputation draws.

    A sampling-only imputer has no density, so for each hidden cell the `n_draws` (>= 2) imputations
    give mu = mean and sigma = std (ddof=1, floored at `min_std`), both in standardized units, and
    NLL = 0.5 * log(2 pi sigma^2) + (z_true - mu)^2 / (2 sigma^2), averaged over the scored cells.
    `samples` has shape (n_draws, rows, features) (or is a list of imputed tables).
    """
    t, scored, scale = _prepare(truth, mask, reference)
    draws = _samples_array(samples, t.shape)
    if draws.shape[0] < 2:
        raise DataError("gaussian_nll needs at least 2 imputation draws per cell")
    z = draws / scale
    mu, sigma = z.mean(axis=0), np.maximum(z.std(axis=0, ddof=1), min_std)
    nll = 0.5 * np.log(2 * np.pi * sigma**2) + (t / scale - mu) ** 2 / (2 * sigma**2)
    return float(np.mean(nll[scored]))


def interval_coverage(
    truth: TableLike, samples: np.ndarray | list[pd.DataFrame], mask: np.ndarray, level: float = 0.9
) -> float:
    """Share of scored cells whose truth lies in the central `level` interval of the draws, i.e.
    between their (1 - level)/2 and (1 + level)/2 empirical quantiles (ideal value: `level`)."""
    t, scored, _ = _prepare(truth, mask, None)
    draws = _samples_array(samples, t.shape)
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return float(np.mean(((t >= lo) & (t <= hi))[scored]))
