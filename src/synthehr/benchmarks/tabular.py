"""`synthehr benchmark tabular`: our generators and peers side by side on one prepared split.

physionet2012: train on set-a grid rows, evaluate on set-b; mimic-iv-demo: train split vs held_out.
Every model fits the same training subsample (same seed), samples as many rows as the test table
has, and is scored by `synthehr.evaluation.evaluate_tables` against the same real test rows.
Reference row `real`: an equally sized set of real training-source rows NOT used for fitting, scored
as if it were synthetic — the fidelity noise floor — plus train-on-real utility (the ceiling).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from synthehr.benchmarks.results import make_row, write_results

REPO = Path(__file__).resolve().parents[3]
DEFAULT_MODELS = ("gaussian", "independent_marginals", "pmvae", "gaussiancopula", "ctgan", "tvae")
PEERS = ("gaussiancopula", "ctgan", "tvae", "forestdiffusion")
# metric in evaluate_tables' flat output → (name in the results table, split)
METRICS = {
    ("fidelity.intergenehr_mmd", "synthetic"): "mmd_mean",
    ("fidelity.intergenehr_rmspe", "synthetic"): "rmspe",
    ("fidelity.intergenehr_mape", "synthetic"): "mape",
    ("fidelity.corr_mean_abs_diff", "synthetic"): "correlation_difference",
    ("fidelity.dimension_wise_r2", "synthetic"): "dimwise_r2",
    ("fidelity.gaussian_mmd2", "synthetic"): "kernel_mmd",
    ("fidelity.ks_mean", "synthetic"): "ks_mean",
    ("privacy.membership.auc", "synthetic"): "mia_auc",
    ("privacy.dcr.median", "synthetic"): "dcr_median",
    ("utility.random_forest.auroc", "tstr"): "tstr_auroc",
    ("utility.random_forest.aupr", "tstr"): "tstr_aupr",
    ("utility.random_forest.accuracy", "tstr"): "tstr_accuracy",
    ("utility.random_forest.auroc", "gap"): "tstr_auroc_gap",
}


def load_dataset(dataset: str, shared: Path, cache: Path):
    """(train-source PreparedData, test PreparedData, test split name) — prepared once, cached."""
    from synthehr.data import load_prepared, prepare

    def cached(name, **kw):
        out = cache / name
        try:
            return load_prepared(out)
        except Exception:
            return prepare(out=out, progress=False, **kw)

    if dataset == "physionet2012":
        pn = shared / "physionet-challenge-2012"
        a = cached("physionet2012-set-a", source="physionet2012", path=pn / "set-a.tar.gz")
        b = cached("physionet2012-set-b", source="physionet2012", path=pn / "set-b.tar.gz")
        return a.feature_table(with_label=True), b.feature_table(with_label=True), a
    if dataset == "mimic-iv-demo":
        demo = REPO / "data" / "demo"
        d = cached("mimic-iv-demo", source="mimic-iv", path=demo / "mimic-iv-demo-2.2", meds=demo / "mimic-iv-demo-meds")
        return d.feature_table("train", with_label=True), d.feature_table("held_out", with_label=True), d
    raise SystemExit(f"unknown dataset {dataset!r}: physionet2012 | mimic-iv-demo")


def build_model(name: str, seed: int, epochs: int):
    if name in PEERS:
        from synthehr.benchmarks import peers

        if name == "forestdiffusion":
            return peers.ForestDiffusion(seed=seed)
        return peers.SDVGenerator(name, epochs=epochs if name != "gaussiancopula" else None, seed=seed)
    from synthehr.models.training import make_generator

    hp = {"epochs": epochs, "seed": seed} if name in ("vae", "vaeac", "pmvae") else {}
    return make_generator(name, **hp)


def run_tabular_benchmark(dataset: str = "physionet2012", models=DEFAULT_MODELS, out_dir="benchmarks/results",
                          shared: Path | None = None, cache: Path | None = None, seed: int = 0,
                          max_train_rows: int = 5000, max_test_rows: int = 3000, epochs: int = 30):
    from synthehr.evaluation import evaluate_tables, flatten_metrics
    from synthehr.models.training import schema_for

    shared = shared or REPO.parent / "shared" / "data"
    cache = cache or Path(tempfile.gettempdir()) / "synthehr-bench-cache"
    source, test, prepared = load_dataset(dataset, shared, cache)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(source))
    n_train = min(max_train_rows, len(source) // 2)
    train = source.iloc[order[:n_train]].reset_index(drop=True)
    floor = source.iloc[order[n_train:2 * n_train]].reset_index(drop=True)  # real rows never fitted
    test = test.sample(n=min(max_test_rows, len(test)), random_state=seed).reset_index(drop=True)
    schema = schema_for(prepared, with_label=True)
    label = prepared.label
    n_synth = len(test)
    rows, notes = [], [
        f"train: {len(train):,} rows sampled from {'set-a' if dataset == 'physionet2012' else 'the train split'} "
        f"(seed {seed}); test: {len(test):,} rows of {'set-b' if dataset == 'physionet2012' else 'held_out'}; "
        f"each model samples {n_synth:,} rows",
        f"CTGAN/TVAE/VAE-family epochs = {epochs}; utility = random forest TSTR on grid rows with "
        f"{label}; metrics in raw units for the InterGenEHR means, standardized otherwise",
        "real = an equal number of real training-source rows not used for fitting, scored as if synthetic "
        "(fidelity floor; its tstr_auroc is train-on-real). Rows are stay x 4-hour bins, so floor rows can "
        "come from the same stays as training rows: its mia_auc is therefore above 0.5 and is not a privacy score",
        "tstr_auroc is missing when a model's synthetic labels hold a single class",
    ]

    def score(model_name, synthetic, extra):
        m = evaluate_tables(test, synthetic, train, label=label, seed=seed, models=("random_forest",))
        got = {(r["metric"], r["split"]): r["value"] for r in flatten_metrics(m)}
        for key, metric in METRICS.items():
            if key in got:
                rows.append(make_row(model_name, metric, got[key], split="test", seed=seed))
        rows.extend(make_row(model_name, k, v, split="test", seed=seed) for k, v in extra.items())
        def show(key):
            v = got.get(key)
            return f"{v:.3f}" if isinstance(v, (int, float)) else "n/a"

        print(f"  {model_name}: rmspe {show(('fidelity.intergenehr_rmspe', 'synthetic'))}, "
              f"corr diff {show(('fidelity.corr_mean_abs_diff', 'synthetic'))}, "
              f"tstr auroc {show(('utility.random_forest.auroc', 'tstr'))}", flush=True)

    print(f"[tabular/{dataset}] real-vs-real floor", flush=True)
    score("real", floor, {})
    for name in models:
        print(f"[tabular/{dataset}] {name}: fitting on {len(train):,} rows", flush=True)
        try:
            model = build_model(name, seed, epochs)
            t0 = time.perf_counter()
            model.fit(train, schema)
            fit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            synthetic = model.sample(n_synth, seed=seed)
            sample_s = time.perf_counter() - t0
            synthetic[label] = pd.to_numeric(synthetic[label], errors="coerce").round().clip(0, 1)
            score(name, synthetic, {"fit_seconds": fit_s, "sample_seconds": sample_s})
        except Exception as e:  # one peer failing must not lose the others' results
            notes.append(f"{name} failed: {type(e).__name__}: {str(e)[:200]}")
            print(f"  {name} FAILED: {e}", flush=True)
    return write_results("tabular", dataset, rows, out_dir, notes=notes)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="synthehr benchmark tabular", description=__doc__)
    p.add_argument("--dataset", default="physionet2012", choices=["physionet2012", "mimic-iv-demo"])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma list; also vae, vaeac, forestdiffusion")
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--shared", help="folder with the shared datasets (default: ../shared/data)")
    p.add_argument("--max-train-rows", type=int, default=5000)
    p.add_argument("--max-test-rows", type=int, default=3000)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    j, m = run_tabular_benchmark(a.dataset, [s for s in a.models.split(",") if s], a.results,
                                 Path(a.shared) if a.shared else None, seed=a.seed,
                                 max_train_rows=a.max_train_rows, max_test_rows=a.max_test_rows, epochs=a.epochs)
    print(f"→ {j}\n→ {m}")
    return 0
