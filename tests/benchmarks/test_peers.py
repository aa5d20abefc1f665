"""The benchmark's reference imputer (masked gradient boosting) against known structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from synthehr.benchmarks.peers import MaskedGBMImputer, SklearnImputer
from synthehr.models.schema import TableSchema


def _table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    return pd.DataFrame({
        "x1": x1,
        "x2": x1**2 + 0.1 * rng.normal(size=n),             # nonlinear: a linear imputer cannot find it
        "x3": rng.normal(size=n),                             # independent noise
        "flag": (x1 > 0.5).astype(np.int64),                  # binary, a function of x1
        "ward": np.where(x1 > 0, "a", "b").astype(object),    # categorical
    })


@pytest.fixture(scope="module")
def fitted():
    train = _table(3000, 0)
    schema = TableSchema.infer(train)
    return MaskedGBMImputer(seed=0, copies=2, max_iter=100).fit(train, schema), schema


def test_learns_a_nonlinear_conditional_mean_a_linear_imputer_misses(fitted):
    gbm, schema = fitted
    test = _table(500, 1)
    masked = test.copy()
    masked[["x2", "flag", "ward"]] = np.nan
    out = gbm.impute(masked)
    mse_gbm = float(np.mean((out["x2"] - test["x2"]) ** 2))
    mice = SklearnImputer("mice", seed=0, max_iter=3).fit(_table(3000, 0), schema)
    mse_mice = float(np.mean((mice.impute(masked)["x2"] - test["x2"]) ** 2))
    assert mse_gbm < 0.25 and mse_gbm < 0.1 * mse_mice, (mse_gbm, mse_mice)
    assert (out["flag"] == test["flag"]).mean() > 0.95
    assert (out["ward"] == test["ward"]).mean() > 0.95
    assert set(out["flag"].unique()) <= {0, 1}


def test_observed_cells_come_back_exactly_and_unconditional_columns_get_their_mean(fitted):
    gbm, _ = fitted
    test = _table(400, 2)
    masked = test.copy()
    masked.loc[::2, "x3"] = np.nan
    masked.loc[1::2, "x1"] = np.nan
    out = gbm.impute(masked)
    kept = masked.notna()
    for c in test.columns:
        assert (out.loc[kept[c], c] == test.loc[kept[c], c]).all(), c
    assert abs(out.loc[::2, "x3"].mean()) < 0.15  # independent of everything: about its mean, 0
    # x1 is recoverable from x2 only up to its sign, which the flag and ward columns give back
    assert float(np.mean((out.loc[1::2, "x1"] - test.loc[1::2, "x1"]) ** 2)) < 0.1


def test_same_seed_same_imputation_other_seed_other_masks():
    train = _table(500, 3)
    schema = TableSchema.infer(train)
    masked = _table(50, 4)
    masked.loc[:, "x2"] = np.nan

    def imputed(seed: int) -> pd.DataFrame:
        return MaskedGBMImputer(seed=seed, copies=1, max_iter=30).fit(train, schema).impute(masked)

    pd.testing.assert_frame_equal(imputed(5), imputed(5))
    assert not np.allclose(imputed(1)["x2"], imputed(2)["x2"])


def test_too_few_rows_is_a_clear_error():
    train = _table(10, 0)
    with pytest.raises(ValueError, match="at least 20 training rows"):
        MaskedGBMImputer().fit(train, TableSchema.infer(train))


def test_rare_levels_and_a_small_table_do_not_break_the_fit():
    """Early stopping's stratified validation split needs >= 2 rows per level; it is skipped where infeasible."""
    train = _table(25, 6)
    train.loc[0, "ward"] = "c"  # a level seen once
    schema = TableSchema.infer(train)
    masked = _table(10, 7)
    masked[["flag", "ward"]] = np.nan
    out = MaskedGBMImputer(seed=0, copies=1, max_iter=10).fit(train, schema).impute(masked)
    assert out["flag"].isin([0, 1]).all() and out["ward"].isin(["a", "b", "c"]).all()


def test_always_hidden_columns_are_never_inputs_and_unknown_ones_are_refused():
    train = _table(400, 8)
    schema = TableSchema.infer(train)
    gbm = MaskedGBMImputer(seed=0, copies=1, max_iter=20, always_hidden=["flag"]).fit(train, schema)
    # x1's model never saw flag observed, so an observed flag cannot change its prediction
    a, b = _table(30, 9), _table(30, 9)
    a[["x1", "x2", "ward"]] = np.nan
    b[["x1", "x2", "ward"]] = np.nan
    a["flag"], b["flag"] = 0, 1
    np.testing.assert_allclose(gbm.impute(a)["x1"], gbm.impute(b)["x1"])
    with pytest.raises(ValueError, match="not in the table"):
        MaskedGBMImputer(always_hidden=["outcome"]).fit(train, schema)
