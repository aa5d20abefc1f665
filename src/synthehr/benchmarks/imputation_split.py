"""Imputation under two test splits: `synthehr benchmark imputation-split [--dataset physionet2012]`.

Why this exists: the InterGenEHR paper reports imputation MSE 0.22 at a 50 % mask on ICU-grid rows
split 80/10/10 without saying whether a patient's rows stay on one side. The ICU grid is forward
filled within a stay, so neighbouring 4-hour bins of one stay are near copies; when the split is
by row, a test row's neighbours are in the training table and a model that matches rows can look
them up. This suite measures how much that is worth, on the same rows, under both protocols:

    stays  every row of a stay on one side (10 % of the stays are test): what `benchmark
           intergenehr` does (set-a / set-b there)
    rows   rows drawn into the test side at random (10 %), whatever their stay: the leaky protocol

Data: the training dataset's ICU grid (PhysioNet 2012: set-a). Test rows: `--n-eval` drawn from
the test side of each split (seed); every model is fitted on the whole training side of that split.
Mask: Table III's (`intergenehr_suite.feature_mask`): each feature cell hidden with P = 0.5, the
label hidden and not scored. Metric `imputation_mse` (standardized by the training side's sd) of each
model's point imputation as Table III takes it (`intergenehr_suite.point_imputation`): MICE, KNN
(k = 5), `masked_gbm` (gradient boosting trained on this mask protocol) and the VAE family's
conditional mean by default. Rows: model, metric, value, split = "stays" | "rows", seed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from synthehr.benchmarks.results import make_row, write_results

SUITE = "imputation-split"
DEFAULT_MODELS = ("mice", "knn", "masked_gbm", "vaeac")
SPLITS = ("stays", "rows")


def split_rows(grid: pd.DataFrame, how: str, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean test mask over the grid rows: by stay (whole stays) or by row (the leaky protocol)."""
    rng = np.random.default_rng(seed)
    if how == "rows":
        return rng.random(len(grid)) < test_fraction
    if how == "stays":
        stays = grid["stay_id"].unique()
        test = rng.choice(stays, size=max(1, int(round(test_fraction * len(stays)))), replace=False)
        return grid["stay_id"].isin(test).to_numpy()
    raise ValueError(f"unknown split {how!r}; choose from {SPLITS}")


def shared_stays(grid: pd.DataFrame, is_test: np.ndarray) -> float:
    """Share of test rows whose stay also has rows on the training side."""
    train_stays = set(grid.loc[~is_test, "stay_id"])
    return float(grid.loc[is_test, "stay_id"].isin(train_stays).mean()) if is_test.any() else 0.0


def run(dataset: str, results: str | Path, models: tuple[str, ...], n_eval: int, seed: int, cache: Path,
        test_fraction: float = 0.1) -> tuple[Path, Path]:
    import torch

    from synthehr.benchmarks import intergenehr_suite as ig
    from synthehr.evaluation import imputation_mse

    torch.set_num_threads(1)
    data = ig.load_data(dataset, cache, seed, 0)
    feats, names, label = data.features, data.schema.names, data.label
    settings = ig.Settings(seed=seed, label=label)  # the intergenehr suite's own defaults (e.g. 100 mean draws)
    grid = data.train_grid
    cols = [*feats, label]
    rows: list[dict] = []
    notes = [f"{data.source_note}; only the training dataset's grid is used here: {len(grid)} rows, "
             f"{grid['stay_id'].nunique()} stays, {len(feats)} features + label {label!r}",
             f"test side {test_fraction:.0%} of the stays ('stays') or of the rows ('rows'), seed {seed}; "
             f"{n_eval} test rows scored; 50 % random mask over the features, label hidden and not scored"]
    for how in SPLITS:
        is_test = split_rows(grid, how, test_fraction, seed)
        train = ig._typed(grid.loc[~is_test, cols].reset_index(drop=True), data.schema)
        test = ig._typed(grid.loc[is_test, cols].reset_index(drop=True), data.schema)
        test = test.sample(n=min(n_eval, len(test)), random_state=seed).reset_index(drop=True)
        hf, hidden = ig.feature_mask(len(test), names, feats, label, seed=seed)
        masked = test.mask(hidden)
        share = shared_stays(grid, is_test)
        rows.append(make_row("data", "test_rows_with_stay_in_training", share, how, seed))
        notes.append(f"split {how}: {len(train)} training rows, {int(is_test.sum())} test rows; "
                     f"{share:.1%} of test rows have their stay on the training side")
        for name in models:
            model = ig.make_model(name, settings, role="impute")
            t0 = time.perf_counter()
            try:
                model.fit(train, data.schema)
                fit_s = time.perf_counter() - t0
                imputed = ig.point_imputation(name, model, masked, settings)
            except Exception as e:  # one failing model is reported; the others still run
                notes.append(f"split {how}: {name} failed: {type(e).__name__}: {e}")
                print(f"[{SUITE}] {how:5s} {name:11s} FAILED: {e}", flush=True)
                continue
            mse = imputation_mse(test[feats], imputed[feats].to_numpy(dtype=float), hf, reference=train[feats])
            rows += [make_row(name, "imputation_mse", mse, how, seed),
                     make_row(name, "fit_seconds", fit_s, how, seed)]
            print(f"[{SUITE}] {how:5s} {name:11s} mse {mse:.4f} (fit {fit_s:.0f} s)", flush=True)
    return write_results(SUITE, dataset, rows, results, notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"synthehr benchmark {SUITE}", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="physionet2012", choices=["physionet2012", "mimic-iv-demo"])
    p.add_argument("--results", default="benchmarks/results", help="output folder")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help=f"comma list (default {','.join(DEFAULT_MODELS)}; any imputing model of the intergenehr suite)")
    p.add_argument("--n-eval", type=int, default=2000, help="test rows scored per split")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "synthehr-bench-cache"),
                   help="prepared-data cache folder")
    a = p.parse_args(argv)
    models = tuple(m.strip() for m in a.models.split(",") if m.strip())
    from synthehr.benchmarks import intergenehr_suite as ig

    bad = [m for m in models if m not in ig.IMPUTING]
    if bad:
        raise SystemExit(f"--models: {bad} cannot impute; choose from {', '.join(ig.IMPUTING)}")
    j, m = run(a.dataset, a.results, models, a.n_eval, a.seed, Path(a.cache))
    print(f"wrote {j} and {m}")
    return 0
