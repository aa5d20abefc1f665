"""InterGenEHR benchmark: `synthehr benchmark intergenehr --dataset physionet2012|mimic-iv-demo|all [options]`.

Reproduces the InterGenEHR paper's Tables I-VII on our data with synthehr's arbitrary-conditioning
models (VAE baseline "vae", VAEAC "vaeac", Posterior-Matching VAE "pmvae"), the exact multivariate
Gaussian reference ("gaussian", plus "independent_marginals" as the no-structure floor), the
generative peers (SDV CTGAN / TVAE / GaussianCopula, ForestDiffusion) and, for imputation, the
imputers MICE / KNN / missForest and ForestDiffusion (VP diffusion), beside "masked_gbm": gradient
boosting trained on Table III's own mask protocol, a supervised estimate of how low the point
imputation error can go from one row (a reference for the targets, not a peer).

Data
----
Records are ICU-grid rows (stay x 4-hour bin), features + the in-hospital-mortality label, as in
`synthehr train`. PhysioNet 2012: train = set-a grid rows, test = set-b grid rows. MIMIC-IV demo:
train = the `train` split, test = `tuning` + `held_out`. At most `--max-train-rows` training rows
are drawn once (seed) and every model is fitted on exactly those rows; ForestDiffusion, when it is
too slow for that table, is fitted on a further subsample (`--fd-max-rows`, said in the notes), and
synthehr's models are then also timed on that smaller table so fit times compare like with like.

Tables (the `table` field of every result row; `split` says the protocol)
------
I    fidelity from noise (split "test"): n synthetic rows (default: as many as the training table,
     at most 5,000) vs every test row. mmd / rmspe / mape are the paper's mean-based metrics in raw
     units (`intergenehr_mean_mmd`, `rmspe`, `mape`), corr_diff = mean |C_syn - C_real| over feature
     pairs; each is the mean over `--fidelity-draws` samples (seeds seed, seed + 1, ...), with its
     standard deviation as `<metric>_sd`: a mean-based metric of one 5,000-row draw moves by a factor
     of 2-3 between seeds on heavy-tailed labs. dcr_median = median distance (standardized) from a
     synthetic row of the first draw to its closest training row. Model "real" is the real-vs-real
     floor: as many subsamples of the training rows, of the synthetic sample's size, scored against
     the same test rows; its dcr_median is test -> train.
     fit_seconds / sample_seconds are wall times on this machine (split "train"); fit_seconds with
     split "fd_table" / "full_train" time a fit on ForestDiffusion's table / on every training row.
II   perturbation (split "perturbed"): n_eval test rows, the clinician edit `--perturb-feature`
     (default map) x `--perturb-factor` (default 1.3: a hypertensive crisis, the paper's example),
     clipped to the plausible range. The clinician keeps the edited value plus a random half of
     the row's other features (`random_mask`, ratio 0.5, seed + 1); the outcome is not given; the
     model generates the rest (one draw). mmd / rmspe / mape / corr_diff of the generated rows vs the
     perturbed real rows (features only).
III  imputation at a 50 % mask (split "mask50"): n_eval test rows, each feature cell hidden with
     probability 0.5 (`random_mask`), the label always hidden and never scored. imputation_mse:
     mean squared error in training-standard-deviation units of the point imputation: for the VAE
     family the model's own conditional mean (`conditional_mean`, a Monte Carlo mean over
     `--mean-samples` latent draws, taken in raw units), for the other stochastic models the mean of
     `--impute-draws` draws (the conditional-mean estimate), the one output of a deterministic
     imputer; imputation_mse_draw_mean: the mean of the `--impute-draws` draws for the VAE family
     too (the estimate used before `conditional_mean` existed); imputation_mse_single: one draw. imputation_nll: per hidden
     continuous cell, -log p(x_u | x_o) from the model's own conditional density (Monte Carlo with
     `--nll-samples` latent draws for the VAE family, a stochastic lower bound on the log-likelihood,
     so its NLL errs high; exact for the Gaussian), standardized units;
     imputation_nll_draws: a Gaussian fitted to the draws (`gaussian_nll`, any stochastic imputer).
     reconstruct_ms (split "latency"): median wall time of `condition(observed cells of one test
     row, n=100)` over `--latency-rows` rows.
IV   conditioning on the salient subset (split "salient"): the dataset's salient features
     (`info["salient_features"]`) observed, every other feature hidden; MSE and NLL as in III.
V    constraint MAE (`constraint_mae`): constraint_mae_ph (Henderson-Hasselbalch),
     constraint_mae_base_excess, constraint_mae_spo2 (Severinghaus) of every model's unconstrained
     sample (split "enforced=none"), of the real test rows ("real"), and of samples generated with
     every applicable equation enforced (`generate_with_constraints(..., equations="all")`, split
     "enforced=all", arbitrary-conditioning models); these also get rmspe / mape / mmd / corr_diff
     so fidelity elsewhere can be compared with the unconstrained sample (means over
     `--fidelity-draws` constrained samples and Table I's draws, as in Table I).
VI   the same with one equation enforced at a time (split "enforced=ph" / "=base_excess" / "=spo2").
     PhysioNet 2012 has no base_excess or spo2 column: only Henderson-Hasselbalch applies there.
VII  TSTR mortality: the last-6-bins layout (`last_bins_layout`, one row per stay, + label); each
     model is fitted on the training stays' layout. "noise": as many rows as training stays
     sampled from noise; "random_masks" (arbitrary-conditioning models, the paper's protocol "we
     generate the synthetic data based on random masks"): every training layout row with each cell
     (label included) hidden with probability 0.5 and re-generated given the rest. A random forest
     (`make_classifier`, 200 trees) trained on it is tested on the test stays: tstr_auroc,
     tstr_accuracy, tstr_auroc_gap = AUROC(train on real) - AUROC(train on synthetic). Model "real"
     (split "real") trains on the real training layout. vae / vaeac / pmvae train here with the
     outcome's log-likelihood weighted as much as all the layout's features together
     (`column_weights`, `--outcome-weight`; 1 = unweighted): one column of 181 otherwise gives the
     latent little reason to carry the outcome.

The Markdown file has one section per table (rows: metric [split], columns: models), a list of the
issue's targets checked against this run (met / not met, with the numbers), and the notes (every
setting, wall times, anything that failed or was skipped).

Reusing an earlier run's rows (`--reuse-rows OLD.json`)
-------------------------------------------------------
Refits only the models named by `--models` (plus the 'real' floor rows, always recomputed) and takes
every row of every other model of OLD.json (an earlier results file of this suite and dataset)
unchanged. Refused (SystemExit) when OLD.json is of another suite or dataset, is a PARTIAL file, or
records different settings that the reused rows depend on (seed, training / test / evaluation sizes,
synthetic n, impute draws, perturbation, constrained n, TSTR trees, ... and a reused model's own
settings), when a reused model's settings recorded in its notes are not those the current code
builds (a peer whose defaults changed since), or when its split sizes or its 'real' floor rows differ from those recomputed now (the
same training rows, test rows and evaluation protocol give the same floor, to 1e-6 relative). The
merged JSON records {"reused": {path, created, git commit, models, refitted}}; the notes and the
Markdown header say which models' rows were reused from which file and which were refitted now, and
every cross-model summary (targets) is computed from the merged rows. Reused models are not fitted
on the Table VII layout again (their Table VII rows are reused too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from synthehr.benchmarks.results import display_path, make_row, write_results

SUITE = "intergenehr"
CACHE = Path(tempfile.gettempdir()) / "synthehr-bench-cache"  # shared by the suites: prepared once
DATASETS = ("physionet2012", "mimic-iv-demo")
N_SYNTH_CAP = 5000  # default synthetic sample: Table V's rejection sampling and the DCR scale with it

SYNTHEHR_MODELS = ("gaussian", "independent_marginals", "vae", "vaeac", "pmvae")
TORCH_MODELS = ("vae", "vaeac", "pmvae")
SDV_MODELS = ("ctgan", "tvae", "gaussiancopula")
IMPUTERS = ("mice", "knn", "missforest", "masked_gbm")  # masked_gbm: supervised reference, see peers
FD = "forestdiffusion"
ALL_MODELS = (*SYNTHEHR_MODELS, *SDV_MODELS, FD, *IMPUTERS)
GENERATORS = (*SYNTHEHR_MODELS, *SDV_MODELS, FD)          # sample from noise (Tables I, V, VII)
CONDITIONAL = SYNTHEHR_MODELS                              # condition / impute
ENFORCING = ("gaussian", *TORCH_MODELS)                    # Tables V/VI with constraints enforced
IMPUTING = (*SYNTHEHR_MODELS, *IMPUTERS, FD)               # Tables II-IV
DENSITY = ("gaussian", *TORCH_MODELS)                      # have log_prob_unobserved
QUICK_MODELS = ("gaussian", "vae", "pmvae", "mice", "knn")
DEFAULT_TSTR_MODELS = ("gaussian", "vae", "vaeac", "pmvae", "gaussiancopula")
EQUATION_SHORT = {"henderson_hasselbalch": "ph", "base_excess": "base_excess", "severinghaus": "spo2"}
TABLE_TITLES = {
    "I": "Table I: fidelity of synthetic data generated from noise (vs the test set)",
    "II": "Table II: generation from perturbed records (clinician edit, conditioned)",
    "III": "Table III: imputation at a 50 % mask",
    "IV": "Table IV: conditioning on the salient subset",
    "V": "Table V: clinical-constraint MAE (none / all enforced)",
    "VI": "Table VI: clinical-constraint MAE with one constraint enforced",
    "VII": "Table VII: TSTR mortality prediction (last 6 bins)",
}


# ================================================================================== settings
@dataclass
class Settings:
    dataset: str = "physionet2012"
    results: str = "benchmarks/results"
    cache: str = str(CACHE)
    models: tuple[str, ...] = ALL_MODELS
    tstr_models: tuple[str, ...] = DEFAULT_TSTR_MODELS
    max_train_rows: int = 0          # 0: every training row (set-a: 48,000)
    n_synth: int = 0                 # 0: as many as the training table, at most 5,000
    n_eval: int = 2000               # test rows for Tables II-IV
    epochs: int = 0                  # VAE / VAEAC / PMVAE; 0 = their default (≥ 40 epochs and ≥ 3,200 steps)
    ctgan_epochs: int = 30
    tvae_epochs: int = 60
    fd_max_rows: int = 1000          # ForestDiffusion training rows (0: the whole training table)
    missforest_max_rows: int = 0     # missForest training rows (0: the whole training table)
    impute_draws: int = 10
    mean_samples: int = 100          # latent draws of `conditional_mean` (VAE family, Tables III/IV)
    fidelity_draws: int = 5          # Table I: synthetic samples (and floor subsamples) averaged per model
    nll_samples: int = 500           # latent draws of the VAE family's NLL estimate (50 errs high by 4x on set-a)
    latency_rows: int = 50
    perturb_feature: str = "map"
    perturb_factor: float = 1.3
    constrained_n: int = 0           # 0: n_synth
    max_proposals_factor: int = 50   # rejection budget of constrained generation: factor x n proposal rows
    full_fit_models: tuple[str, ...] = ()
    tstr_trees: int = 200            # random-forest trees of the TSTR classifier
    outcome_weight: float = 0.0      # Table VII: the outcome's weight in the VAE family's training loss
                                     # (`column_weights`); 0 = as many as the layout's feature columns, 1 = off
    threads: int = 1
    seed: int = 0
    model_seed: int = -1             # training seed of vae / vaeac / pmvae; -1 = `seed` (the split stays `seed`'s)
    hidden: tuple[int, ...] = ()     # hidden widths of vae / vaeac / pmvae; () = the models' default
    quick: bool = False
    reuse_rows: str = ""             # earlier results JSON whose rows of the models not in `models` are reused
    extra_notes: list[str] = field(default_factory=list)
    label: str = ""                  # the dataset's outcome column, set from the data when it is loaded


def quick_settings(s: Settings, explicit: set[str]) -> Settings:
    """--quick: tiny epochs and sizes so the whole suite runs in well under a minute on the demo."""
    defaults = dict(models=QUICK_MODELS, max_train_rows=1000, n_synth=200, n_eval=100, epochs=2, ctgan_epochs=1,
                    tvae_epochs=1, fd_max_rows=300, impute_draws=3, mean_samples=10, fidelity_draws=2, nll_samples=5, latency_rows=5,
                    constrained_n=100, full_fit_models=(), tstr_trees=25)
    for k, v in defaults.items():
        if k not in explicit:
            setattr(s, k, v)
    if "tstr_models" not in explicit:
        s.tstr_models = tuple(m for m in s.models if m in GENERATORS and m != "independent_marginals")
    return s


# ====================================================================================== data
def _shared_root() -> Path:
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def _repo_root() -> Path:
    return Path(__file__).resolve().parents[3]


def _prepared(name: str, source: str, path: Path, cache: Path, **kw):
    from synthehr.data import load_prepared, prepare
    from synthehr.errors import DataError

    out = cache / name
    if (out / "dataset.json").is_file():
        try:
            return load_prepared(out)
        except DataError:
            pass
    return prepare(source, path, out, progress=False, **kw)


@dataclass
class BenchData:
    dataset: str
    schema: Any
    features: list[str]
    label: str
    salient: list[str]
    pool: pd.DataFrame        # every training row (features + label)
    train: pd.DataFrame       # the rows the models are fitted on
    test: pd.DataFrame        # every test row
    train_grid: pd.DataFrame  # grid with stay / bin keys, for the last-bins layout
    test_grid: pd.DataFrame
    source_note: str


def load_data(dataset: str, cache: Path, seed: int, max_train_rows: int) -> BenchData:
    from synthehr.models.training import schema_for

    shared = _shared_root()
    if dataset == "physionet2012":
        root = shared / "physionet-challenge-2012"
        a = _prepared("physionet2012-set-a", "physionet2012", root / "set-a.tar.gz", cache)
        b = _prepared("physionet2012-set-b", "physionet2012", root / "set-b.tar.gz", cache)
        prepared, train_grid, test_grid = a, a.icu_grid, b.icu_grid
        note = "PhysioNet 2012: train = set-a grid rows, test = set-b grid rows"
    elif dataset == "mimic-iv-demo":
        repo = _repo_root()
        raw, meds = repo / "data" / "demo" / "mimic-iv-demo-2.2", repo / "data" / "demo" / "mimic-iv-demo-meds"
        if not raw.is_dir():
            raw, meds = shared / "mimic-iv-demo-2.2", shared / "mimic-iv-demo-meds-0.0.1"
        p = _prepared("mimic-iv-demo", "mimic-iv", raw, cache, meds=meds)
        prepared = p
        train_grid = p.icu_grid[p.icu_grid["split"] == "train"]
        test_grid = p.icu_grid[p.icu_grid["split"] != "train"]
        note = "MIMIC-IV demo: train = split 'train', test = splits 'tuning' + 'held_out'"
    else:
        raise SystemExit(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)} or all")
    features, label = prepared.features, prepared.label
    missing = [f for f in features if f not in test_grid.columns]
    if missing:
        raise SystemExit(f"test grid lacks feature(s) {missing}")
    schema = schema_for(prepared, with_label=True)
    cols = [*features, label]
    pool = _typed(train_grid[cols].reset_index(drop=True), schema)
    test = _typed(test_grid[cols].reset_index(drop=True), schema)
    train = pool
    if max_train_rows and len(pool) > max_train_rows:
        train = pool.sample(n=max_train_rows, random_state=seed).reset_index(drop=True)
    salient = [f for f in prepared.info.get("salient_features", []) if f in features]
    return BenchData(dataset, schema, list(features), label, salient, pool, train, test,
                     train_grid.reset_index(drop=True), test_grid.reset_index(drop=True), note)


def _typed(table: pd.DataFrame, schema) -> pd.DataFrame:
    """Continuous columns as float, binary as int where complete (what the generators return)."""
    out = table.copy()
    for spec in schema.columns:
        if spec.name not in out:
            continue
        if spec.kind == "continuous":
            out[spec.name] = pd.to_numeric(out[spec.name], errors="coerce").astype(float)
        elif spec.kind == "binary":
            v = pd.to_numeric(out[spec.name], errors="coerce")
            out[spec.name] = v.astype(np.int64) if v.notna().all() else v.astype(float)
    return out


def layout_schema(schema, features: Sequence[str], label: str, n_bins: int = 6):
    from synthehr.models.schema import TableSchema

    cols = [replace(schema[f], name=f"{f}__t{k}") for k in range(n_bins) for f in features]
    return TableSchema([*cols, schema[label]])


# ==================================================================================== models
def make_model(name: str, s: Settings, role: str = "generate", column_weights: dict[str, float] | None = None):
    """A fresh, unfitted model. role "impute" only matters for ForestDiffusion (VP diffusion);
    `column_weights` only for the VAE family (Table VII's outcome weight)."""
    from synthehr.models.training import make_generator

    if name in TORCH_MODELS:
        extra = {"hidden": tuple(s.hidden)} if s.hidden else {}
        return make_generator(name, epochs=s.epochs or None,  # 0: the models' own default
                              seed=s.model_seed if s.model_seed >= 0 else s.seed, column_weights=column_weights,
                              **extra)
    if name in ("gaussian", "independent_marginals"):
        return make_generator(name)
    from synthehr.benchmarks import peers

    if name in SDV_MODELS:
        epochs = {"ctgan": s.ctgan_epochs, "tvae": s.tvae_epochs}.get(name)
        return peers.SDVGenerator(name, epochs=epochs, seed=s.seed)
    if name == FD:
        return peers.ForestDiffusion(diffusion_type="vp" if role == "impute" else "flow", seed=s.seed)
    if name == "masked_gbm":
        # trained with the label hidden in every row, as Tables II-IV always hide it
        return peers.MaskedGBMImputer(seed=s.seed, copies=1 if s.quick else 3,
                                      always_hidden=[s.label] if s.label else [])
    if name in IMPUTERS:
        if s.quick and name in ("mice", "missforest"):
            return peers.SklearnImputer(name, seed=s.seed, max_iter=2)
        return peers.SklearnImputer(name, seed=s.seed)
    raise SystemExit(f"unknown model {name!r}; choose from {', '.join(ALL_MODELS)}")


def model_settings(name: str, model) -> dict:
    hp = getattr(model, "hyperparameters", None)
    if hp is None:
        hp = getattr(model, "settings", {})
    return {k: v for k, v in dict(hp).items()}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# =================================================================================== metrics
def fidelity(real: pd.DataFrame, synth: pd.DataFrame, features: Sequence[str]) -> dict[str, float]:
    from synthehr.evaluation import correlation_difference, intergenehr_mean_mmd, mape, rmspe

    r = real[list(features)].astype(float)
    x = synth[list(features)].astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return {"mmd": intergenehr_mean_mmd(r, x), "rmspe": rmspe(r, x), "mape": mape(r, x),
                "corr_diff": correlation_difference(r, x)["mean_abs"]}


def mean_fidelity(draws: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean of each fidelity metric over draws, plus `<metric>_sd` (ddof=1) when there are several."""
    out: dict[str, float] = {}
    for key in draws[0]:
        v = np.array([dr[key] for dr in draws], dtype=float)
        out[key] = float(np.mean(v))
        if len(v) > 1:
            out[f"{key}_sd"] = float(np.std(v, ddof=1))
    return out


def _suffixed(metrics: dict[str, float], suffix: str) -> dict[str, float]:
    """rmspe -> rmspe<suffix>, rmspe_sd -> rmspe<suffix>_sd; mmd dropped (Tables V/VI's 'elsewhere' columns)."""
    out = {}
    for k, v in metrics.items():
        if k.startswith("mmd"):
            continue
        out[k[:-3] + suffix + "_sd" if k.endswith("_sd") else k + suffix] = v
    return out


def constraint_rows(table: pd.DataFrame) -> dict[str, float]:
    from synthehr.constraints import constraint_mae

    return {f"constraint_mae_{EQUATION_SHORT.get(k, k)}": v["mae"] for k, v in constraint_mae(table).items()}


def applicable_equations(schema) -> list[str]:
    from synthehr.constraints import EQUATIONS

    return [name for name, c in EQUATIONS.items() if c.applies_to(schema.names)]


# ===================================================================================== reuse
# Settings every reused row depends on (they must be equal in the earlier file), and those that only
# matter when a given model's rows are reused.
REUSE_KEYS = ("dataset", "seed", "max_train_rows", "n_synth", "n_eval", "impute_draws", "perturb_feature",
              "perturb_factor", "constrained_n", "max_proposals_factor", "tstr_trees", "fd_max_rows",
              "missforest_max_rows", "quick", "fidelity_draws")
REUSE_MODEL_KEYS = {"ctgan": ("ctgan_epochs",), "tvae": ("tvae_epochs",),
                    **{m: ("epochs", "mean_samples", "latency_rows", "nll_samples", "outcome_weight", "model_seed",
                           "hidden") for m in TORCH_MODELS},
                    "gaussian": ("latency_rows", "nll_samples"), "independent_marginals": ("latency_rows",)}
# settings added after results files were written, and what a file without them ran with
UNRECORDED_MEANT = {"model_seed": -1, "hidden": []}
FLOOR_RTOL = 1e-6
REUSED_TAG = re.compile(r"^\[reused from [^\]]*\] ")  # the mark on notes carried over from an earlier file
TABLE_ORDER = {t: i for i, t in enumerate(TABLE_TITLES)}


@dataclass
class Reuse:
    """Rows of an earlier results file taken over unchanged for the models not refitted now."""

    path: str
    doc: dict
    models: tuple[str, ...]      # models whose rows are reused
    refitted: tuple[str, ...]    # models refitted now (`--models`)
    commit: str | None = None    # last git commit of the file, when it is tracked and unchanged

    @property
    def created(self) -> str:
        return str(self.doc.get("created"))

    def rows_created(self) -> dict[str, str]:
        """When each reused model's rows were computed: the file's time, or, for rows that file itself
        reused from an earlier one, that earlier time."""
        before = self.doc.get("reused") or {}
        older = {m: before.get("rows_created", {}).get(m, before.get("created")) for m in before.get("models", [])}
        return {m: str(older.get(m) or self.created) for m in self.models}

    def describe(self) -> str:
        where = f"{self.path}" + (f" (git {self.commit})" if self.commit else "")
        older = {m: c for m, c in self.rows_created().items() if c != self.created}
        return (f"rows of {', '.join(self.models) or 'no model'} reused unchanged from {where}, created "
                f"{self.created}"
                + (f" (which had itself reused those of {', '.join(f'{m} (computed {c})' for m, c in older.items())})"
                   if older else "")
                + f"; refitted and recomputed in this run: {', '.join(self.refitted)} and the 'real' floor rows")

    def info(self) -> dict:
        out = {"path": self.path, "created": self.created, "commit": self.commit, "models": list(self.models),
               "refitted": list(self.refitted)}
        if any(c != self.created for c in self.rows_created().values()):
            out["rows_created"] = self.rows_created()
        return out


def _git_commit_of(path: Path) -> str | None:
    """The last commit of `path` when git tracks it and the working copy is that version, else None."""
    try:
        cwd = path.resolve().parent
        clean = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", path.name], cwd=cwd, capture_output=True,
                               timeout=10)
        out = subprocess.run(["git", "log", "-1", "--format=%h", "--", path.name], cwd=cwd, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    h = out.stdout.strip()
    return h if clean.returncode == 0 and out.returncode == 0 and h else None


def load_reuse(s: Settings) -> Reuse:
    """Read `s.reuse_rows` and check that its rows can stand beside this run's (SystemExit if not)."""
    path = Path(s.reuse_rows)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"--reuse-rows: cannot read {path}: {e}") from e
    return check_reuse(doc, s, display_path(path), _git_commit_of(path))


def check_reuse(doc: dict, s: Settings, path: str = "<doc>", commit: str | None = None) -> Reuse:
    """Validate an earlier results document against the settings of this run and name the reused models."""
    def refuse(why: str) -> None:
        raise SystemExit(f"--reuse-rows {path}: {why}; its rows cannot be reused (rerun those models instead)")

    if doc.get("suite") != SUITE:
        refuse(f"suite {doc.get('suite')!r} is not {SUITE!r}")
    if doc.get("dataset") != s.dataset:
        refuse(f"dataset {doc.get('dataset')!r} is not this run's {s.dataset!r}")
    if any(str(n).startswith("PARTIAL") for n in doc.get("notes", [])):
        refuse("it is a PARTIAL file (an interrupted run)")
    rows = doc.get("rows") or []
    if any(r.get("dataset", s.dataset) != s.dataset for r in rows):
        refuse("it holds rows of another dataset")
    models = tuple(dict.fromkeys(r["model"] for r in rows if r["model"] != "real" and r["model"] not in s.models))
    unknown = [m for m in models if m not in ALL_MODELS]
    if unknown:
        refuse(f"unknown model(s) {unknown}")
    old = {**UNRECORDED_MEANT, **(doc.get("settings") or {})}
    keys = list(REUSE_KEYS) + [k for m in models for k in REUSE_MODEL_KEYS.get(m, ())]
    differ = []
    for k in dict.fromkeys(keys):
        mine = getattr(s, k)
        if k not in old:
            differ.append(f"{k} (not recorded there; {mine!r} now)")
        elif (list(mine) if isinstance(mine, tuple) else mine) != old[k]:
            differ.append(f"{k} ({old[k]!r} there, {mine!r} now)")
    if differ:
        refuse("settings differ: " + "; ".join(differ))
    return Reuse(path, doc, models, tuple(s.models), commit)


def check_reused_settings(reuse: Reuse, s: Settings) -> None:
    """Each reused model's settings recorded in the earlier notes ("<model> settings: {json}") must be those the
    current code builds for it (catches a peer whose defaults changed since; SystemExit if not)."""
    recorded: dict[str, Any] = {}
    for n in reuse.doc.get("notes", []):
        m = re.match(r"^(\S+)(?: \(flow\))? settings: (\{.*\})$", REUSED_TAG.sub("", str(n)))
        if m:
            try:
                recorded[m.group(1)] = json.loads(m.group(2))
            except ValueError:
                pass
    for name in reuse.models:
        if name not in recorded:
            raise SystemExit(f"--reuse-rows {reuse.path}: its notes do not record {name}'s settings; cannot check "
                             f"that the current code would build the same model")
        now = json.loads(json.dumps(model_settings(name, make_model(name, s)), default=str))
        if now != recorded[name]:
            diff = {k: (recorded[name].get(k), now.get(k)) for k in {*now, *recorded[name]}
                    if now.get(k) != recorded[name].get(k)}
            raise SystemExit(f"--reuse-rows {reuse.path}: {name} was run with other settings than the current code "
                             f"builds ({diff}, as (then, now)); refit it (add it to --models)")


def check_reuse_sizes(reuse: Reuse, data: BenchData, n_eval: int, n_synth: int) -> str:
    """The split sizes recorded in the earlier file's notes must be this run's (SystemExit if not)."""
    notes = " | ".join(str(n) for n in reuse.doc.get("notes", []))
    m = re.search(r"(\d+) training rows available, models fitted on (\d+) .*?, (\d+) test rows", notes)
    e = re.search(r"synthetic n (\d+), n_eval (\d+) test rows", notes)
    if not m or not e:
        raise SystemExit(f"--reuse-rows {reuse.path}: its notes do not record the split sizes; cannot check them")
    then = tuple(int(x) for x in (*m.groups(), *e.groups()))
    now = (len(data.pool), len(data.train), len(data.test), n_synth, n_eval)
    if then != now:
        raise SystemExit(f"--reuse-rows {reuse.path}: split sizes (training pool, fitted rows, test rows, synthetic "
                         f"n, n_eval) were {then}, now {now}; its rows cannot be reused")
    return (f"{now[0]} training rows available, {now[1]} fitted on, {now[2]} test rows, synthetic n {now[3]}, "
            f"n_eval {now[4]}")


def check_floor(reuse: Reuse, rows: list[dict], tables: Sequence[str], rtol: float = FLOOR_RTOL) -> tuple[int, float]:
    """The 'real' rows of `tables` recomputed now must equal the earlier file's: same data, same protocol.
    Returns (rows compared, largest relative difference); SystemExit on a mismatch."""
    new = {(r["table"], r["metric"], r["split"]): r["value"] for r in rows if r["model"] == "real"}
    bad, n, worst = [], 0, 0.0
    for r in reuse.doc.get("rows", []):
        if r["model"] != "real" or r["table"] not in tables:
            continue
        key = (r["table"], r["metric"], r["split"])
        a, b = r["value"], new.get(key, "missing")
        n += 1
        if a is None or b is None or b == "missing":
            if a is not b:
                bad.append(f"{key}: {a} there, {b} now")
            continue
        rel = abs(a - b) / max(abs(a), abs(b), 1e-12)
        worst = max(worst, rel)
        if rel > rtol:
            bad.append(f"{key}: {a:.6g} there, {b:.6g} now")
    if bad:
        raise SystemExit(f"--reuse-rows {reuse.path}: the 'real' floor recomputed now differs from the reused file's "
                         f"({'; '.join(bad[:5])}): the data or the evaluation protocol changed since, so its rows "
                         f"cannot be reused")
    return n, worst


def merge_rows(new_rows: list[dict], reuse: Reuse | None) -> list[dict]:
    """This run's rows (refitted models, 'real') + every row of the reused models, in table order."""
    if reuse is None:
        return list(new_rows)
    reused = set(reuse.models)
    clash = sorted({r["model"] for r in new_rows if r["model"] in reused})
    if clash:
        raise ValueError(f"models {clash} were both refitted and reused")
    kept = [dict(r) for r in reuse.doc.get("rows", []) if r["model"] in reused]
    return sorted([*new_rows, *kept], key=lambda r: TABLE_ORDER.get(r.get("table"), len(TABLE_ORDER)))


def reused_notes(reuse: Reuse) -> list[str]:
    """The earlier file's notes about the reused models (settings, subsampling, fit times), marked as such."""
    tag = f"[reused from {reuse.path}, created {reuse.created}]"
    before = set((reuse.doc.get("reused") or {}).get("models", []))
    out = []
    for n in reuse.doc.get("notes", []):
        n = str(n)
        body = REUSED_TAG.sub("", n)
        if body != n:  # carried over by an earlier merge: keep its own provenance
            about = [m for m in reuse.models if body.startswith(f"{m} ") or body.startswith(f"{m}:")]
            if about or (body.startswith("that run's wall time") and before & set(reuse.models)):
                out.append(n)
        elif n.startswith("REUSED ROWS:"):
            if before & set(reuse.models):
                out.append(f"{tag} that file's {n}")
        elif any(n.startswith(f"{m} ") or n.startswith(f"{m}:") for m in reuse.models):
            out.append(f"{tag} {n}")
        elif n.startswith("wall time"):
            out.append(f"{tag} that run's {n}")
        elif " failed: " in n and any(m in n.split(" failed: ")[0].split() for m in reuse.models):
            out.append(f"{tag} {n}")
    return out


# ====================================================================================== runner
class Run:
    """Accumulates result rows and notes for one dataset."""

    def __init__(self, s: Settings, data: BenchData):
        self.s, self.d = s, data
        self.rows: list[dict] = []
        self.notes: list[str] = []
        self.t0 = time.perf_counter()

    def add(self, table: str, model: str, metrics: dict[str, Any], split: str, **extra) -> None:
        for k, v in metrics.items():
            if v is None or isinstance(v, (int, float, np.integer, np.floating)):
                self.rows.append(make_row(model, k, v, split=split, seed=self.s.seed, table=table,
                                          dataset=self.d.dataset, **extra))

    def log(self, msg: str) -> None:
        print(f"[intergenehr {self.d.dataset} {time.perf_counter() - self.t0:7.1f}s] {msg}", flush=True)

    def fail(self, what: str, e: BaseException) -> None:
        msg = f"{what} failed: {type(e).__name__}: {str(e)[:300]}"
        self.notes.append(msg)
        self.log(msg)
        if os.environ.get("SYNTHEHR_BENCH_DEBUG"):
            traceback.print_exc()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _impute_draws(model, masked: pd.DataFrame, k: int, seed: int, stochastic: bool) -> np.ndarray:
    """(k, n, n_columns) imputations of `masked` (one batched call: the table repeated k times)."""
    if not stochastic or k <= 1:
        out = model.impute(masked, seed=seed)
        return out[masked.columns].to_numpy(dtype=float)[None]
    stacked = pd.concat([masked] * k, ignore_index=True)
    out = model.impute(stacked, seed=seed)[masked.columns].to_numpy(dtype=float)
    return out.reshape(k, len(masked), masked.shape[1])


def _nll_per_cell(model, truth: pd.DataFrame, hidden: np.ndarray, schema, nll_samples: int, seed: int) -> float:
    """-(sum of log p(x_u | x_o)) / number of scored (hidden, continuous) cells, standardized units."""
    observed = ~hidden
    if getattr(model, "model_type", "") == "gaussian":
        ll = model.log_prob_unobserved(truth, observed)
    else:
        ll = model.log_prob_unobserved(truth, observed, num_samples=nll_samples, seed=seed)
    cont = np.array([c.kind == "continuous" for c in schema.columns])
    scored = hidden & cont[None, :] & truth[schema.names].notna().to_numpy()
    n = int(scored.sum())
    return float(-np.sum(ll) / n) if n else float("nan")


def feature_mask(n_rows: int, names: Sequence[str], features: Sequence[str], label: str, ratio: float = 0.5,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Table III's mask: (hidden over `features`, hidden over every column in `names`), each feature cell
    hidden with P = ratio (`random_mask`), the label always hidden (it is never given, never scored)."""
    from synthehr.evaluation import random_mask

    hf = random_mask((n_rows, len(features)), ratio, seed=seed)
    hidden = np.zeros((n_rows, len(names)), dtype=bool)
    hidden[:, [list(names).index(f) for f in features]] = hf
    hidden[:, list(names).index(label)] = True
    return hf, hidden


def point_imputation(name: str, model, masked: pd.DataFrame, s: Settings) -> pd.DataFrame:
    """The point estimate Table III scores: the VAE family's own conditional mean, else the mean of
    `impute_draws` draws of a stochastic imputer, else a deterministic imputer's one output."""
    if hasattr(model, "conditional_mean"):
        return model.conditional_mean(masked, num_samples=s.mean_samples, seed=s.seed)
    draws = _impute_draws(model, masked, s.impute_draws, s.seed, name not in IMPUTERS)
    return pd.DataFrame(draws.mean(axis=0), columns=masked.columns)


def imputation_block(run: Run, table_id: str, split: str, models: dict[str, Any], truth: pd.DataFrame,
                     hidden: np.ndarray, fit_times: dict[str, float]) -> None:
    """Tables III / IV: MSE (mean of draws and one draw), NLL for every imputing model."""
    from synthehr.evaluation import gaussian_nll, imputation_mse

    s, d = run.s, run.d
    feats = d.features
    masked = truth.copy()
    masked = masked.mask(hidden)
    jf = [d.schema.names.index(f) for f in feats]
    f_hidden = hidden[:, jf]
    ref = d.train[feats]
    for name, model in models.items():
        try:
            stochastic = name not in IMPUTERS
            draws, sec = timed(lambda: _impute_draws(model, masked, s.impute_draws, s.seed, stochastic))
            draws_f = draws[:, :, jf]
            point = draws_f.mean(axis=0)
            m = {"imputation_mse": imputation_mse(truth[feats], point, f_hidden, reference=ref),
                 "impute_seconds": sec}
            if hasattr(model, "conditional_mean"):  # the model's own E[x_u | x_o] (many latent draws)
                cm, sec_cm = timed(lambda: model.conditional_mean(masked, num_samples=s.mean_samples, seed=s.seed))
                m["imputation_mse_draw_mean"] = m["imputation_mse"]
                m["imputation_mse"] = imputation_mse(truth[feats], cm[feats].to_numpy(dtype=float), f_hidden,
                                                     reference=ref)
                m["conditional_mean_seconds"] = sec_cm
            if stochastic:
                m["imputation_mse_single"] = imputation_mse(truth[feats], draws_f[0], f_hidden, reference=ref)
                if len(draws_f) >= 2:
                    m["imputation_nll_draws"] = gaussian_nll(truth[feats], draws_f, f_hidden, reference=ref)
            if name in DENSITY:
                m["imputation_nll"] = _nll_per_cell(model, truth, hidden, d.schema, s.nll_samples, s.seed)
            if name in fit_times and table_id == "III":
                m["fit_seconds"] = fit_times[name]
            run.add(table_id, name, m, split)
        except Exception as e:  # a model that fails is reported, not fatal
            run.fail(f"Table {table_id} {name}", e)


# ====================================================================================== tables
def fit_grid_models(run: Run) -> tuple[dict[str, Any], dict[str, Any], dict[str, float]]:
    """Fit every requested model on the training rows: (generators, imputers, fit seconds)."""
    s, d = run.s, run.d
    gens: dict[str, Any] = {}
    imps: dict[str, Any] = {}
    fit_s: dict[str, float] = {}
    fd_train = d.train
    fd_reused = FD in getattr(run, "reused_models", ())
    if (FD in s.models or fd_reused) and s.fd_max_rows and len(d.train) > s.fd_max_rows:
        fd_train = d.train.sample(n=s.fd_max_rows, random_state=s.seed).reset_index(drop=True)
        if not fd_reused:  # a reused forestdiffusion brings its own note
            run.notes.append(f"forestdiffusion is fitted on {len(fd_train)} of the {len(d.train)} training rows "
                             f"(--fd-max-rows {s.fd_max_rows}: with its settings it is too slow on the full table "
                             f"here); synthehr's models are also timed on that table (fit_seconds [fd_table])")
    run.fd_train = fd_train
    for name in s.models:
        try:
            if name == FD:
                m = make_model(name, s)
                _, sec = timed(lambda: m.fit(fd_train, d.schema))
                gens[name], fit_s[name] = m, sec
                run.notes.append(f"forestdiffusion (flow) settings: {json.dumps(model_settings(name, m))}")
                if FD in IMPUTING:
                    mi = make_model(name, s, role="impute")
                    _, sec_i = timed(lambda: mi.fit(fd_train, d.schema))
                    imps[name] = mi
                    fit_s[name + ":vp"] = sec_i
                    run.notes.append(f"forestdiffusion imputation uses a second fit with diffusion_type='vp' "
                                     f"({sec_i:.1f} s)")
                run.log(f"fitted {name} in {sec:.1f}s (+ vp {fit_s.get(name + ':vp', 0):.1f}s)")
                continue
            table = d.train
            if name == "missforest" and s.missforest_max_rows and len(d.train) > s.missforest_max_rows:
                table = d.train.sample(n=s.missforest_max_rows, random_state=s.seed).reset_index(drop=True)
                run.notes.append(f"missforest is fitted on {len(table)} of the {len(d.train)} training rows "
                                 f"(--missforest-max-rows {s.missforest_max_rows}: too slow on the full table here)")
            m = make_model(name, s)
            _, sec = timed(lambda: m.fit(table, d.schema))
            fit_s[name] = sec
            if name in IMPUTERS:
                imps[name] = m
            else:
                gens[name] = m
                if name in CONDITIONAL:
                    imps[name] = m
            run.notes.append(f"{name} settings: {json.dumps(model_settings(name, m), default=str)}")
            run.log(f"fitted {name} in {sec:.1f}s")
        except Exception as e:
            run.fail(f"fit {name}", e)
    return gens, imps, fit_s


def table_i(run: Run, gens: dict[str, Any], fit_s: dict[str, float], n_synth: int) -> dict[str, list[pd.DataFrame]]:
    """Table I; returns each generator's `--fidelity-draws` samples (Tables V/VI compare against them)."""
    from synthehr.evaluation import closest_record_distances, dcr_summary

    s, d = run.s, run.d
    feats = d.features
    test_dcr = d.test.sample(n=min(len(d.test), 5000), random_state=s.seed)[feats]
    synth: dict[str, list[pd.DataFrame]] = {}
    k = max(1, int(s.fidelity_draws))
    n_floor = min(n_synth, len(d.train))
    m = mean_fidelity([fidelity(d.test, d.train.sample(n=n_floor, random_state=s.seed + 7 + i), feats)
                       for i in range(k)])
    dist = closest_record_distances(d.train[feats], test_dcr, test_dcr, seed=s.seed)
    m["dcr_median"] = dcr_summary(dist)["holdout"]["median"]
    run.add("I", "real", m, "test")
    run.notes.append(f"Table I floor ('real'): {n_floor} training rows (the synthetic sample's size) scored vs "
                     f"all {len(d.test)} test rows; its dcr_median is test -> train")
    run.notes.append(f"Table I: mmd / rmspe / mape / corr_diff are means over {k} draws (--fidelity-draws): {k} "
                     f"synthetic samples per model (seeds {s.seed}..{s.seed + k - 1}) and {k} subsamples of the "
                     f"training rows for the floor; *_sd is their standard deviation (one draw of a mean-based "
                     f"metric moves a lot: heavy-tailed labs); dcr_* and sample_seconds are of the first draw")
    for name, model in gens.items():
        try:
            x, sec = timed(lambda: model.sample(n_synth, seed=s.seed))
            x = _typed(x.reset_index(drop=True), d.schema)
            draws = [x] + [_typed(model.sample(n_synth, seed=s.seed + i).reset_index(drop=True), d.schema)
                           for i in range(1, k)]
            synth[name] = draws
            m = mean_fidelity([fidelity(d.test, xi, feats) for xi in draws])
            dist = closest_record_distances(d.train[feats], test_dcr, x[feats], seed=s.seed)
            summ = dcr_summary(dist)
            m["dcr_median"] = summ["synthetic"]["median"]
            m["dcr_exact_copy_share"] = summ["synthetic"]["exact_copy_share"]
            m["sample_seconds"] = sec
            run.add("I", name, m, "test")
            run.add("I", name, {"fit_seconds": fit_s.get(name)}, "train")
        except Exception as e:
            run.fail(f"Table I {name}", e)
    return synth


def timing_extra(run: Run, fit_s: dict[str, float]) -> None:
    """fit_seconds of synthehr's torch models on ForestDiffusion's table and on every training row."""
    s, d = run.s, run.d
    fd_train = getattr(run, "fd_train", d.train)
    fd_reused = FD in getattr(run, "reused_models", ())  # its fd_table row is reused; time ours on its table
    if FD in fit_s or fd_reused:
        if len(fd_train) < len(d.train):
            for name in TORCH_MODELS:
                if name not in s.models:
                    continue
                try:
                    m = make_model(name, s)
                    _, sec = timed(lambda: m.fit(fd_train, d.schema))
                    run.add("I", name, {"fit_seconds": sec}, "fd_table")
                except Exception as e:
                    run.fail(f"fd-table timing {name}", e)
        else:
            for name in TORCH_MODELS:
                if name in fit_s:
                    run.add("I", name, {"fit_seconds": fit_s[name]}, "fd_table")
        if FD in fit_s:
            run.add("I", FD, {"fit_seconds": fit_s[FD]}, "fd_table")
    for name in s.full_fit_models:
        if len(d.pool) <= len(d.train):
            if name in fit_s:
                run.add("I", name, {"fit_seconds": fit_s[name]}, "full_train")
            continue
        try:
            m = make_model(name, s)
            _, sec = timed(lambda: m.fit(d.pool, d.schema))
            run.add("I", name, {"fit_seconds": sec}, "full_train")
            run.log(f"full-table fit {name}: {sec:.1f}s on {len(d.pool)} rows")
            run.notes.append(f"fit_seconds [full_train]: {name} fitted on all {len(d.pool)} training rows "
                             f"({m.epochs_for(len(d.pool)) if hasattr(m, 'epochs_for') else s.epochs} epochs) "
                             f"in {sec:.1f} s")
        except Exception as e:
            run.fail(f"full-table timing {name}", e)


def table_ii(run: Run, imps: dict[str, Any], evalset: pd.DataFrame) -> None:
    from synthehr.evaluation import random_mask

    s, d = run.s, run.d
    f = s.perturb_feature
    if f not in d.features:
        run.notes.append(f"Table II skipped: perturbation feature {f!r} is not a feature of {d.dataset}")
        return
    spec = d.schema[f]
    pert = evalset.copy()
    v = pert[f].to_numpy(dtype=float) * s.perturb_factor
    v = np.clip(v, -np.inf if spec.lower is None else spec.lower, np.inf if spec.upper is None else spec.upper)
    pert[f] = v
    hidden_f = random_mask((len(pert), len(d.features)), 0.5, seed=s.seed + 1)
    hidden_f[:, d.features.index(f)] = False
    masked = pert.copy()
    masked[d.features] = pert[d.features].mask(hidden_f)
    masked[d.label] = np.nan
    run.notes.append(f"Table II protocol: {len(pert)} test rows, {f} x {s.perturb_factor} (clipped to "
                     f"[{spec.lower}, {spec.upper}]); kept: the edited {f} + each other feature with p = 0.5; label "
                     f"hidden; one draw per row; metrics vs the perturbed real rows (features only)")
    for name, model in imps.items():
        try:
            out, sec = timed(lambda: model.impute(masked, seed=s.seed))
            out = out.reset_index(drop=True)
            m = fidelity(pert, out, d.features)
            m["impute_seconds"] = sec
            run.add("II", name, m, "perturbed")
        except Exception as e:
            run.fail(f"Table II {name}", e)


def table_iii_iv(run: Run, imps: dict[str, Any], evalset: pd.DataFrame, fit_s: dict[str, float]) -> None:
    s, d = run.s, run.d
    names = d.schema.names
    # III: 50 % mask over the features; the label is always hidden and never scored
    hf, hidden = feature_mask(len(evalset), names, d.features, d.label, seed=s.seed)
    imp_fit = {**fit_s}
    if FD + ":vp" in fit_s:
        imp_fit[FD] = fit_s[FD + ":vp"]
    imputation_block(run, "III", "mask50", imps, evalset, hidden, imp_fit)
    run.log("Table III done")
    latency(run, imps, evalset, hidden)
    # IV: salient features observed, the rest hidden
    if not d.salient:
        run.notes.append("Table IV skipped: the dataset lists no salient features")
        return
    hidden4 = np.ones((len(evalset), len(names)), dtype=bool)
    for f in d.salient:
        hidden4[:, names.index(f)] = False
    run.notes.append(f"Table IV: observed = the {len(d.salient)} salient features present ({', '.join(d.salient)}); "
                     f"every other feature hidden and scored; label hidden, not scored")
    imputation_block(run, "IV", "salient", imps, evalset, hidden4, {})
    run.log("Table IV done")


def latency(run: Run, imps: dict[str, Any], evalset: pd.DataFrame, hidden: np.ndarray) -> None:
    s, d = run.s, run.d
    n = min(s.latency_rows, len(evalset))
    for name, model in imps.items():
        if name not in CONDITIONAL:
            continue
        try:
            obs = []
            for i in range(n):
                row = evalset.iloc[i]
                obs.append({c: row[c] for j, c in enumerate(d.schema.names) if not hidden[i, j]})
            model.condition(obs[0], n=100, seed=0)  # warm-up
            times = []
            for i, o in enumerate(obs):
                _, sec = timed(lambda: model.condition(o, n=100, seed=i))
                times.append(sec)
            run.add("III", name, {"reconstruct_ms": 1000.0 * float(np.median(times)),
                                  "reconstruct_ms_p90": 1000.0 * float(np.percentile(times, 90))}, "latency")
        except Exception as e:
            run.fail(f"latency {name}", e)


def replaced_share(constrained: pd.DataFrame, unconstrained: pd.DataFrame, features: list[str]) -> float:
    """Share of records whose `features` differ between a constrained sample and the unconstrained sample
    of the same seed (records in the same order; NaN equals NaN)."""
    a = constrained[features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    b = unconstrained[features].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return float(1.0 - same.all(axis=1).mean())


def table_v_vi(run: Run, gens: dict[str, Any], synth: dict[str, list[pd.DataFrame]], n_constr: int) -> None:
    from synthehr.constraints import generate_with_constraints

    s, d = run.s, run.d
    eqs = applicable_equations(d.schema)
    if not eqs:
        run.notes.append("Tables V/VI skipped: no constraint equation applies to this dataset's features")
        return
    run.notes.append(f"Tables V/VI: applicable equations {eqs}; constrained samples of {n_constr} rows "
                     f"(rejection budget {s.max_proposals_factor} x n proposal rows)")
    run.add("V", "real", constraint_rows(d.test), "enforced=none")
    for name, draws in synth.items():
        run.add("V", name, constraint_rows(draws[0]), "enforced=none")
    from synthehr.constraints import EQUATIONS

    settings = [("V", "enforced=all", "all", eqs)] + [("VI", f"enforced={EQUATION_SHORT[e]}", e, [e]) for e in eqs]
    run.notes.append("Tables V/VI: rmspe_other / mape_other / corr_diff_other = fidelity vs the test rows over the "
                     "features that no enforced equation touches; *_unconstrained = the same for the model's "
                     "unconstrained Table I samples (fidelity 'elsewhere' with and without enforcement); like "
                     "Table I, the fidelity metrics are means over --fidelity-draws constrained samples (seeds seed, "
                     "seed + 1, ...) and over Table I's draws, with *_sd; constraint MAE and sample_seconds are of "
                     "the first constrained sample. Paired: a constrained sample with seed s starts from the "
                     "model's own Table I sample with seed s and replaces only the records whose draw was "
                     "rejected (an equation's solved value outside its plausible range); replaced_share = the "
                     "share of the first constrained sample's records that differ from Table I's first draw on "
                     "those other features")
    for name, model in gens.items():
        if name not in ENFORCING:
            continue
        base = synth.get(name) or []
        for table_id, split, eq, names in settings:
            touched = {f for e in names for f in EQUATIONS[e].features}
            other = [f for f in d.features if f not in touched]
            try:
                def constrained(seed: int) -> pd.DataFrame:
                    return _typed(generate_with_constraints(model, n_constr, seed=seed, equations=eq,
                                                            max_proposals=s.max_proposals_factor * n_constr), d.schema)

                x, sec = timed(lambda: constrained(s.seed))
                xs = [x] + [constrained(s.seed + i) for i in range(1, max(1, int(s.fidelity_draws)))]
                m = constraint_rows(x)
                m.update(mean_fidelity([fidelity(d.test, xi, d.features) for xi in xs]))
                m.update(_suffixed(mean_fidelity([fidelity(d.test, xi, other) for xi in xs]), "_other"))
                if base:
                    m.update(_suffixed(mean_fidelity([fidelity(d.test, b, other) for b in base]),
                                       "_other_unconstrained"))
                    if len(base[0]) == len(x):
                        m["replaced_share"] = replaced_share(x, base[0], other)
                m["sample_seconds"] = sec
                run.add(table_id, name, m, split)
            except Exception as e:
                run.fail(f"Table {table_id} {name} {split}", e)
        if base and n_constr != len(base[0]):
            run.notes.append(f"{name}: the unconstrained samples of the Table V/VI comparison are Table I's "
                             f"({len(base[0])} rows, constrained samples have {n_constr})")


def table_vii(run: Run) -> None:
    from synthehr.evaluation import last_bins_layout, make_classifier, random_mask

    s, d = run.s, run.d
    feats, label = d.features, d.label
    lt = last_bins_layout(d.train_grid, feature_cols=feats, label_col=label, n_bins=6).reset_index(drop=True)
    ls = last_bins_layout(d.test_grid, feature_cols=feats, label_col=label, n_bins=6).reset_index(drop=True)
    schema = layout_schema(d.schema, feats, label)
    lt, ls = _typed(lt[schema.names], schema), _typed(ls[schema.names], schema)
    xcols = [c for c in schema.names if c != label]
    y_test = ls[label].to_numpy()
    run.notes.append(f"Table VII: last-6-bins layout, {len(lt)} training stays x {len(schema.names)} columns, "
                     f"{len(ls)} test stays; classifier = random forest ({s.tstr_trees} trees, median imputation + "
                     f"scaling, `make_classifier`); noise samples of {len(lt)} rows; random_masks: each training "
                     f"layout cell (label included) hidden with p = 0.5 and re-generated")

    x_test = ls[xcols].to_numpy(dtype=float)

    def score(x: pd.DataFrame) -> dict[str, float | None]:
        """Random forest (`make_classifier`, `--tstr-trees` trees) trained on x, tested on the real test stays."""
        from sklearn.metrics import accuracy_score, roc_auc_score

        y = pd.to_numeric(x[label], errors="coerce").round().to_numpy()
        ok = ~np.isnan(y)
        y = y[ok].astype(int)
        if len(np.unique(y)) < 2:
            return {"tstr_auroc": None, "tstr_accuracy": None}
        clf = make_classifier("random_forest", seed=s.seed)
        clf.set_params(randomforestclassifier__n_estimators=int(s.tstr_trees))
        clf.fit(x.loc[ok, xcols].to_numpy(dtype=float), y)
        p = clf.predict_proba(x_test)[:, list(clf.classes_).index(1)]
        return {"tstr_auroc": float(roc_auc_score(y_test, p)) if len(np.unique(y_test)) > 1 else None,
                "tstr_accuracy": float(accuracy_score(y_test, clf.predict(x_test)))}

    real = score(lt)
    run.add("VII", "real", {**real, "tstr_auroc_gap": 0.0}, "real")
    run.log(f"Table VII real AUROC {real['tstr_auroc']:.3f}")
    left = [m for m in GENERATORS if m in s.models and m not in s.tstr_models]
    run.notes.append(f"Table VII models: {', '.join(m for m in s.tstr_models if m in GENERATORS)}"
                     + (f"; not fitted on the layout (time; add them with --tstr-models): {', '.join(left)}"
                        if left else ""))
    hidden = random_mask(lt.shape, 0.5, seed=s.seed + 2)
    outcome_weight = s.outcome_weight or float(len(xcols))
    weights = {label: outcome_weight} if outcome_weight != 1 else None
    if any(m in TORCH_MODELS for m in s.tstr_models):
        run.notes.append(f"Table VII: vae / vaeac / pmvae train with the outcome's log-likelihood weighted "
                         f"{outcome_weight:g} (column_weights; --outcome-weight, default: as many as the layout's "
                         f"{len(xcols)} feature columns; 1 = unweighted): one column among {len(xcols) + 1}, the "
                         f"outcome otherwise gives the latent little reason to carry it")
    for name in s.tstr_models:
        if name not in GENERATORS:
            continue
        try:
            if name == FD and s.fd_max_rows and len(lt) > s.fd_max_rows:
                fit_table = lt.sample(n=s.fd_max_rows, random_state=s.seed).reset_index(drop=True)
            else:
                fit_table = lt
            model = make_model(name, s, column_weights=weights if name in TORCH_MODELS else None)
            _, fsec = timed(lambda: model.fit(fit_table, schema))
            run.add("VII", name, {"fit_seconds": fsec}, "layout")
            x, ssec = timed(lambda: model.sample(len(lt), seed=s.seed))
            m = score(_typed(x.reset_index(drop=True), schema))
            if m["tstr_auroc"] is not None and real["tstr_auroc"] is not None:
                m["tstr_auroc_gap"] = real["tstr_auroc"] - m["tstr_auroc"]
            run.add("VII", name, {**m, "sample_seconds": ssec}, "noise")
            if name in CONDITIONAL:
                x = model.impute(lt.mask(hidden), seed=s.seed)
                m = score(_typed(x.reset_index(drop=True), schema))
                if m["tstr_auroc"] is not None and real["tstr_auroc"] is not None:
                    m["tstr_auroc_gap"] = real["tstr_auroc"] - m["tstr_auroc"]
                run.add("VII", name, m, "random_masks")
            run.log(f"Table VII {name}: fit {fsec:.1f}s")
        except Exception as e:
            run.fail(f"Table VII {name}", e)


# ===================================================================================== targets
def _v(rows: list[dict], table: str, model: str, metric: str, split: str) -> float | None:
    for r in rows:
        if r["table"] == table and r["model"] == model and r["metric"] == metric and r["split"] == split:
            return r["value"]
    return None


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.4g}"


def check_targets(rows: list[dict], dataset: str) -> list[str]:
    """The issue's targets, each 'MET' / 'NOT MET' / 'n/a' with the numbers behind it."""
    out: list[str] = []

    def say(ok: bool | None, text: str) -> None:
        out.append(f"{'n/a' if ok is None else ('MET' if ok else 'NOT MET')}: {text}")

    ours = [m for m in ("pmvae", "vaeac") if any(r["model"] == m for r in rows)]
    # Table III imputation MSE
    mice, knn, mf = (_v(rows, "III", m, "imputation_mse", "mask50") for m in ("mice", "knn", "missforest"))
    for m in ours:
        v = _v(rows, "III", m, "imputation_mse", "mask50")
        if v is None:
            continue
        parts, ok = [], True
        if mice is not None:
            parts.append(f"≤ 0.5 x mice ({_fmt(0.5 * mice)})")
            ok &= v <= 0.5 * mice
        for ref, val in (("knn", knn), ("missforest", mf)):
            if val is not None:
                parts.append(f"< {ref} ({_fmt(val)})")
                ok &= v < val
        if parts:
            say(ok, f"imputation_mse {m} = {_fmt(v)}: " + ", ".join(parts))
    gbm = _v(rows, "III", "masked_gbm", "imputation_mse", "mask50")
    if gbm is not None and mice is not None:  # context for the 0.5 x MICE target, not a target itself
        out.append(f"reference: imputation_mse masked_gbm (gradient boosting trained on this mask protocol, one "
                   f"regressor per column) = {_fmt(gbm)} = {gbm / mice:.2f} x mice; 0.5 x mice = {_fmt(0.5 * mice)}")
    vae_nll = _v(rows, "III", "vae", "imputation_nll", "mask50")
    for m in ours:
        v = _v(rows, "III", m, "imputation_nll", "mask50")
        if v is not None and vae_nll is not None:
            say(v < vae_nll, f"imputation_nll {m} = {_fmt(v)} < vae's {_fmt(vae_nll)}")
    # Tables V / VI: exact enforcement, fidelity no worse
    enforced = [r for r in rows if r["table"] in ("V", "VI") and r["split"].startswith("enforced=")
                and r["split"] != "enforced=none" and r["metric"].startswith("constraint_mae_")]
    zero = []
    for r in enforced:
        eq = r["metric"][len("constraint_mae_"):]
        if r["split"] in ("enforced=all", f"enforced={eq}") and r["value"] is not None:
            zero.append(abs(r["value"]) < 1e-9)
    if zero:
        say(all(zero), f"constraint MAE of every enforced equation < 1e-9 ({sum(zero)}/{len(zero)} model x setting x "
                       f"equation cells)")
    for m in ("gaussian", "vae", "vaeac", "pmvae"):
        for metric in ("rmspe", "mape", "corr_diff"):
            a = _v(rows, "V", m, f"{metric}_other", "enforced=all")
            b = _v(rows, "V", m, f"{metric}_other_unconstrained", "enforced=all")
            if a is not None and b is not None:
                say(a <= 1.1 * b + 1e-12, f"{m} {metric} on the features no equation touches, all constraints "
                                          f"enforced {_fmt(a)} ≤ 1.1 x unconstrained {_fmt(b)} (10 % allowance for "
                                          f"sampling noise)")
    # Table I: floor and peers
    peers = [p for p in (*SDV_MODELS, FD) if _v(rows, "I", p, "rmspe", "test") is not None]
    for m in ours:
        for metric in ("rmspe", "mape", "corr_diff"):
            v, fl = _v(rows, "I", m, metric, "test"), _v(rows, "I", "real", metric, "test")
            if v is None or fl is None:
                continue
            say(v <= 1.2 * fl, f"Table I {m} {metric} = {_fmt(v)} ≤ 1.2 x real floor ({_fmt(1.2 * fl)})")
            pv = {p: _v(rows, "I", p, metric, "test") for p in peers}
            pv = {p: x for p, x in pv.items() if x is not None}
            if pv:
                listed = ", ".join(f"{p} {_fmt(x)}" for p, x in pv.items())
                say(all(v < x for x in pv.values()), f"Table I {m} {metric} better than every peer ({listed})")
    # Table VII
    for m in ours:
        for split in ("noise", "random_masks"):
            g = _v(rows, "VII", m, "tstr_auroc_gap", split)
            if g is not None:
                scope = "" if dataset == "physionet2012" else " (target stated for PhysioNet 2012)"
                say(g <= 0.01, f"TSTR AUROC gap {m} [{split}] = {_fmt(g)} ≤ 0.01{scope}")
    # memorisation
    hold = _v(rows, "I", "real", "dcr_median", "test")
    for m in ours:
        v = _v(rows, "I", m, "dcr_median", "test")
        if v is not None and hold is not None:
            say(v >= hold, f"median DCR {m} = {_fmt(v)} ≥ held-out real patients' {_fmt(hold)}")
    # fit time vs ForestDiffusion on the same table
    fd = _v(rows, "I", FD, "fit_seconds", "fd_table")
    for m in ours:
        v = _v(rows, "I", m, "fit_seconds", "fd_table")
        if v is not None and fd is not None:
            say(v <= 0.2 * fd, f"fit {m} {_fmt(v)} s ≤ 0.2 x forestdiffusion {_fmt(fd)} s on the same table")
    for m in ("vae", *ours):
        v = _v(rows, "III", m, "reconstruct_ms", "latency")
        if v is not None:
            say(v <= 20.0, f"reconstruct_ms {m} (condition one row, n=100, median) = {_fmt(v)} ≤ 20 ms")
    if dataset == "physionet2012":
        for m in ("vae", *ours):
            v = _v(rows, "I", m, "fit_seconds", "full_train")
            which = "all set-a rows"
            if v is None:
                v, which = _v(rows, "I", m, "fit_seconds", "train"), "the benchmark's training table"
            if v is not None:
                say(v <= 600.0, f"training {m} on {which} = {_fmt(v)} s ≤ 10 minutes")
    return out


# ==================================================================================== markdown
def render_markdown(doc: dict, targets: list[str]) -> str:
    env = doc["environment"]
    lines = [f"# {doc['suite']} — {doc['dataset']}", "",
             f"created {doc['created']} on {env['cpu']} ({env['cores']} cores), torch {env.get('torch')}", ""]
    if doc.get("reused"):
        r = doc["reused"]
        lines += [f"Rows of {', '.join(r['models'])} are reused unchanged from {r['path']}"
                  + (f" (git {r['commit']})" if r.get("commit") else "")
                  + f", created {r['created']}; refitted in this run: {', '.join(r['refitted'])} (and the 'real' "
                    f"floor rows). See the first note.", ""]
    df = pd.DataFrame(doc["rows"])
    if df.empty:
        return "\n".join(lines + ["(no rows)"]) + "\n"
    df["row"] = df["metric"] + df["split"].map(lambda s: f" [{s}]" if s else "")
    order = [m for m in ("real", *ALL_MODELS) if m in set(df["model"])]
    order += [m for m in dict.fromkeys(df["model"]) if m not in order]
    for tid, title in TABLE_TITLES.items():
        sub = df[df["table"] == tid]
        if sub.empty:
            continue
        t = sub.pivot_table(index="row", columns="model", values="value", aggfunc="first", sort=False, dropna=False)
        t = t[[m for m in order if m in t.columns]]
        lines += [f"## {title}", "", "| metric | " + " | ".join(t.columns) + " |", "|" + "---|" * (len(t.columns) + 1)]
        for row, r in t.iterrows():
            lines.append(f"| {row} | " + " | ".join(_cell(v) for v in r.to_numpy()) + " |")
        lines.append("")
    if targets:
        lines += ["## Targets (issue 4 §5) checked on this run", ""] + [f"- {t}" for t in targets] + [""]
    if doc.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if 0 < a < 1e-3:
        return f"{v:.2e}"
    return f"{v:.4g}"


# ======================================================================================= entry
def run_dataset(s: Settings) -> tuple[list[dict], list[str], list[str], dict | None]:
    """Run every table on one dataset; returns (rows, notes, targets, reuse record or None)."""
    import scipy.linalg  # noqa: F401  (load every BLAS library before limiting its threads)
    import sklearn.linear_model  # noqa: F401
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, int(s.threads)))
    # OpenBLAS worker threads spin while waiting: on a shared 2-core machine a 3000 x 30 SVD took 0.4 s
    # with 2 threads and 0.01 s with 1 (MICE's BayesianRidge fit went from ~190 s to ~14 s).
    with threadpool_limits(limits=max(1, int(s.threads)), user_api="blas"):
        return _run_dataset(s)



def _run_dataset(s: Settings) -> tuple[list[dict], list[str], list[str], dict | None]:
    reuse = load_reuse(s) if s.reuse_rows else None
    data = load_data(s.dataset, Path(s.cache), s.seed, s.max_train_rows)
    s.label = data.label
    if reuse is not None:  # reused models are not fitted on the Table VII layout again either
        check_reused_settings(reuse, s)
        s.tstr_models = tuple(m for m in s.tstr_models if m not in reuse.models)
    run = Run(s, data)
    run.reused_models = reuse.models if reuse is not None else ()
    n_synth = s.n_synth or min(len(data.train), N_SYNTH_CAP)
    n_constr = s.constrained_n or n_synth
    evalset = data.test.sample(n=min(s.n_eval, len(data.test)), random_state=s.seed).reset_index(drop=True)
    sizes = check_reuse_sizes(reuse, data, len(evalset), n_synth) if reuse is not None else ""
    floor_checked: list[tuple[int, float]] = []

    def floor(*tables: str) -> None:
        if reuse is not None:
            floor_checked.append(check_floor(reuse, run.rows, tables))
    run.notes += [
        f"{data.source_note}: {len(data.pool)} training rows available, models fitted on {len(data.train)} "
        f"(--max-train-rows {s.max_train_rows}, seed {s.seed}; the same rows for every model), {len(data.test)} test "
        f"rows; {len(data.features)} features + label {data.label!r}",
        f"settings: epochs {s.epochs or 'model default (max(40, ceil(3200 / steps per epoch)))'} (vae/vaeac/pmvae), ctgan epochs {s.ctgan_epochs}, tvae epochs {s.tvae_epochs}, "
        f"synthetic n {n_synth}, n_eval {len(evalset)} test rows for Tables II-IV, impute draws {s.impute_draws}, "
        f"conditional-mean latent draws {s.mean_samples}, "
        f"NLL latent samples {s.nll_samples}, torch threads {s.threads}, quick={s.quick}",
        *s.extra_notes,
    ]
    run.log(f"train {len(data.train)} rows, test {len(data.test)} rows, models {','.join(s.models)}")

    def checkpoint(done: str) -> None:  # partial results survive an interrupted run
        write_doc(s, merge_rows(run.rows, reuse), [*run.notes, f"PARTIAL: written after {done} "
                                                               f"({run.elapsed():.0f} s)"], [],
                  reuse.info() if reuse is not None else None)

    gens, imps, fit_s = fit_grid_models(run)
    synth = table_i(run, gens, fit_s, n_synth)
    floor("I")
    run.log("Table I done")
    checkpoint("Table I")
    table_ii(run, imps, evalset)
    run.log("Table II done")
    table_iii_iv(run, imps, evalset, fit_s)
    checkpoint("Tables II-IV")
    table_v_vi(run, gens, synth, n_constr)
    floor("V", "VI")
    run.log("Tables V/VI done")
    checkpoint("Tables V/VI")
    del gens, imps, synth
    table_vii(run)
    floor("VII")
    run.log("Table VII done")
    checkpoint("Table VII")
    timing_extra(run, fit_s)
    run.notes.append(f"wall time {run.elapsed():.0f} s for {s.dataset} (grid fits: "
                     + ", ".join(f"{k} {v:.1f} s" for k, v in fit_s.items()) + ")")
    if reuse is not None:
        n_floor = sum(n for n, _ in floor_checked)
        worst = max((w for _, w in floor_checked), default=0.0)
        then, now = reuse.doc.get("environment", {}).get("versions", {}), run_versions()
        changed = [f"{k} {then.get(k)} -> {v}" for k, v in now.items() if then.get(k) != v]
        run.notes[:0] = [
            f"REUSED ROWS: {reuse.describe()}. Checked before merging: same suite, dataset and row-shaping "
            f"settings ({', '.join(REUSE_KEYS)} + the reused models' own), each reused model's recorded "
            f"settings equal to those the current code builds, same split sizes ({sizes}), and the "
            f"{n_floor} 'real' floor rows recomputed now equal that file's (largest relative difference "
            f"{worst:.1e}); package versions "
            + ("unchanged" if not changed else "changed: " + ", ".join(changed))
            + f". Table VII rows of the reused models are reused too. Targets below are computed from the merged "
              f"rows."]
        run.notes += reused_notes(reuse)
    rows = merge_rows(run.rows, reuse)
    targets = check_targets(rows, s.dataset)
    return rows, run.notes, targets, (reuse.info() if reuse is not None else None)


def run_versions() -> dict:
    from synthehr.benchmarks.results import environment

    return environment()["versions"]


def write_doc(s: Settings, rows: list[dict], notes: list[str], targets: list[str],
              reused: dict | None = None) -> tuple[Path, Path]:
    """`<results>/intergenehr-<dataset>.json` (long rows + settings + targets) and the sectioned Markdown."""
    jpath, mpath = write_results(SUITE, s.dataset, rows, s.results, notes=notes)
    doc = json.loads(jpath.read_text())
    doc["settings"] = {k: (list(v) if isinstance(v, tuple) else
                           display_path(v) if k in ("results", "cache", "reuse_rows") and v else v)
                       for k, v in s.__dict__.items() if k != "extra_notes"}
    if reused:
        doc["reused"] = reused
    doc["targets"] = targets
    jpath.write_text(json.dumps(doc, indent=2))
    mpath.write_text(render_markdown(doc, targets))
    return jpath, mpath


def run_intergenehr_benchmark(dataset: str = "physionet2012", results: str | Path = "benchmarks/results", *,
                              max_train_rows: int | None = None, epochs: int | None = None,
                              models: Sequence[str] | None = None, quick: bool = False,
                              **options: Any) -> dict[str, tuple[Path, Path]]:
    """Run the suite on `dataset` ("physionet2012", "mimic-iv-demo" or "all") and write
    `<results>/intergenehr-<dataset>.json` and `.md`. Other keyword options are `Settings` fields
    (e.g. n_synth, n_eval, tstr_models, fd_max_rows, full_fit_models, cache, seed). Returns
    {dataset: (json path, markdown path)}."""
    explicit = {k for k, v in dict(max_train_rows=max_train_rows, epochs=epochs, models=models).items()
                if v is not None} | set(options)
    out: dict[str, tuple[Path, Path]] = {}
    if dataset == "all" and options.get("reuse_rows"):
        raise SystemExit("--reuse-rows names one dataset's results file: run one --dataset at a time")
    for ds in (DATASETS if dataset == "all" else (dataset,)):
        s = Settings(dataset=ds, results=str(results), quick=quick)
        for k, v in options.items():
            if not hasattr(s, k):
                raise TypeError(f"unknown option {k!r}")
            setattr(s, k, tuple(v) if isinstance(v, list) else v)
        if max_train_rows is not None:
            s.max_train_rows = int(max_train_rows)
        if epochs is not None:
            s.epochs = int(epochs)
        if models is not None:
            s.models = tuple(models)
        if quick:
            s = quick_settings(s, explicit)
        if ds == "physionet2012" and "full_fit_models" not in explicit and not quick:
            s.full_fit_models = ("pmvae",)
        unknown = [m for m in (*s.models, *s.tstr_models) if m not in ALL_MODELS]
        if unknown:
            raise SystemExit(f"unknown model(s) {unknown}; choose from {', '.join(ALL_MODELS)}")
        rows, notes, targets, reused = run_dataset(s)
        jpath, mpath = write_doc(s, rows, notes, targets, reused)
        print(f"results → {jpath} and {mpath}", flush=True)
        out[ds] = (jpath, mpath)
    return out


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="synthehr benchmark intergenehr", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="physionet2012", choices=[*DATASETS, "all"])
    p.add_argument("--results", default="benchmarks/results", help="output folder")
    p.add_argument("--cache", default=str(CACHE), help="prepared-data cache folder")
    p.add_argument("--max-train-rows", type=int, help="training rows every model is fitted on (default 0 = all; "
                                                      "--quick 1000)")
    p.add_argument("--epochs", type=int, help="epochs of vae / vaeac / pmvae (default 0 = the models' own: at "
                                              "least 40 epochs and 3,200 optimizer steps; --quick 2)")
    p.add_argument("--models", help=f"comma list from {','.join(ALL_MODELS)} (default: all; --quick: "
                                    f"{','.join(QUICK_MODELS)})")
    p.add_argument("--tstr-models", help="models fitted on the last-6-bins layout for Table VII (default: "
                                         f"{','.join(DEFAULT_TSTR_MODELS)}; --quick: the quick generators)")
    p.add_argument("--quick", action="store_true", help="tiny epochs and sizes (a smoke test, not a benchmark)")
    p.add_argument("--n-synth", type=int, help="synthetic rows for Tables I/V (default: the training table's size, at most 5000)")
    p.add_argument("--n-eval", type=int, help="test rows for Tables II-IV (default 2000)")
    p.add_argument("--ctgan-epochs", type=int)
    p.add_argument("--tvae-epochs", type=int)
    p.add_argument("--fd-max-rows", type=int, help="ForestDiffusion training rows (default 1000; 0 = all)")
    p.add_argument("--missforest-max-rows", type=int, help="missForest training rows (default: the training table)")
    p.add_argument("--impute-draws", type=int)
    p.add_argument("--nll-samples", type=int)
    p.add_argument("--mean-samples", type=int, help="latent draws of the VAE family's conditional mean "
                                                    "(Tables III/IV point imputation; default 100)")
    p.add_argument("--fidelity-draws", type=int, help="Table I: synthetic samples (and floor subsamples) whose "
                                                       "metrics are averaged (default 5)")
    p.add_argument("--latency-rows", type=int)
    p.add_argument("--perturb-feature")
    p.add_argument("--perturb-factor", type=float)
    p.add_argument("--constrained-n", type=int, help="rows per constrained sample (default: synthetic n)")
    p.add_argument("--full-fit-models", help="torch models also timed on every training row (default on "
                                             "physionet2012: pmvae; empty string for none)")
    p.add_argument("--tstr-trees", type=int, help="trees of the TSTR random forest (default 200)")
    p.add_argument("--outcome-weight", type=float, help="Table VII: weight of the outcome's log-likelihood in "
                                                        "vae / vaeac / pmvae training (default 0 = as many as "
                                                        "the layout's feature columns; 1 = unweighted)")
    p.add_argument("--threads", type=int, help="torch threads (default 1: busy-waiting workers slow shared CPUs)")
    p.add_argument("--seed", type=int)
    p.add_argument("--model-seed", type=int, help="training seed of vae / vaeac / pmvae only (default: --seed); "
                                                  "the split, the samples and every other model keep --seed: "
                                                  "how much of a result is the training seed's luck")
    p.add_argument("--hidden", help="hidden layer widths of vae / vaeac / pmvae, comma list (default: the "
                                    "models' own, 256,256)")
    p.add_argument("--reuse-rows", metavar="OLD.json",
                   help="take every row of each model NOT named by --models from this earlier results file of the "
                        "same suite and dataset (refused if its settings, split sizes or 'real' floor differ); "
                        "refit --models and recompute the floor; the merged file says what came from where")
    a = p.parse_args(argv)
    for var in ("OMP_WAIT_POLICY",):  # only reaches libraries loaded after this point; see run_dataset
        os.environ.setdefault(var, "PASSIVE")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(a.threads or 1))
    options: dict[str, Any] = {}
    for k in ("cache", "n_synth", "n_eval", "ctgan_epochs", "tvae_epochs", "fd_max_rows", "missforest_max_rows",
              "impute_draws", "mean_samples", "fidelity_draws",
              "nll_samples", "latency_rows", "perturb_feature", "perturb_factor", "constrained_n", "threads", "seed",
              "tstr_trees", "outcome_weight", "reuse_rows", "model_seed"):
        v = getattr(a, k)
        if v is not None and not (k == "cache" and v == str(CACHE)):
            options[k] = v
    options["cache"] = a.cache
    if a.tstr_models is not None:
        options["tstr_models"] = _csv(a.tstr_models)
    if a.hidden:
        try:
            options["hidden"] = tuple(int(h) for h in _csv(a.hidden))
        except ValueError:
            p.error(f"--hidden takes a comma list of positive integers, got {a.hidden!r}")
    if a.full_fit_models is not None:
        options["full_fit_models"] = _csv(a.full_fit_models)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    run_intergenehr_benchmark(a.dataset, a.results, max_train_rows=a.max_train_rows, epochs=a.epochs,
                              models=_csv(a.models) if a.models is not None else None, quick=a.quick, **options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
