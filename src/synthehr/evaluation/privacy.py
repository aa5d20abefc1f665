"""Privacy: distance-based membership inference, distance to closest record, NNDR, attribute inference.

Every distance is Euclidean in standardized units, z = (x - mean_train) / std_train, with missing
values set to 0 (the training mean).  "train" = the rows the generator saw (members), "holdout" =
real rows it never saw (non-members), drawn from the same population.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor, NearestNeighbors

from synthehr.errors import DataError
from synthehr.evaluation._common import Standardizer, TableLike, align, subsample


def nearest_distances(query: np.ndarray, reference: np.ndarray, k: int = 1) -> np.ndarray:
    """(n_query, k) Euclidean distances from each query row to its k nearest reference rows, ascending."""
    return NearestNeighbors(n_neighbors=k).fit(reference).kneighbors(query)[0]


def membership_inference(
    train: TableLike,
    holdout: TableLike,
    synthetic: TableLike,
    seed: int = 0,
    max_rows: int | None = 5000,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Distance-based membership inference attack (Hayes et al. 2018; FLEXGEN-EHR Sec. 4 privacy).

    n = min(len(train), len(holdout), max_rows) members (train rows) and as many non-members
    (holdout rows) are drawn with `seed`.  The attacker's score for a record is minus its distance to
    the closest synthetic record.  Reports the ROC AUC of that score (0.5 = no leakage) and, at the
    threshold = median of all 2n scores (so about half the records are called members, the prior),
    the accuracy and F1 of "score >= threshold -> member".

    How sure the AUC is: ``auc_ci_low`` / ``auc_ci_high``, a 95 % percentile bootstrap interval
    (`n_boot` resamples of members and of non-members, seeded; 0 skips it), and ``auc_null_sd``,
    the AUC's standard deviation when membership leaks nothing, sqrt((2n + 1) / (12 n^2)) — with
    20 members against 20 non-members (a 100-patient cohort's held-out fifth) that is 0.09, so an
    AUC of 0.57 there cannot be told from 0.5.
    """
    tr, ho, sy = align(train, holdout, synthetic)
    n = min(len(tr), len(ho), max_rows or len(tr))
    scaler = Standardizer.fit(tr)
    synth_z = scaler.transform(sy, fill_missing=True)
    d_members = nearest_distances(scaler.transform(subsample(tr, n, seed), True), synth_z)[:, 0]
    d_nonmembers = nearest_distances(scaler.transform(subsample(ho, n, seed + 1), True), synth_z)[:, 0]
    scores = -np.concatenate([d_members, d_nonmembers])
    truth = np.r_[np.ones(n, int), np.zeros(n, int)]
    threshold = float(np.median(scores))
    predicted = (scores >= threshold).astype(int)
    low = high = float("nan")
    if n_boot > 0 and n > 1:
        from scipy.stats import rankdata

        rng = np.random.default_rng(seed + 2)
        draws = np.concatenate([rng.choice(scores[:n], (n_boot, n)), rng.choice(scores[n:], (n_boot, n))], axis=1)
        ranks = rankdata(draws, axis=1)  # AUC = Mann-Whitney U / n^2, ties counted half
        boot = (ranks[:, :n].sum(axis=1) - n * (n + 1) / 2.0) / (n * n)
        low, high = (float(v) for v in np.percentile(boot, [2.5, 97.5]))
    return {
        "auc": float(roc_auc_score(truth, scores)),
        "auc_ci_low": low,
        "auc_ci_high": high,
        "auc_null_sd": float(np.sqrt((2 * n + 1) / (12.0 * n * n))),
        "accuracy": float(np.mean(predicted == truth)),
        "f1": float(f1_score(truth, predicted)),
        "threshold_distance": -threshold,
        "n_members": n,
        "n_nonmembers": n,
        "member_distance_median": float(np.median(d_members)),
        "nonmember_distance_median": float(np.median(d_nonmembers)),
    }


def closest_record_distances(
    train: TableLike,
    holdout: TableLike,
    synthetic: TableLike,
    seed: int = 0,
    max_rows: int | None = 5000,
) -> dict[str, np.ndarray]:
    """Distances to the two nearest training rows: ``{"synthetic": (n, 2), "holdout": (m, 2)}``.

    At most `max_rows` synthetic and holdout rows are queried (drawn with `seed`).  holdout -> train
    is the reference: what an independent sample of the population looks like from the training set.
    """
    tr, ho, sy = align(train, holdout, synthetic)
    scaler = Standardizer.fit(tr)
    train_z = scaler.transform(tr, fill_missing=True)
    return {
        name: nearest_distances(scaler.transform(subsample(df, max_rows, seed), True), train_z, k=2)
        for name, df in (("synthetic", sy), ("holdout", ho))
    }


def _quantiles(values: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(values)), "p5": float(np.percentile(values, 5))}


def dcr_summary(distances: dict[str, np.ndarray], copy_tol: float = 1e-8) -> dict[str, dict[str, float]]:
    """Distance to closest record (DCR) per query set: median, 5th percentile and the share of exact
    copies (DCR <= copy_tol).  Synthetic DCRs well below the holdout ones mean memorisation."""
    return {
        name: {**_quantiles(d[:, 0]), "exact_copy_share": float(np.mean(d[:, 0] <= copy_tol))}
        for name, d in distances.items()
    }


def nndr_summary(distances: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Nearest-neighbour distance ratio d1 / d2 (closest / second closest training row) per query set:
    median and 5th percentile.  Values near 0 single out one training record; 0/0 (a copy of a
    duplicated row) counts as 0."""
    out = {}
    for name, d in distances.items():
        ratio = np.divide(d[:, 0], d[:, 1], out=np.zeros(len(d)), where=d[:, 1] > 0)
        out[name] = _quantiles(ratio)
    return out


def _is_categorical(values: pd.Series, max_classes: int) -> bool:
    v = values.dropna()
    return bool(np.all(np.equal(np.mod(v, 1), 0))) and v.nunique() <= max_classes


def attribute_inference(
    train: TableLike,
    holdout: TableLike,
    synthetic: TableLike,
    sensitive_columns: Sequence[str],
    k: int = 5,
    seed: int = 0,
    max_rows: int | None = 5000,
    max_classes: int = 10,
) -> dict[str, dict[str, Any]]:
    """Attribute inference: can an adversary who knows a training patient's other features infer a
    sensitive one better from the synthetic data than from independent real data?

    For each sensitive column s the adversary fits a k-nearest-neighbour model (classifier when s
    takes at most `max_classes` integer values, else regressor) from the other features
    (standardized with training mean/std) to s, once on the synthetic rows and, as the baseline, once
    on the holdout rows; both predict s for (at most `max_rows`) training rows.  error = share
    misclassified, or mean absolute error in training standard deviations.  Returns
    ``{s: {"kind", "synthetic": {"error"}, "holdout": {"error"}, "advantage": error_holdout - error_synthetic}}``;
    an advantage clearly above 0 means the synthetic data reveals more about members than real data would.
    """
    tr, ho, sy = align(train, holdout, synthetic)
    out: dict[str, dict[str, Any]] = {}
    for s in sensitive_columns:
        if s not in tr.columns:
            raise DataError("sensitive column is not a numeric column of all three tables", column=s)
        others = [c for c in tr.columns if c != s]
        scaler = Standardizer.fit(tr[others])
        categorical = _is_categorical(tr[s], max_classes)
        victims = subsample(tr[tr[s].notna()], max_rows, seed)
        scale = 1.0 if categorical else float(tr[s].std(ddof=0) or 1.0)
        result: dict[str, Any] = {"kind": "classification" if categorical else "regression"}
        for name, source in (("synthetic", sy), ("holdout", ho)):
            source = source[source[s].notna()]
            model = (KNeighborsClassifier if categorical else KNeighborsRegressor)(n_neighbors=min(k, len(source)))
            model.fit(scaler.transform(source[others], True), source[s].to_numpy())
            guess = model.predict(scaler.transform(victims[others], True))
            miss = guess != victims[s].to_numpy() if categorical else np.abs(guess - victims[s].to_numpy()) / scale
            result[name] = {"error": float(np.mean(miss))}
        result["advantage"] = result["holdout"]["error"] - result["synthetic"]["error"]
        out[s] = result
    return out
