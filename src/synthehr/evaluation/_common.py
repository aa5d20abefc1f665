"""Helpers shared by the evaluation modules: table alignment, standardization, R2, flattening."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from synthehr.errors import DataError

TableLike = Any  # pandas DataFrame, polars DataFrame or 2-D numpy array


def to_pandas(table: TableLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A pandas DataFrame from pandas, polars (via ``to_pandas``) or a 2-D array (columns x0, x1, ...)."""
    if isinstance(table, pd.DataFrame):
        return table
    if hasattr(table, "to_pandas"):
        return table.to_pandas()
    arr = np.asarray(table, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise DataError(f"expected a table or a 2-D array, got an array of shape {arr.shape}")
    return pd.DataFrame(arr, columns=list(columns) if columns is not None else [f"x{i}" for i in range(arr.shape[1])])


def numeric_columns(df: pd.DataFrame) -> list[str]:
    """Columns holding numbers or booleans (booleans count as 0/1 features)."""
    return [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])]


def align(real: TableLike, *others: TableLike, columns: Sequence[str] | None = None) -> list[pd.DataFrame]:
    """Float copies of `real` and `others` restricted to `columns` (default: real's numeric columns).

    Raises DataError naming the first column a table lacks.
    """
    first = to_pandas(real)
    frames = [first] + [to_pandas(o, columns=first.columns) for o in others]
    cols = list(columns) if columns is not None else numeric_columns(frames[0])
    if not cols:
        raise DataError("no numeric feature columns to compare")
    for i, df in enumerate(frames):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise DataError(f"table #{i} lacks feature column(s) {missing}", column=missing[0])
    return [df[cols].astype(float) for df in frames]


@dataclass(frozen=True)
class Standardizer:
    """z = (x - mean) / std with mean and std of a reference (training) table; std 0 or NaN -> 1."""

    mean: pd.Series
    std: pd.Series

    @classmethod
    def fit(cls, reference: pd.DataFrame) -> "Standardizer":
        std = reference.std(ddof=0)
        return cls(reference.mean().fillna(0.0), std.where(std > 0, 1.0).fillna(1.0))

    def transform(self, df: pd.DataFrame, fill_missing: bool = False) -> np.ndarray:
        """Standardized values; with fill_missing, NaN becomes 0 (the reference mean)."""
        z = ((df[self.mean.index] - self.mean) / self.std).to_numpy(dtype=float)
        return np.nan_to_num(z, nan=0.0) if fill_missing else z


def subsample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most `n` rows drawn without replacement (all rows, in order, when n is None or large enough)."""
    if n is None or len(df) <= n:
        return df
    return df.sample(n=n, random_state=seed)


def r2_identity(reference: Iterable[float], estimate: Iterable[float]) -> float:
    """Coefficient of determination of `estimate` against the identity line: 1 - SS_res / SS_tot.

    SS_res = sum (estimate - reference)^2, SS_tot = sum (reference - mean(reference))^2.  Unlike a
    squared Pearson correlation it also penalises a constant bias.  NaN when SS_tot is 0.
    """
    y, yhat = np.asarray(list(reference), float), np.asarray(list(estimate), float)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return float("nan") if ss_tot == 0 else 1.0 - float(np.sum((yhat - y) ** 2)) / ss_tot


# --------------------------------------------------------------------------- metric dictionaries
SPLITS = frozenset({"synthetic", "real_test", "train", "holdout", "tstr", "trtr", "gap"})
INFO_SECTIONS = frozenset({"meta"})  # descriptive top-level sections: their rows get split "meta"


def to_jsonable(obj: Any) -> Any:
    """Plain-JSON version of a nested metrics dict: numpy scalars -> Python, NaN/inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray, pd.Series)):
        return [to_jsonable(v) for v in list(obj)]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def flatten_metrics(metrics: Mapping[str, Any], default_split: str = "synthetic") -> list[dict[str, Any]]:
    """Rows ``{"metric": str, "value": float | str | None, "split": str}`` from a nested metrics dict.

    The metric name is the dotted key path with any split key removed; the split is the innermost
    key of the path found in SPLITS ("synthetic", "real_test", "train", "holdout", "tstr", "trtr",
    "gap"), else "meta" for rows under a top-level "meta" section, else `default_split`.  Lists
    become comma-joined strings; numpy scalars become Python numbers and NaN becomes None.
    Example: ``{"utility": {"mlp": {"tstr": {"auroc": 0.8}}}}`` ->
    ``[{"metric": "utility.mlp.auroc", "value": 0.8, "split": "tstr"}]``.
    """
    rows: list[dict[str, Any]] = []

    def walk(node: Any, path: tuple[str, ...]) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, (*path, str(key)))
            return
        splits = [p for p in path if p in SPLITS]
        name = ".".join(p for p in path if p not in SPLITS)
        value = to_jsonable(node)
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        split = splits[-1] if splits else ("meta" if path[0] in INFO_SECTIONS else default_split)
        rows.append({"metric": name, "value": value, "split": split})

    walk(metrics, ())
    return rows
