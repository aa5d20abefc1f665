"""One row per ICU stay: static columns + the first `hours` of the ICU grid, wide + the outcome label.

FLEXGEN-EHR's record is a stay with a static part x^S (age, sex, height, weight, ICU type …) and a
temporal part x^T (L time bins × d features).  The Generator contract is tabular, so a record is
one wide row:

    age, sex, height, weight, icu_type, heart_rate__t0, sbp__t0, …, heart_rate__t11, …, label

Temporal columns are named ``f"{feature}__t{k}"`` (k = 0 … L − 1, time-major like
`synthehr.evaluation.last_bins_layout`).  A stay shorter than `hours` has NaN in its missing bins.

Missing modality: a row whose static columns are all NaN is *temporal-only*, a row whose temporal
columns are all NaN is *static-only* (`drop_modalities` makes such rows for experiments).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from synthehr.models.schema import ColumnSpec, TableSchema

__all__ = ["DEFAULT_STATIC", "drop_modalities", "modality_columns", "parse_temporal", "stay_table",
           "temporal_name"]

DEFAULT_STATIC = ("age", "sex", "height", "weight", "icu_type")
_TEMPORAL = re.compile(r"^(.+)__t(\d+)$")
_STATIC_RANGES = {"age": (0.0, 120.0), "height": (50.0, 250.0), "weight": (1.0, 400.0)}


def temporal_name(feature: str, k: int) -> str:
    return f"{feature}__t{k}"


def parse_temporal(name: str) -> tuple[str, int] | None:
    """("heart_rate", 3) for "heart_rate__t3"; None for a static column."""
    m = _TEMPORAL.match(str(name))
    return (m.group(1), int(m.group(2))) if m else None


def modality_columns(names: list[str], label: str | None) -> tuple[list[str], list[str]]:
    """(static columns, temporal columns) of a stay table, the label excluded."""
    static = [c for c in names if c != label and parse_temporal(c) is None]
    temporal = [c for c in names if c != label and parse_temporal(c) is not None]
    return static, temporal


def stay_table(prepared, hours: float = 48.0, static_columns: tuple[str, ...] | list[str] | None = None,
               split: str | list[str] | None = None, with_label: bool = True,
               min_observed: float = 0.05) -> tuple[pd.DataFrame, TableSchema]:
    """Wide stay table and its schema from a PreparedData (index: stay_id).

    static_columns: default `DEFAULT_STATIC`, keeping those the static table has with values in at
    least `min_observed` of the stays (a column observed in two stays out of a hundred — height in the
    MIMIC-IV demo — cannot be learned, and would survive a missing-modality experiment with no value).  split: a split name or list of names (default: all stays).  Temporal feature kinds,
    plausible ranges and units come from the prepared catalogue (as `models.training.schema_for`).
    """
    from synthehr.models.training import schema_for

    info = prepared.info
    bin_hours = float(info.get("bin_hours", 4.0))
    n_bins = max(1, int(round(float(hours) / bin_hours)))
    grid = prepared.icu_grid
    if split is not None:
        grid = grid[grid["split"].isin([split] if isinstance(split, str) else list(split))]
    grid = grid[(grid["bin"] >= 0) & (grid["bin"] < n_bins)]
    features = prepared.features
    stays = np.sort(grid["stay_id"].unique())

    wide = grid.drop_duplicates(["stay_id", "bin"]).set_index(["stay_id", "bin"])[features].unstack("bin")
    wide = wide.reindex(index=stays)
    cols = {}
    for k in range(n_bins):
        for f in features:
            key = (f, k)
            cols[temporal_name(f, k)] = wide[key].to_numpy(dtype=float) if key in wide.columns else np.full(len(stays), np.nan)
    temporal = pd.DataFrame(cols, index=pd.Index(stays, name="stay_id"))

    static_all = prepared.static.drop_duplicates("stay_id").set_index("stay_id").reindex(stays)
    wanted = list(DEFAULT_STATIC if static_columns is None else static_columns)
    static_cols = [c for c in wanted if c in static_all.columns and static_all[c].notna().any()
                   and static_all[c].notna().mean() >= min_observed]
    static = static_all[static_cols].copy()
    for c in static_cols:
        if not pd.api.types.is_numeric_dtype(static[c]):
            static[c] = static[c].astype(object).where(static[c].notna(), np.nan)

    parts = [static, temporal]
    label = prepared.label
    if with_label:
        if label in static_all.columns:
            y = static_all[label]
        else:
            y = grid.groupby("stay_id")[label].last().reindex(stays)
        parts.append(pd.DataFrame({label: pd.to_numeric(y).astype("Int64").astype(float)}, index=stays))
    table = pd.concat(parts, axis=1)
    table.index.name = "stay_id"
    if with_label and table[label].notna().all():
        table[label] = table[label].astype(np.int64)

    # schema
    specs: list[ColumnSpec] = []
    inferred = TableSchema.infer(static.reset_index(drop=True))
    for spec in inferred.columns:
        if spec.kind == "continuous":
            lo, hi = _STATIC_RANGES.get(spec.name, (None, None))
            specs.append(ColumnSpec(spec.name, "continuous", lower=lo, upper=hi))
        else:
            specs.append(spec)
    grid_schema = schema_for(prepared, with_label=False)
    for k in range(n_bins):
        for f in features:
            s = grid_schema[f]
            specs.append(ColumnSpec(temporal_name(f, k), s.kind, s.categories, s.lower, s.upper, s.unit))
    if with_label:
        specs.append(ColumnSpec(label, "binary"))
    return table[[s.name for s in specs]], TableSchema(specs)


def drop_modalities(table: pd.DataFrame, schema: TableSchema, static_only: float = 0.0,
                    temporal_only: float = 0.0, label: str | None = None, seed: int = 0) -> pd.DataFrame:
    """Blank one modality in disjoint random subsets of rows (§5.5 experiments).

    A fraction `static_only` of the rows loses its temporal columns (static-only records) and a
    disjoint fraction `temporal_only` loses its static columns (temporal-only records).  The label
    stays.  Fractions must add up to less than 1 so some rows keep both modalities.
    """
    if static_only < 0 or temporal_only < 0 or static_only + temporal_only >= 1.0:
        raise ValueError(f"need 0 <= static_only, temporal_only and static_only + temporal_only < 1, "
                         f"got {static_only}, {temporal_only}")
    static_cols, temporal_cols = modality_columns(schema.names, label)
    out = table.copy()
    n = len(out)
    order = np.random.default_rng(seed).permutation(n)
    n_s, n_t = int(round(static_only * n)), int(round(temporal_only * n))
    s_rows, t_rows = order[:n_s], order[n_s:n_s + n_t]
    if len(s_rows) and temporal_cols:
        out.iloc[s_rows, [out.columns.get_loc(c) for c in temporal_cols]] = np.nan
    if len(t_rows) and static_cols:
        for c in static_cols:
            j = out.columns.get_loc(c)
            if not pd.api.types.is_float_dtype(out[c]):
                out[c] = out[c].astype(object)
            out.iloc[t_rows, j] = np.nan
    return out
