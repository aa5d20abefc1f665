"""Small synthetic tables shared by the model tests (fixed seeds, a few hundred rows)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

CORR = np.array([[1.0, 0.8, 0.5, 0.3],
                 [0.8, 1.0, 0.4, 0.2],
                 [0.5, 0.4, 1.0, 0.6],
                 [0.3, 0.2, 0.6, 1.0]])


def make_mixed_table(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """4 correlated continuous columns, 1 binary and 1 three-level categorical tied to them."""
    rng = np.random.default_rng(seed)
    z = rng.multivariate_normal(np.zeros(4), CORR, size=n)
    df = pd.DataFrame(z * [12.0, 4.0, 15.0, 10.0] + [60.0, 27.0, 130.0, 75.0],
                      columns=["age", "bmi", "sbp", "hr"])
    df["female"] = (z[:, 0] + rng.normal(size=n) > 0).astype(np.int64)
    df["stage"] = np.array(["I", "II", "III"])[np.digitize(z[:, 2], [-0.5, 0.5])]
    return df


def with_holes(df: pd.DataFrame, rate: float = 0.15, seed: int = 1) -> pd.DataFrame:
    """Missing completely at random; every row keeps at least one value."""
    rng = np.random.default_rng(seed)
    holes = rng.random(df.shape) < rate
    holes[holes.all(axis=1), 0] = False
    return df.mask(holes)


@pytest.fixture
def mixed_table() -> pd.DataFrame:
    return make_mixed_table()


@pytest.fixture
def mixed_table_with_nans() -> pd.DataFrame:
    return with_holes(make_mixed_table())
