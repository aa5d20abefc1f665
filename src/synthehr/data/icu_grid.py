"""Measurements → the ICU grid: one row per stay × 4-hour bin (InterGenEHR §III-A).

Median within the bin (max for flags), forward fill within the stay, remaining gaps filled with the
training split's population median, the observed mask kept beside the values.

The heavy step (scanning every measurement) runs in DuckDB over whatever relation a source gives,
so a full MIMIC-IV chartevents streams from disk; only the per-bin aggregates come into memory.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import polars as pl

from synthehr.data.catalogue import FeatureCatalogue
from synthehr.data.report import PreparationReport
from synthehr.errors import DataError

BIN_HOURS = 4.0
LABEL = "in_hospital_mortality"
MASK_PREFIX = "observed__"
KEY_COLUMNS = ["stay_id", "subject_id", "split", "bin", "bin_start_hours"]


def n_bins_for(los_hours: pd.Series, max_hours: float | None, bin_hours: float = BIN_HOURS) -> pd.Series:
    """Bins covering [0, min(LOS, max_hours)]; at least one bin per stay."""
    span = los_hours if max_hours is None else los_hours.clip(upper=max_hours)
    return np.maximum(1, np.ceil(span.fillna(0).to_numpy(dtype=float) / bin_hours)).astype(int)


def aggregate_measurements(con: duckdb.DuckDBPyConnection, measurements_sql: str, stays: pd.DataFrame,
                           mapping: pd.DataFrame, report: PreparationReport,
                           bin_hours: float = BIN_HOURS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One scan of `measurements_sql` (columns stay_id, offset_hours, code, value).

    Returns (per stay × bin × feature aggregates of in-window valid values,
             per stay × 'first'-aggregated feature values for the static view).
    """
    con.register("_stays", stays[["stay_id", "n_bins"]])
    con.register("_map", mapping)
    sql = f"""
        WITH mm AS (
            SELECT m.stay_id, m.offset_hours, p.feature, p.aggregation, p.lo, p.hi, s.n_bins,
                   CASE WHEN p.multiplier = 0 THEN p."offset"
                        ELSE CAST(m.value AS DOUBLE) * p.multiplier + p."offset" END AS v
            FROM ({measurements_sql}) m
            JOIN _map p ON CAST(m.code AS VARCHAR) = p.code
            JOIN _stays s ON m.stay_id = s.stay_id
        ), flagged AS (
            SELECT *, (v IS NOT NULL AND v BETWEEN lo AND hi) AS ok,
                   CASE WHEN offset_hours < 0 THEN -1
                        WHEN offset_hours <= n_bins * {bin_hours}
                             THEN least(CAST(floor(offset_hours / {bin_hours}) AS INTEGER), n_bins - 1)
                        ELSE n_bins END AS bin
            FROM mm
        )
        SELECT stay_id, bin, feature, any_value(aggregation) AS aggregation,
               median(v) FILTER (WHERE ok) AS med, max(v) FILTER (WHERE ok) AS mx,
               arg_min(v, offset_hours) FILTER (WHERE ok) AS first_v, min(offset_hours) FILTER (WHERE ok) AS first_t,
               count(*) FILTER (WHERE ok) AS n_ok,
               count(*) FILTER (WHERE v IS NULL) AS n_null,
               count(*) FILTER (WHERE v IS NOT NULL AND NOT ok) AS n_implausible
        FROM flagged GROUP BY stay_id, bin, feature
    """
    agg = con.execute(sql).df()
    con.unregister("_stays")
    con.unregister("_map")
    n_bins = stays.set_index("stay_id")["n_bins"]

    for feat, g in agg.groupby("feature"):
        report.drop("measurements", f"implausible_value:{feat}", int(g["n_implausible"].sum()))
        report.drop("measurements", f"no_numeric_value:{feat}", int(g["n_null"].sum()))
    before = agg["bin"] < 0
    after = agg["bin"] >= agg["stay_id"].map(n_bins)
    report.drop("measurements", "before_icu_admission", int(agg.loc[before, "n_ok"].sum()))
    report.drop("measurements", "after_grid_window", int(agg.loc[after & ~agg["aggregation"].eq("first"), "n_ok"].sum()))

    # Static 'first' features use the whole stay window, not just the grid window.
    static_rows = agg[(agg["aggregation"] == "first") & agg["n_ok"].gt(0) & ~before]
    first = (static_rows.sort_values("first_t").groupby(["stay_id", "feature"], as_index=False).first()
             .pivot(index="stay_id", columns="feature", values="first_v"))

    binned = agg[~before & ~after & (agg["aggregation"] != "first") & agg["n_ok"].gt(0)].copy()
    binned["value"] = np.where(binned["aggregation"] == "max", binned["mx"], binned["med"])
    return binned[["stay_id", "bin", "feature", "value"]], first


def build_grid(binned: pd.DataFrame, stays: pd.DataFrame, catalogue: FeatureCatalogue,
               report: PreparationReport, bin_hours: float = BIN_HOURS) -> tuple[pd.DataFrame, dict]:
    """Pivot, derive, mask, forward fill, median fill. Returns (grid, fill_values)."""
    if stays.empty:
        raise DataError("the cohort is empty: no ICU stay is left to build a grid from")
    skeleton = pl.from_pandas(stays[["stay_id", "subject_id", "split", "n_bins", LABEL]]).with_columns(
        pl.int_ranges(0, pl.col("n_bins")).alias("bin")).explode("bin").drop("n_bins")
    skeleton = skeleton.with_columns(pl.col("bin").cast(pl.Int32))

    grid_feats = [f.name for f in catalogue.grid_features]
    if len(binned):
        wide = (pl.from_pandas(binned).with_columns(pl.col("bin").cast(pl.Int32), pl.col("value").cast(pl.Float64))
                .pivot(on="feature", index=["stay_id", "bin"], values="value"))
        grid = skeleton.join(wide, on=["stay_id", "bin"], how="left")
    else:
        grid = skeleton
    for f in grid_feats:
        if f not in grid.columns:
            grid = grid.with_columns(pl.lit(None, dtype=pl.Float64).alias(f))

    grid = _derive(grid, catalogue, report)

    # A feature never observed in the training split cannot be filled from it: it is absent.
    train = grid.filter(pl.col("split") == "train")
    if train.height == 0:
        raise DataError("no stay landed in the training split; the grid cannot be filled (cohort too small?)")
    absent = [f for f in grid_feats if train.get_column(f).drop_nulls().len() == 0]
    present = [f for f in grid_feats if f not in absent]
    if absent:
        report.note(f"features absent from this dataset's training split (left out of the grid): {absent}")
    grid = grid.drop(absent)

    fill_values = {f: float(train.get_column(f).drop_nulls().median()) for f in present}
    grid = grid.sort(["stay_id", "bin"]).with_columns(
        [pl.col(f).is_not_null().alias(MASK_PREFIX + f) for f in present]
    ).with_columns(
        [pl.col(f).forward_fill().over("stay_id").fill_null(fill_values[f]).alias(f) for f in present]
    ).with_columns((pl.col("bin").cast(pl.Float64) * bin_hours).alias("bin_start_hours"))

    ordered = KEY_COLUMNS + present + [MASK_PREFIX + f for f in present] + [LABEL]
    return grid.select(ordered).to_pandas(), fill_values


def _derive(grid: pl.DataFrame, catalogue: FeatureCatalogue, report: PreparationReport) -> pl.DataFrame:
    """Derived features, computed per bin only where every input was measured in that bin."""
    for feat in catalogue.grid_features:
        if not feat.derived_from:
            continue
        formula = feat.derived_from
        if formula == "pao2/fio2":
            expr = pl.col("pao2") / (pl.col("fio2") / 100.0)
        elif "+" in formula:
            parts = formula.split("+")
            expr = pl.sum_horizontal([pl.col(p) for p in parts])
            expr = pl.when(pl.all_horizontal([pl.col(p).is_not_null() for p in parts])).then(expr)
        else:
            raise DataError(f"unknown derivation {formula!r} for feature {feat.name!r}", file=catalogue.origin)
        derived = pl.when(pl.col(feat.name).is_null()).then(expr).otherwise(pl.col(feat.name))
        grid = grid.with_columns(derived.alias("_derived"))
        bad = grid.filter(pl.col("_derived").is_not_null()
                          & ~pl.col("_derived").is_between(feat.plausible_min, feat.plausible_max)).height
        report.drop("derived_values", f"implausible_value:{feat.name}", bad)
        grid = grid.with_columns(
            pl.when(pl.col("_derived").is_between(feat.plausible_min, feat.plausible_max))
            .then(pl.col("_derived")).otherwise(None).alias(feat.name)).drop("_derived")
    return grid
