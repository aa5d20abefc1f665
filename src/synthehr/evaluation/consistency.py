"""Clinical consistency: effect sizes between real and synthetic per-record rates.

Source: "From Statistical Fidelity to Clinical Consistency" (2026) reports Cohen's d between real and
synthetic records for rates of clinical inconsistencies, before and after auditing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synthehr.evaluation._common import TableLike, to_pandas


def cohens_d(a: Any, b: Any) -> float:
    """Cohen's d = (mean(a) - mean(b)) / s_pooled, s_pooled = sqrt(((n_a-1) s_a^2 + (n_b-1) s_b^2) / (n_a+n_b-2)).

    Sample variances use ddof=1; missing values are dropped.  Sign: positive when `a` has the larger
    mean (pass the synthetic values as `a` to read "synthetic minus real").  NaN if either sample has
    fewer than 2 values or the pooled SD is 0.
    """
    x, y = (np.asarray(v, dtype=float) for v in (a, b))
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if x.size < 2 or y.size < 2:
        return float("nan")
    pooled = np.sqrt(((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (x.size + y.size - 2))
    return float((x.mean() - y.mean()) / pooled) if pooled > 0 else float("nan")


def per_record_rates(table: TableLike, record_col: str, flag_col: str) -> np.ndarray:
    """Per record: the share of its rows where `flag_col` is true (e.g. events an audit flagged)."""
    df = to_pandas(table)
    return df.groupby(record_col)[flag_col].mean().astype(float).to_numpy()


def per_record_rate_comparison(
    real: TableLike,
    synthetic: TableLike,
    record_col: str = "subject_id",
    flag_col: str = "flag",
) -> dict[str, float]:
    """Compare the per-record rate of a flag (share of a record's rows flagged) between datasets.

    Returns mean rates, the share of records with at least one flag, and Cohen's d of the per-record
    rates (synthetic minus real: d > 0 means synthetic records are flagged more often).
    """
    r, s = per_record_rates(real, record_col, flag_col), per_record_rates(synthetic, record_col, flag_col)
    return {
        "real_mean_rate": float(np.mean(r)),
        "synthetic_mean_rate": float(np.mean(s)),
        "real_any_share": float(np.mean(r > 0)),
        "synthetic_any_share": float(np.mean(s > 0)),
        "cohens_d": cohens_d(s, r),
        "n_real_records": int(r.size),
        "n_synthetic_records": int(s.size),
    }
