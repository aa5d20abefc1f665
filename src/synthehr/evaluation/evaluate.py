"""One call that evaluates a synthetic table against real train / test tables and writes the results.

Metrics dict layout (nested by section, then by split where a reference is reported)::

    meta                  sizes, feature list, label, seed, version
    fidelity.synthetic    fidelity_summary(real_test, synthetic, standardize_with=train)
    fidelity.train        same for the training table itself: the score of a perfect copy of the
                          population, i.e. the sampling-noise floor
    fidelity_per_feature  {feature: {mean_real, mean_synthetic, std_mean_bias, ks, wasserstein}}
    privacy               membership (members = train, non-members = real_test), dcr, nndr,
                          attribute_inference (each reference split is called "holdout" = real_test)
    constraints           {"synthetic"|"real_test": {equation: {mae, n_rows}}} for equations whose
                          columns exist
    utility               {model: {"tstr"|"trtr"|"gap": {auroc, aupr, accuracy}}} when a label is given

`flatten_metrics` turns it into rows ``{"metric", "value", "split"}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

import synthehr
from synthehr.constraints.equations import constraint_mae
from synthehr.errors import DataError
from synthehr.evaluation._common import TableLike, flatten_metrics, numeric_columns, to_jsonable, to_pandas
from synthehr.evaluation.fidelity import fidelity_summary, per_feature_fidelity
from synthehr.evaluation.privacy import (
    attribute_inference,
    closest_record_distances,
    dcr_summary,
    membership_inference,
    nndr_summary,
)
from synthehr.evaluation.report import write_report
from synthehr.evaluation.utility import MODELS, TSTRResult, run_tstr

__all__ = ["evaluate_tables", "flatten_metrics", "write_metrics_json"]


def _feature_columns(tables: Sequence[pd.DataFrame], label: str | None, requested: Sequence[str] | None) -> list[str]:
    if requested is not None:
        missing = [(i, c) for i, t in enumerate(tables) for c in requested if c not in t.columns]
        if missing:
            table, column = missing[0]
            names = ("real_test", "synthetic", "train")
            raise DataError(f"feature column missing from the {names[table]} table", column=column)
        return [c for c in requested if c != label]  # never let the label leak into the features
    return [c for c in numeric_columns(tables[2]) if c != label and all(c in t.columns for t in tables[:2])]


def _utility(real_test: pd.DataFrame, synthetic: pd.DataFrame, train: pd.DataFrame, label: str,
             features: list[str], models: Sequence[str], seed: int) -> tuple[dict[str, Any], TSTRResult | None]:
    for name, table in (("synthetic", synthetic), ("real_test", real_test), ("train", train)):
        if label not in table.columns:
            return {"error": f"label column {label!r} missing from the {name} table"}, None
    labelled = [table[table[label].notna()] for table in (synthetic, train, real_test)]
    synth_xy, train_xy, test_xy = ((table[features], table[label]) for table in labelled)
    result = run_tstr(synth_xy, train_xy, test_xy, models=models, seed=seed)
    return result.metrics, result


def write_metrics_json(metrics: dict[str, Any], path: str | Path) -> Path:
    """Write `metrics` as strict JSON (NaN/inf -> null, numpy scalars -> numbers), indent 2."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def evaluate_tables(
    real_test: TableLike,
    synthetic: TableLike,
    train: TableLike,
    label: str | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    feature_columns: Sequence[str] | None = None,
    sensitive_columns: Sequence[str] | None = None,
    models: Sequence[str] = MODELS,
    max_rows: int = 5000,
    max_report_features: int = 12,
) -> dict[str, Any]:
    """Fidelity, privacy, constraint and (with `label`) utility metrics of `synthetic`; see the module doc.

    Features: `feature_columns`, else the training table's numeric columns present in all three
    tables, minus the label.  Sensitive columns for attribute inference: `sensitive_columns`, else the
    label when it is numeric and present everywhere, else none.  With `out_dir`, writes
    ``metrics.json`` and a self-contained ``report.html`` there.  All sampling uses `seed`.
    """
    real_test, synthetic, train = (to_pandas(t) for t in (real_test, synthetic, train))
    features = _feature_columns((real_test, synthetic, train), label, feature_columns)
    r, s, t = real_test[features], synthetic[features], train[features]

    metrics: dict[str, Any] = {
        "meta": {
            "n_train": len(train), "n_real_test": len(real_test), "n_synthetic": len(synthetic),
            "features": features, "label": label, "seed": seed, "synthehr_version": synthehr.__version__,
        },
        "fidelity": {
            "synthetic": fidelity_summary(r, s, standardize_with=t, seed=seed),
            "train": fidelity_summary(r, t, standardize_with=t, seed=seed),
        },
        "fidelity_per_feature": per_feature_fidelity(r, s, t).to_dict(orient="index"),
    }

    distances = closest_record_distances(t, r, s, seed=seed, max_rows=max_rows)
    metrics["privacy"] = {
        "membership": membership_inference(t, r, s, seed=seed, max_rows=max_rows),
        "dcr": dcr_summary(distances),
        "nndr": nndr_summary(distances),
    }
    if sensitive_columns is None:
        numeric_label = label is not None and all(label in numeric_columns(x) for x in (real_test, synthetic, train))
        sensitive_columns = [label] if numeric_label else []
    if sensitive_columns:
        cols = list(dict.fromkeys([*features, *sensitive_columns]))
        metrics["privacy"]["attribute_inference"] = attribute_inference(
            train[cols], real_test[cols], synthetic[cols], sensitive_columns, seed=seed, max_rows=max_rows
        )

    constraints = {name: constraint_mae(x) for name, x in (("synthetic", synthetic), ("real_test", real_test))}
    if any(constraints.values()):
        metrics["constraints"] = constraints

    tstr_result = None
    if label is not None:
        metrics["utility"], tstr_result = _utility(real_test, synthetic, train, label, features, models, seed)

    if out_dir is not None:
        out = Path(out_dir)
        write_metrics_json(metrics, out / "metrics.json")
        write_report(out / "report.html", metrics, real=r, synthetic=s, reference=t, tstr=tstr_result,
                     distances=distances, max_features=max_report_features)
    return metrics
