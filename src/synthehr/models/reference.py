"""Reference generators: simple, exact baselines every learned model is measured against.

* `IndependentMarginals` keeps each column's distribution and nothing else. Any learned model
  that cannot beat it on joint structure has learned nothing about relations between features.
* `MultivariateGaussian` keeps means and linear correlations and conditions in closed form, so
  its conditionals are exact for Gaussian data: the calibration yardstick for later models.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from synthehr.errors import ConditioningError, DataError, ModelFileError
from synthehr.models.base import Generator, register
from synthehr.models.schema import ColumnSpec

__all__ = ["IndependentMarginals", "MultivariateGaussian"]


# ------------------------------------------------------------------ shared helpers
def _category_index(spec: ColumnSpec) -> dict[str, int]:
    """Categories are compared as strings (as TableSchema.validate does), so 2 and "2" are one level."""
    return {str(c): i for i, c in enumerate(spec.categories)}


def _numeric_column(table: pd.DataFrame, spec: ColumnSpec) -> np.ndarray:
    """Column as float codes: numbers for continuous/binary, level index for categorical; NaN = missing."""
    s = table[spec.name]
    if spec.kind == "categorical":
        index = _category_index(spec)
        out = np.full(len(s), np.nan)
        present = s.notna().to_numpy()
        out[present] = [index[str(v)] for v in s[present]]
        return out
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)


def _levels_column(spec: ColumnSpec, codes: np.ndarray) -> pd.Series:
    """Level indices → the schema's own category values (ints stay ints, strings stay strings)."""
    levels = np.empty(len(spec.categories), dtype=object)
    levels[:] = list(spec.categories)
    return pd.Series(levels[codes]).infer_objects()


def _no_observed_values(spec: ColumnSpec) -> DataError:
    return DataError("the training table has no observed value in this column; cannot estimate it",
                     column=spec.name)


# ------------------------------------------------------------- independent marginals
@register
class IndependentMarginals(Generator):
    """Each column drawn on its own from its training marginal.

    Continuous columns use the empirical quantile function (linear interpolation between at
    most `max_quantiles` stored quantiles: the sorted training values when there are fewer).
    Binary columns are Bernoulli(p), categorical columns draw levels by training frequency.
    Missing training cells are ignored. Because columns are independent, "sample the unobserved
    columns from their marginals" is the exact conditional distribution.
    """

    model_type = "independent_marginals"

    def __init__(self, max_quantiles: int = 1001):
        if int(max_quantiles) < 2:
            raise ValueError(f"max_quantiles must be at least 2, got {max_quantiles!r}")
        super().__init__(max_quantiles=int(max_quantiles))
        self.max_quantiles = int(max_quantiles)
        self.tensors_: dict[str, np.ndarray] = {}

    # tensor names use the column's position, so any column name is safe inside safetensors
    @staticmethod
    def _key(i: int, spec: ColumnSpec) -> str:
        return {"continuous": "quantiles", "binary": "p_one", "categorical": "probs"}[spec.kind] + f"_{i}"

    def _fit(self, data: pd.DataFrame) -> None:
        tensors: dict[str, np.ndarray] = {}
        for i, spec in enumerate(self.schema_.columns):
            x = _numeric_column(data, spec)
            x = x[~np.isnan(x)]
            if len(x) == 0:
                raise _no_observed_values(spec)
            if spec.kind == "continuous":
                k = min(len(x), self.max_quantiles)
                tensors[self._key(i, spec)] = np.quantile(x, np.linspace(0.0, 1.0, k))
            elif spec.kind == "binary":
                tensors[self._key(i, spec)] = np.array([x.mean()])
            else:
                counts = np.bincount(x.astype(int), minlength=len(spec.categories)).astype(float)
                tensors[self._key(i, spec)] = counts / counts.sum()
        self.tensors_ = tensors

    def _sample(self, n: int, rng: np.random.Generator, seed: int) -> pd.DataFrame:
        cols: dict[str, Any] = {}
        for i, spec in enumerate(self.schema_.columns):
            t = self.tensors_[self._key(i, spec)]
            if spec.kind == "continuous":
                cols[spec.name] = np.interp(rng.random(n), np.linspace(0.0, 1.0, len(t)), t)
            elif spec.kind == "binary":
                cols[spec.name] = (rng.random(n) < t[0]).astype(np.int64)
            else:
                cols[spec.name] = _levels_column(spec, rng.choice(len(t), size=n, p=t / t.sum()))
        return pd.DataFrame(cols, columns=self.schema_.names)

    def _condition_rows(self, table: pd.DataFrame, observed: np.ndarray, rng: np.random.Generator,
                        seed: int) -> pd.DataFrame:
        # Independence: the conditional of the unobserved cells is their marginal; the base
        # class puts the observed cells back.
        return self._sample(len(table), rng, seed)

    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        return dict(self.tensors_), {}

    def set_state(self, tensors: dict[str, np.ndarray], state: dict) -> None:
        expected = {self._key(i, s) for i, s in enumerate(self.schema_.columns)}
        if set(tensors) != expected:
            raise ModelFileError(f"saved state holds {sorted(tensors)}, expected {sorted(expected)}")
        self.tensors_ = {k: np.asarray(v, dtype=float) for k, v in tensors.items()}


# ------------------------------------------------------------- multivariate Gaussian
@register
class MultivariateGaussian(Generator):
    """One Gaussian over standardized encoded columns; exact closed-form conditioning.

    Encoding: continuous as is, binary as 0/1, categorical as a one-hot block; every encoded
    dimension is then standardized by its observed mean and standard deviation. Decoding:
    binary = 1 when the raw value exceeds 0.5, categorical = argmax of its raw one-hot block.

    Missing training cells: the covariance is estimated from *pairwise-complete* observations
    (each entry uses the rows where both dimensions are present; unbiased under MCAR, unlike mean
    filling which shrinks variances), then projected to the nearest positive semi-definite
    matrix by clipping negative eigenvalues, plus `ridge` on the diagonal.
    """

    model_type = "gaussian"

    def __init__(self, ridge: float = 1e-6):
        if not float(ridge) >= 0:
            raise ValueError(f"ridge must be non-negative, got {ridge!r}")
        super().__init__(ridge=float(ridge))
        self.ridge = float(ridge)
        self.loc_: np.ndarray | None = None    # raw mean of each encoded dimension
        self.scale_: np.ndarray | None = None  # raw std of each encoded dimension
        self.cov_: np.ndarray | None = None    # covariance of the standardized dimensions (mean 0)

    # -------------------------------------------------------------- encoding
    def _blocks(self) -> list[tuple[ColumnSpec, slice]]:
        """Encoded dimensions of each column, in schema order."""
        out, start = [], 0
        for spec in self.schema_.columns:
            width = len(spec.categories) if spec.kind == "categorical" else 1
            out.append((spec, slice(start, start + width)))
            start += width
        return out

    def _width(self) -> int:
        return sum(sl.stop - sl.start for _, sl in self._blocks())

    def encoded_names(self) -> list[str]:
        """Names of the encoded dimensions; a one-hot dimension is called "column=level"."""
        names: list[str] = []
        for spec, _ in self._blocks():
            if spec.kind == "categorical":
                names += [f"{spec.name}={c}" for c in spec.categories]
            else:
                names.append(spec.name)
        return names

    def _encode_raw(self, table: pd.DataFrame) -> np.ndarray:
        """Raw encoded matrix (n, d); NaN where the cell is missing (a whole one-hot block)."""
        blocks = self._blocks()
        x = np.full((len(table), self._width()), np.nan)
        for spec, sl in blocks:
            codes = _numeric_column(table, spec)
            if spec.kind == "categorical":
                present = ~np.isnan(codes)
                onehot = np.zeros((int(present.sum()), sl.stop - sl.start))
                onehot[np.arange(len(onehot)), codes[present].astype(int)] = 1.0
                x[present, sl] = onehot
            else:
                x[:, sl.start] = codes
        return x

    def _expand_mask(self, observed: np.ndarray) -> np.ndarray:
        """Per-column mask (n, n_columns) → per-encoded-dimension mask (n, d)."""
        widths = [sl.stop - sl.start for _, sl in self._blocks()]
        return np.repeat(np.asarray(observed, dtype=bool), widths, axis=1)

    def _decode(self, z: np.ndarray) -> pd.DataFrame:
        x = z * self.scale_ + self.loc_
        cols: dict[str, Any] = {}
        for spec, sl in self._blocks():
            if spec.kind == "continuous":
                cols[spec.name] = x[:, sl.start]
            elif spec.kind == "binary":
                cols[spec.name] = (x[:, sl.start] > 0.5).astype(np.int64)
            else:
                cols[spec.name] = _levels_column(spec, np.argmax(x[:, sl], axis=1))
        return pd.DataFrame(cols, columns=self.schema_.names)

    # ------------------------------------------------------------------ fit
    def _fit(self, data: pd.DataFrame) -> None:
        x = self._encode_raw(data)
        present = ~np.isnan(x)
        counts = present.sum(axis=0)
        for (spec, sl) in self._blocks():
            if counts[sl.start] == 0:
                raise _no_observed_values(spec)
        loc = np.nanmean(x, axis=0)
        centred = np.where(present, x - loc, 0.0)
        scale = np.sqrt((centred**2).sum(axis=0) / np.maximum(counts - 1, 1))
        scale = np.where(scale > 1e-12, scale, 1.0)  # constant dimension: keep it, unscaled
        z = centred / scale
        m = present.astype(float)
        pair_n = m.T @ m
        cov = (z.T @ z) / np.maximum(pair_n - 1.0, 1.0)
        cov[pair_n < 2] = 0.0
        cov = (cov + cov.T) / 2.0
        vals, vecs = np.linalg.eigh(cov)
        cov = (vecs * np.clip(vals, 0.0, None)) @ vecs.T
        cov = (cov + cov.T) / 2.0 + self.ridge * np.eye(len(cov))
        self.loc_, self.scale_, self.cov_ = loc, scale, cov

    # --------------------------------------------------------- Gaussian algebra
    def _conditional(self, o: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """K = S_uo S_oo^-1 and C = S_uu - K S_ou for index arrays o (observed), u (unobserved)."""
        s = self.cov_
        if len(o) == 0:
            return np.zeros((len(u), 0)), s[np.ix_(u, u)].copy()
        s_oo, s_uo = s[np.ix_(o, o)], s[np.ix_(u, o)]
        k = np.linalg.solve(s_oo, s_uo.T).T  # S_oo is symmetric positive definite (ridge)
        c = s[np.ix_(u, u)] - k @ s_uo.T
        return k, (c + c.T) / 2.0

    @staticmethod
    def _cholesky(c: np.ndarray) -> np.ndarray:
        """Cholesky with growing jitter: a conditional covariance can be singular to rounding."""
        jitter = 0.0
        for _ in range(8):
            try:
                return np.linalg.cholesky(c + jitter * np.eye(len(c)))
            except np.linalg.LinAlgError:
                jitter = max(jitter * 10.0, 1e-10)
        vals, vecs = np.linalg.eigh(c)
        return vecs * np.sqrt(np.clip(vals, 0.0, None))

    @staticmethod
    def _patterns(mask: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(pattern, row indices) for each distinct row of a boolean mask, in a fixed order."""
        if len(mask) == 0:
            return []
        uniq, inverse = np.unique(mask, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        return [(uniq[g], np.flatnonzero(inverse == g)) for g in range(len(uniq))]

    # ------------------------------------------------------------ generation
    def _sample(self, n: int, rng: np.random.Generator, seed: int) -> pd.DataFrame:
        chol = self._cholesky(self.cov_)
        z = rng.standard_normal((n, len(self.cov_))) @ chol.T
        return self._decode(z)

    def _condition_rows(self, table: pd.DataFrame, observed: np.ndarray, rng: np.random.Generator,
                        seed: int) -> pd.DataFrame:
        """Rows sharing one observed pattern share one solve and one Cholesky factor."""
        z = (self._encode_raw(table) - self.loc_) / self.scale_
        emask = self._expand_mask(observed) & ~np.isnan(z)
        for pattern, rows in self._patterns(emask):
            o, u = np.flatnonzero(pattern), np.flatnonzero(~pattern)
            if len(u) == 0:
                continue
            k, c = self._conditional(o, u)
            mean = z[np.ix_(rows, o)] @ k.T  # standardized mean is 0
            eps = rng.standard_normal((len(rows), len(u)))
            z[np.ix_(rows, u)] = mean + eps @ self._cholesky(c).T
        return self._decode(z)

    # ------------------------------------------------------- exact quantities
    def conditional_mean_cov(self, observed: Mapping[str, Any]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Exact conditional mean and covariance of the unobserved encoded dimensions, in raw units.

        Returns (names_u, mean_u, cov_u). A categorical column contributes its one-hot
        dimensions ("column=level"); an observed categorical value conditions via its one-hot.
        """
        self._check_fitted()
        observed = {k: v for k, v in dict(observed).items() if not pd.isna(v)}
        self._check_observed_names(observed.keys())
        row = pd.DataFrame([{name: observed.get(name, np.nan) for name in self.schema_.names}],
                           columns=self.schema_.names)
        self.schema_.validate(row, where="observed values")
        z = ((self._encode_raw(row) - self.loc_) / self.scale_)[0]
        present = ~np.isnan(z)
        o, u = np.flatnonzero(present), np.flatnonzero(~present)
        k, c = self._conditional(o, u)
        mean_z = k @ z[o]
        s_u = self.scale_[u]
        names = self.encoded_names()
        return [names[i] for i in u], self.loc_[u] + s_u * mean_z, c * np.outer(s_u, s_u)

    def log_prob_unobserved(self, table: pd.DataFrame, observed_mask: np.ndarray | pd.DataFrame) -> np.ndarray:
        """Per-row Gaussian log density of the unobserved continuous cells given the observed cells.

        Standardized units (no Jacobian of the scaling), so values are comparable across columns
        and with other models' NLL in the same units. `observed_mask` (n, n_columns, schema order
        or a DataFrame with the schema's columns) marks the cells conditioned on; the other
        continuous cells that hold a value are scored jointly, and unobserved binary/categorical
        cells are marginalized out. A row with no scored cell gets 0.0 (log density of nothing).
        """
        table, observed_mask = self._scored_inputs(table, observed_mask)
        z = (self._encode_raw(table) - self.loc_) / self.scale_
        present = ~np.isnan(z)
        emask = self._expand_mask(observed_mask)
        o_mask = emask & present
        continuous = np.zeros(z.shape[1], dtype=bool)
        for spec, sl in self._blocks():
            continuous[sl] = spec.kind == "continuous"
        t_mask = ~emask & present & continuous
        out = np.zeros(len(table))
        for pattern, rows in self._patterns(np.hstack([o_mask, t_mask])):
            o, t = np.flatnonzero(pattern[: z.shape[1]]), np.flatnonzero(pattern[z.shape[1]:])
            if len(t) == 0:
                continue
            k, c = self._conditional(o, t)
            resid = z[np.ix_(rows, t)] - z[np.ix_(rows, o)] @ k.T
            chol = np.linalg.cholesky(c)
            sol = np.linalg.solve(chol, resid.T)  # (t, rows)
            logdet = 2.0 * np.log(np.diag(chol)).sum()
            out[rows] = -0.5 * ((sol**2).sum(axis=0) + logdet + len(t) * np.log(2.0 * np.pi))
        return out

    # ------------------------------------------------------------------ state
    def get_state(self) -> tuple[dict[str, np.ndarray], dict]:
        return {"loc": self.loc_, "scale": self.scale_, "cov": self.cov_}, {}

    def set_state(self, tensors: dict[str, np.ndarray], state: dict) -> None:
        d = self._width()
        for key, shape in (("loc", (d,)), ("scale", (d,)), ("cov", (d, d))):
            if key not in tensors or tuple(tensors[key].shape) != shape:
                raise ModelFileError(f"saved state: tensor {key!r} missing or not of shape {shape}")
        self.loc_ = np.asarray(tensors["loc"], dtype=float)
        self.scale_ = np.asarray(tensors["scale"], dtype=float)
        self.cov_ = np.asarray(tensors["cov"], dtype=float)
