"""Utility: train on synthetic, test on real (TSTR) against train on real, test on real (TRTR).

FLEXGEN-EHR (Sec. 4, utility) trains a random forest and reports AUROC / AUPR on a real test set;
InterGenEHR (Sec. V-C) trains an MLP on the last six time bins of each stay concatenated with the
label.  `last_bins_layout` builds that layout from a long (stay x bin) grid.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.base import ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.impute import SimpleImputer
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from synthehr.errors import DataError
from synthehr.evaluation._common import TableLike, numeric_columns, to_pandas

XY = tuple[TableLike, Any]  # (features, labels)
MODELS = ("random_forest", "mlp")


def make_classifier(name: str, seed: int = 0) -> Pipeline:
    """Median imputation -> StandardScaler -> classifier ("random_forest" or "mlp"), seeded."""
    estimators: dict[str, ClassifierMixin] = {
        "random_forest": RandomForestClassifier(n_estimators=200, random_state=seed, n_jobs=1),
        "mlp": MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=500, random_state=seed),
    }
    if name not in estimators:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(estimators)}")
    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(), estimators[name])


def _xy(data: XY, where: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = data
    x_arr = to_pandas(x).to_numpy(dtype=float)
    y_arr = np.asarray(y).ravel()
    if len(x_arr) != len(y_arr):
        raise DataError(f"{where}: {len(x_arr)} feature rows but {len(y_arr)} labels")
    return x_arr, y_arr


def _score_set(y_true: np.ndarray, positive: Any, predicted: np.ndarray | None, proba: np.ndarray | None,
               warning: str | None) -> dict[str, Any]:
    """AUROC, AUPR (average precision) and accuracy; NaN where undefined (no scores / no predictions)."""
    target = (y_true == positive).astype(int)
    defined = proba is not None and 0 < target.sum() < len(target)
    if proba is not None and not defined:
        warning = warning or "the real test set has a single class; AUROC/AUPR undefined"
    out: dict[str, Any] = {
        "auroc": float(roc_auc_score(target, proba)) if defined else float("nan"),
        "aupr": float(average_precision_score(target, proba)) if defined else float("nan"),
        "accuracy": float(accuracy_score(y_true, predicted)) if predicted is not None else float("nan"),
    }
    if warning:
        out["warning"] = warning
    return out


@dataclass
class TSTRResult:
    """Metrics nested as ``{model: {"tstr"|"trtr"|"gap": {metric: value}}}`` plus test scores for ROC curves."""

    metrics: dict[str, dict[str, dict[str, Any]]]
    y_test: np.ndarray
    positive_label: Any
    scores: dict[str, dict[str, np.ndarray | None]] = field(default_factory=dict)  # model -> split -> P(positive)


def _fit_and_score(model: str, x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
                   positive: Any, seed: int) -> tuple[dict[str, Any], np.ndarray | None]:
    classes = np.unique(y)
    if classes.size < 2:
        predicted = np.repeat(classes, len(y_test)) if classes.size else None
        msg = f"training set has {classes.size} class(es) {classes.tolist()}; AUROC/AUPR undefined"
        return _score_set(y_test, positive, predicted, None, msg), None
    clf = make_classifier(model, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    proba = clf.predict_proba(x_test)
    pos_index = list(clf.classes_).index(positive) if positive in clf.classes_ else None
    p = proba[:, pos_index] if pos_index is not None else np.zeros(len(x_test))
    return _score_set(y_test, positive, clf.predict(x_test), p, None), p


def run_tstr(
    train_synth: XY,
    train_real: XY | None,
    test_real: XY,
    models: Sequence[str] = MODELS,
    seed: int = 0,
    positive_label: Any = None,
) -> TSTRResult:
    """TSTR / TRTR for binary classification; see `tstr`.  Keeps the test-set scores for ROC plots."""
    x_test, y_test = _xy(test_real, "test_real")
    labels = np.unique(y_test)
    positive = positive_label if positive_label is not None else (labels.max() if labels.size else 1)
    sets = {"tstr": _xy(train_synth, "train_synth")}
    if train_real is not None:
        sets["trtr"] = _xy(train_real, "train_real")
    result = TSTRResult({}, y_test, positive)
    for model in models:
        result.metrics[model], result.scores[model] = {}, {}
        for split, (x, y) in sets.items():
            metrics, scores = _fit_and_score(model, x, y, x_test, y_test, positive, seed)
            result.metrics[model][split], result.scores[model][split] = metrics, scores
        if "trtr" in sets:
            tr, ts = result.metrics[model]["trtr"], result.metrics[model]["tstr"]
            result.metrics[model]["gap"] = {k: tr[k] - ts[k] for k in ("auroc", "aupr", "accuracy")}
    return result


def tstr(
    train_synth: XY,
    train_real: XY | None,
    test_real: XY,
    models: Sequence[str] = MODELS,
    seed: int = 0,
    positive_label: Any = None,
) -> dict[str, dict[str, dict[str, Any]]]:
    """Train-on-synthetic / train-on-real, both tested on real: AUROC, AUPR and accuracy per model.

    Each argument is a pair (X, y).  Returns ``{model: {"tstr": m, "trtr": m, "gap": trtr - tstr}}``
    with m = {"auroc", "aupr", "accuracy"} (AUPR = average precision).  The positive class is
    `positive_label` or the largest label in the test set.  A training set with a single class does
    not raise: it predicts that class, AUROC/AUPR are NaN and m["warning"] says why.
    Models: "random_forest" (200 trees) and "mlp" (64-32 ReLU), each after median imputation and
    a StandardScaler, all seeded with `seed`.
    """
    return run_tstr(train_synth, train_real, test_real, models, seed, positive_label).metrics


def last_bins_layout(
    grid: pd.DataFrame,
    stay_col: str = "stay_id",
    bin_col: str = "bin",
    feature_cols: Sequence[str] | None = None,
    label_col: str | None = None,
    n_bins: int = 6,
) -> pd.DataFrame:
    """InterGenEHR Sec. V-C layout: one row per stay = its last `n_bins` bins concatenated (+ label).

    Columns are ``f"{feature}__t{k}"`` for k = 0 (oldest of the kept bins) ... n_bins - 1 (the stay's
    last bin), time-major (all features of t0, then t1, ...), then `label_col` from the latest kept
    bin with a non-missing label.  Stays with fewer than `n_bins` bins are left-padded by repeating
    their first available bin, so the most recent bins always sit in the highest slots.  Missing values
    inside the grid stay missing.  The index is the stay id.  Default features: numeric columns other
    than stay, bin and label.
    """
    grid = to_pandas(grid)
    if feature_cols is None:
        feature_cols = [c for c in numeric_columns(grid) if c not in {stay_col, bin_col, label_col}]
    feature_cols = list(feature_cols)
    tail = grid.sort_values([stay_col, bin_col]).groupby(stay_col, sort=True).tail(n_bins).copy()
    tail["_j"] = tail.groupby(stay_col).cumcount()
    sizes = tail.groupby(stay_col).size()
    slots = pd.DataFrame(
        {stay_col: np.repeat(sizes.index.to_numpy(), n_bins), "_k": np.tile(np.arange(n_bins), len(sizes))}
    )
    slots["_j"] = np.maximum(0, slots["_k"] - (n_bins - np.repeat(sizes.to_numpy(), n_bins)))
    merged = slots.merge(tail[[stay_col, "_j", *feature_cols]], on=[stay_col, "_j"], how="left")
    wide = merged.pivot(index=stay_col, columns="_k", values=feature_cols)
    order = [(f, k) for k in range(n_bins) for f in feature_cols]
    wide = wide[order]
    wide.columns = [f"{f}__t{k}" for f, k in order]
    if label_col is not None:
        wide[label_col] = tail.groupby(stay_col)[label_col].last().reindex(wide.index)
    return wide
