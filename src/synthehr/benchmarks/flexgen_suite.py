"""FLEXGEN-EHR benchmark: `synthehr benchmark flexgen --dataset physionet2012|mimic-iv-demo [options]`.

Records are ICU stays (`stay_table`: static columns + the first 48 h of the 4-hour grid + in-hospital
death).  PhysioNet 2012: train on set-a, evaluate on set-b (all stays of each).  MIMIC-IV demo:
train on the `train` split, evaluate on `tuning` + `held_out`.

Metrics (synthehr.evaluation), synthetic sample the size of the training set:
  dimwise_r2      dimension-wise R2 of per-column scaled means vs the real training table
                  (categoricals one-hot, so their dimensions are level probabilities)
  mmd             Gaussian-kernel MMD² vs the real training table (≤ 2000 rows a side)
  tstr_auroc/aupr random forest trained on the synthetic table, tested on the real test set;
                  model "real" = trained on the real training table (TRTR)
  mia_accuracy    distance-based membership inference (members: training stays, non-members: test stays)
  fit_seconds / sample_seconds  wall time on this machine
  cond_death_score  mean P(death) that the TRTR forest gives to 500 stays generated with
                  condition({label: 1}) (label-conditioned generation) — compare with `uncond_death_score`
Models: real, flexgen (DDPM, 50 steps), flexgen-ddim10 (same fit, DDIM 10 steps), peers: `vae` (the
conditioning issue's VAE on the flattened stay rows) and SDV `par` (PARSynthesizer on the long grid
with the static columns as context) when they run here.

--sweep: p % of training stays static-only and q % temporal-only, flexgen with GW alignment vs
kNN-imputed data (sklearn KNNImputer on the standardized wide table, as §5.5) + flexgen.
--gw-option KEY=VALUE (repeatable) sets one of flexgen's alignment hyper-parameters (ALIGNMENT_KEYS)
for the main table and the sweep; LEGACY_ALIGNMENT holds the values from before the anchored,
label-aware map existed: ``--gw-option gw_pair_weight=1 --gw-option gw_label_map=false
--gw-option gw_donors=0 --gw-option impute_noise=true --gw-option vae_epoch_scale=false``.

--sweep-cache keeps finished points per sweep configuration; flexgen-gw rows are stored with the
alignment hyper-parameters they were fitted with and reused only under the same ones, while the
knn+flexgen rows (no alignment: the kNN-completed table has every modality) are reused whatever
the alignment, so a changed alignment reruns only the flexgen-gw fits.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthehr.benchmarks.results import make_row, markdown_table, write_results

SUITE = "flexgen"
CACHE = Path(tempfile.gettempdir()) / "synthehr-bench-cache"  # shared by the suites: prepared once


# ------------------------------------------------------------------------------------------- data
def _shared_root() -> Path:
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def _prepared(name: str, source: str, path: Path, cache: Path, **kw):
    from synthehr.data import load_prepared, prepare

    out = cache / name
    if (out / "dataset.json").is_file():
        return load_prepared(out)
    return prepare(source, path, out, progress=False, **kw)


def load_dataset(dataset: str, cache: Path = CACHE, shared: Path | None = None, hours: float = 48.0):
    """(train table, test table, schema, label) of stay rows."""
    from synthehr.models.latent_diffusion import stay_table

    shared = shared or _shared_root()
    if dataset == "physionet2012":
        root = shared / "physionet-challenge-2012"
        a = _prepared("physionet2012-set-a", "physionet2012", root / "set-a.tar.gz", cache)
        b = _prepared("physionet2012-set-b", "physionet2012", root / "set-b.tar.gz", cache)
        train, schema = stay_table(a, hours=hours)
        test, schema_b = stay_table(b, hours=hours)
        test = _conform(test, schema)
        return train, test, schema, a.label
    if dataset == "mimic-iv-demo":
        repo = Path(__file__).resolve().parents[3]
        raw = repo / "data" / "demo" / "mimic-iv-demo-2.2"
        meds = repo / "data" / "demo" / "mimic-iv-demo-meds"
        if not raw.is_dir():
            raw, meds = shared / "mimic-iv-demo-2.2", shared / "mimic-iv-demo-meds-0.0.1"
        p = _prepared("mimic-iv-demo", "mimic-iv", raw, cache, meds=meds)
        table, schema = stay_table(p, hours=hours)
        splits = p.static.drop_duplicates("stay_id").set_index("stay_id")["split"].reindex(table.index)
        return (table[splits.to_numpy() == "train"], table[splits.to_numpy() != "train"], schema, p.label)
    raise SystemExit(f"unknown dataset {dataset!r}; choose physionet2012 or mimic-iv-demo")


def _conform(table: pd.DataFrame, schema) -> pd.DataFrame:
    """Test table with the training schema's columns; unseen categorical levels become NaN."""
    table = table.reindex(columns=schema.names)
    for spec in schema.columns:
        if spec.kind == "categorical":
            known = set(map(str, spec.categories))
            table[spec.name] = table[spec.name].where(table[spec.name].map(lambda v: str(v) in known), np.nan)
    return table


def numeric_view(table: pd.DataFrame, schema, label: str) -> tuple[pd.DataFrame, np.ndarray]:
    """(features as floats with categoricals one-hot, label array)."""
    cols: dict[str, Any] = {}
    for spec in schema.columns:
        if spec.name == label:
            continue
        s = table[spec.name]
        if spec.kind == "categorical":
            sv = s.map(lambda v: None if pd.isna(v) else str(v))
            for c in spec.categories:
                cols[f"{spec.name}={c}"] = np.where(sv.isna(), np.nan, (sv == str(c)).astype(float))
        else:
            cols[spec.name] = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
    return pd.DataFrame(cols), pd.to_numeric(table[label]).to_numpy()


# ------------------------------------------------------------------------------------- metrics
class Evaluator:
    def __init__(self, train: pd.DataFrame, test: pd.DataFrame, schema, label: str, seed: int = 0,
                 mmd_rows: int = 2000):
        self.schema, self.label, self.seed, self.mmd_rows = schema, label, seed, mmd_rows
        self.x_train, self.y_train = numeric_view(train, schema, label)
        self.x_test, self.y_test = numeric_view(test, schema, label)
        self._trtr = None

    @property
    def trtr(self):
        """The forest trained on the real training table (fitted on first use: sweep workers never need it)."""
        if self._trtr is None:
            from synthehr.evaluation import make_classifier

            self._trtr = make_classifier("random_forest", self.seed).fit(self.x_train.to_numpy(float), self.y_train)
        return self._trtr

    def tstr(self, x: pd.DataFrame, y: np.ndarray) -> dict[str, float]:
        from synthehr.evaluation import run_tstr

        res = run_tstr((x, y), None, (self.x_test, self.y_test), models=("random_forest",), seed=self.seed,
                       positive_label=1)
        m = res.metrics["random_forest"]["tstr"]
        return {"tstr_auroc": m["auroc"], "tstr_aupr": m["aupr"]}

    def fidelity(self, x: pd.DataFrame) -> dict[str, float]:
        from synthehr.evaluation import dimension_wise_r2, gaussian_kernel_mmd

        return {"dimwise_r2": dimension_wise_r2(self.x_train, x),
                "mmd": gaussian_kernel_mmd(self.x_train, x, max_rows=self.mmd_rows, seed=self.seed)}

    def privacy(self, x: pd.DataFrame) -> dict[str, float]:
        from synthehr.evaluation import membership_inference

        return {"mia_accuracy": membership_inference(self.x_train, self.x_test, x, seed=self.seed)["accuracy"]}

    def death_score(self, table: pd.DataFrame) -> float:
        x, _ = numeric_view(table, self.schema, self.label)
        return float(self.trtr.predict_proba(x.to_numpy(float))[:, list(self.trtr.classes_).index(1)].mean())

    def all(self, table: pd.DataFrame, privacy: bool = True) -> dict[str, float]:
        x, y = numeric_view(table, self.schema, self.label)
        out = {**self.fidelity(x), **self.tstr(x, y)}
        if privacy:
            out.update(self.privacy(x))
        return out

    def real_reference(self) -> dict[str, float]:
        """The 'real' row: TRTR utility (the same forest as `make_classifier`, already fitted on the real
        training table); fidelity of the real test set seen as a 'synthetic' one."""
        from sklearn.metrics import average_precision_score, roc_auc_score

        p = self.trtr.predict_proba(self.x_test.to_numpy(float))[:, list(self.trtr.classes_).index(1)]
        target = (self.y_test == 1).astype(int)
        return {**self.fidelity(self.x_test), "tstr_auroc": float(roc_auc_score(target, p)),
                "tstr_aupr": float(average_precision_score(target, p))}


# ------------------------------------------------------------------------------------- models
def flexgen_params(args, seed: int | None = None, sweep: bool = False) -> dict[str, Any]:
    """FlexGenEHR keyword arguments of the main run, or of the sweep (`sweep=True`: its epoch overrides)."""
    vae_epochs = (args.sweep_vae_epochs or args.vae_epochs) if sweep else args.vae_epochs
    diffusion_epochs = (args.sweep_diffusion_epochs or args.diffusion_epochs) if sweep else args.diffusion_epochs
    out = dict(vae_epochs=vae_epochs, diffusion_epochs=diffusion_epochs, encoder=args.encoder,
               guidance_weight=args.guidance_weight, batch_size=args.batch_size, lr=args.lr,
               seed=args.seed if seed is None else seed, label=None)
    if args.decoder_noise is not None:
        out["decoder_noise"] = args.decoder_noise
    out.update(gw_options(getattr(args, "gw_option", None)))
    return out


def gw_options(items) -> dict[str, Any]:
    """--gw-option KEY=VALUE items as a dict (VALUE read as JSON, else kept as text); only ALIGNMENT_KEYS."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if not sep or key.strip() not in ALIGNMENT_KEYS:
            raise SystemExit(f"--gw-option wants KEY=VALUE with KEY one of {ALIGNMENT_KEYS}, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


# flexgen hyper-parameters that change a fit only when a modality is missing (not the knn+flexgen fits)
ALIGNMENT_KEYS = ("imputation", "gw_epsilon", "gw_max_points", "gw_label_aware", "knn_k", "impute_noise",
                  "gw_pair_weight", "gw_label_map", "gw_donors", "vae_epoch_scale")
# what a cached flexgen-gw row without an "alignment" record was fitted with (the options did not exist yet)
LEGACY_ALIGNMENT = {"imputation": "gw", "gw_epsilon": 0.005, "gw_max_points": 500, "gw_label_aware": True,
                    "knn_k": 5, "impute_noise": True, "gw_pair_weight": 1.0, "gw_label_map": False, "gw_donors": 0,
                    "vae_epoch_scale": False}


def alignment_signature(args) -> dict[str, Any]:
    """The sweep flexgen's alignment hyper-parameters (the model's defaults plus the CLI overrides)."""
    import inspect

    from synthehr.models.latent_diffusion import FlexGenEHR

    defaults = {k: v.default for k, v in inspect.signature(FlexGenEHR.__init__).parameters.items()}
    params = flexgen_params(args, sweep=True)
    hp = FlexGenEHR(**{k: params.get(k, defaults[k]) for k in ALIGNMENT_KEYS}).hyperparameters  # validated, typed
    return {k: hp[k] for k in ALIGNMENT_KEYS}


def fit_flexgen(table: pd.DataFrame, schema, label: str, params: dict[str, Any]):
    from synthehr.models.latent_diffusion import FlexGenEHR

    model = FlexGenEHR(**{**params, "label": label})
    t0 = time.perf_counter()
    model.fit(table, schema)
    return model, time.perf_counter() - t0


def timed_sample(model, n: int, seed: int) -> tuple[pd.DataFrame, float]:
    t0 = time.perf_counter()
    out = model.sample(n, seed=seed)
    return out, time.perf_counter() - t0


def profiled_sample(model, n: int, seed: int, repeats: int = 1) -> tuple[pd.DataFrame, dict[str, float]]:
    """Sample `repeats` times with the same seed (same output); wall times of the fastest repeat.

    Returns the sample and {sample_seconds, sample_latent_seconds (Gaussian start + reverse diffusion),
    sample_decoder_seconds (VAE decoder nets), sample_table_seconds (codec decode + DataFrame),
    denoiser_calls}.  The minimum over repeats is the usual guard against a shared, busy CPU.
    """
    best: dict[str, float] | None = None
    out = None
    for _ in range(max(1, int(repeats))):
        t0 = time.perf_counter()
        sample = model.sample(n, seed=seed)
        total = time.perf_counter() - t0
        if out is None:
            out = sample
        if best is None or total < best["sample_seconds"]:
            t = dict(getattr(model, "sample_timings_", {}))
            best = {"sample_seconds": total, **{f"sample_{k}" if k.endswith("_seconds") else k: v
                                                 for k, v in t.items()}}
    return out, best


def knn_impute_table(table: pd.DataFrame, schema, label: str, k: int = 5) -> pd.DataFrame:
    """§5.5 baseline: kNN imputation of the missing modality in data space (standardized wide table)."""
    from sklearn.impute import KNNImputer

    x, y = numeric_view(table, schema, label)
    mu, sd = x.mean().fillna(0.0), x.std().replace(0, 1).fillna(1)
    filled = KNNImputer(n_neighbors=k, keep_empty_features=True).fit_transform(((x - mu) / sd).to_numpy(float))
    filled = pd.DataFrame(filled, columns=x.columns) * sd.to_numpy() + mu.to_numpy()
    out = table.copy().reset_index(drop=True)
    for spec in schema.columns:
        if spec.name == label:
            continue
        if spec.kind == "categorical":
            block = filled[[f"{spec.name}={c}" for c in spec.categories]].to_numpy()
            levels = np.empty(len(spec.categories), dtype=object)
            levels[:] = list(spec.categories)
            values = pd.Series(levels[np.nan_to_num(block, nan=-1).argmax(1)])
            out[spec.name] = out[spec.name].astype(object).where(out[spec.name].notna(), values)
        elif spec.kind == "binary":
            out[spec.name] = out[spec.name].fillna(pd.Series(np.clip(np.rint(filled[spec.name]), 0, 1)))
        else:
            out[spec.name] = out[spec.name].fillna(pd.Series(filled[spec.name].to_numpy()))
    return out


def vae_peer(table, schema, epochs: int, seed: int):
    from synthehr.models.training import make_generator

    model = make_generator("vae", epochs=epochs, seed=seed)
    t0 = time.perf_counter()
    model.fit(table, schema)
    return model, time.perf_counter() - t0


class PARPeer:
    """SDV PARSynthesizer over the long grid (sequence = stay, index = bin), static columns + label as context."""

    def __init__(self, schema, label: str, epochs: int, seed: int):
        from synthehr.models.latent_diffusion import modality_columns, parse_temporal

        self.schema, self.label, self.epochs, self.seed = schema, label, epochs, seed
        self.static, temporal = modality_columns(schema.names, label)
        self.features = list(dict.fromkeys(parse_temporal(c)[0] for c in temporal))
        self.steps = max(parse_temporal(c)[1] for c in temporal) + 1

    def _long(self, table: pd.DataFrame) -> pd.DataFrame:
        t = table.reset_index(drop=True)
        parts = []
        for k in range(self.steps):
            part = t[self.static + [self.label]].copy()
            for f in self.features:
                part[f] = t.get(f"{f}__t{k}", np.nan)
            part["sid"] = np.arange(len(t))
            part["bin"] = k
            parts.append(part)
        return pd.concat(parts).sort_values(["sid", "bin"]).reset_index(drop=True)

    def fit(self, table: pd.DataFrame) -> "PARPeer":
        from sdv.metadata import Metadata
        from sdv.sequential import PARSynthesizer

        long = self._long(table)
        cols = {"sid": {"sdtype": "id"}, "bin": {"sdtype": "numerical"}}
        for name in self.static + [self.label]:
            cols[name] = {"sdtype": "numerical" if self.schema[name].kind == "continuous" else "categorical"}
        for f in self.features:
            kind = self.schema[f"{f}__t0"].kind
            cols[f] = {"sdtype": "numerical" if kind == "continuous" else "categorical"}
        meta = Metadata.load_from_dict({"tables": {"stays": {"columns": cols, "sequence_key": "sid",
                                                             "sequence_index": "bin"}}})
        import torch

        torch.manual_seed(self.seed)
        np.random.seed(self.seed)
        self.model = PARSynthesizer(meta, context_columns=self.static + [self.label], epochs=self.epochs,
                                    enforce_min_max_values=True, verbose=False)
        self.model.fit({"stays": long})  # SDV 2 takes {table name: DataFrame}
        return self

    def sample(self, n: int, seed: int = 0) -> pd.DataFrame:
        import torch

        torch.manual_seed(seed)
        np.random.seed(seed)
        long = self.model.sample_sequences(num_sequences=n, sequence_length=self.steps)
        if isinstance(long, dict):
            long = long["stays"]
        rows = []
        for _, g in long.groupby("sid", sort=False):
            g = g.sort_values("bin").head(self.steps)
            r = {c: g[c].iloc[0] for c in self.static + [self.label]}
            for k, (_, step) in enumerate(g.iterrows()):
                for f in self.features:
                    r[f"{f}__t{k}"] = step[f]
            rows.append(r)
        return pd.DataFrame(rows).reindex(columns=self.schema.names)


# ---------------------------------------------------------------------------------- sweep
SWEEP_METRICS = ("dimwise_r2", "tstr_auroc", "tstr_aupr")
_WORKER_DATA: dict[tuple, Any] = {}


def sweep_pairs(args) -> list[tuple[int, int]]:
    """(p, q) settings, (0, 0) first: the grid's pairs with p + q < 100, or the explicit --sweep-points."""
    grid = [int(v) for v in args.sweep_grid.split(",")]
    pairs = ([tuple(int(v) for v in item.split(":")) for item in args.sweep_points.split(",")]
             if args.sweep_points else [(p, q) for p in grid for q in grid if p + q < 100])
    return [(0, 0)] + [pq for pq in pairs if pq != (0, 0)]


def sweep_seeds(args) -> list[int]:
    return [int(v) for v in args.seeds.split(",")] if args.seeds else [args.seed]


def _sweep_is_main(args, n_train: int) -> bool:
    """Whether the sweep's flexgen is the main table's (same epochs, no subsample)."""
    return (args.sweep_vae_epochs in (0, args.vae_epochs) and args.sweep_diffusion_epochs in (0, args.diffusion_epochs)
            and not (args.sweep_max_train and args.sweep_max_train < n_train))


def _sweep_config(args) -> dict[str, Any]:
    keys = ("dataset", "cache", "max_train", "seed", "n_synth", "sweep_max_train", "vae_epochs", "diffusion_epochs",
            "sweep_vae_epochs", "sweep_diffusion_epochs", "encoder", "guidance_weight", "batch_size", "lr",
            "decoder_noise", "gw_option")
    return {k: getattr(args, k, None) for k in keys}


def _sweep_data(cfg: dict[str, Any]):
    key = (cfg["dataset"], cfg["cache"], cfg["max_train"], cfg["seed"])
    if key not in _WORKER_DATA:
        train, test, schema, label = load_dataset(cfg["dataset"], Path(cfg["cache"]))
        if cfg["max_train"] and len(train) > cfg["max_train"]:
            train = train.sample(n=cfg["max_train"], random_state=cfg["seed"])
        _WORKER_DATA.clear()
        _WORKER_DATA[key] = (train, test, schema, label)
    return _WORKER_DATA[key]


def sweep_point(cfg: dict[str, Any], seed: int, p: int, q: int,
                models: tuple[str, ...] = ("flexgen-gw", "knn+flexgen")) -> list[dict]:
    """One sweep setting for one seed: rows of flexgen-gw and knn+flexgen (at (0, 0) one shared fit).

    Runs in a worker process (or inline): loads the data itself; everything is seeded by `seed`.
    `models`: which of the two to fit (the other's rows come from the --sweep-cache).
    """
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=FutureWarning)
    from synthehr.models.latent_diffusion import drop_modalities

    t0 = time.perf_counter()
    train, test, schema, label = _sweep_data(cfg)
    ev = Evaluator(train, test, schema, label, seed=seed)
    data = train
    if cfg["sweep_max_train"] and len(train) > cfg["sweep_max_train"]:
        data = train.sample(n=cfg["sweep_max_train"], random_state=seed)
    n_synth = cfg["n_synth"] or len(data)
    args = argparse.Namespace(**cfg)
    params = flexgen_params(args, seed=seed, sweep=True)
    split, rows = f"p{p}-q{q}", []

    def scored(table: pd.DataFrame) -> tuple[dict[str, float], float]:
        model, fit_s = fit_flexgen(table, schema, label, params)
        x, y = numeric_view(model.sample(n_synth, seed=seed), schema, label)
        return {"dimwise_r2": ev.fidelity(x)["dimwise_r2"], **ev.tstr(x, y)}, fit_s

    if p == 0 and q == 0:
        m, fit_s = scored(data)
        for name in ("flexgen-gw", "knn+flexgen"):
            rows += [make_row(name, k, v, split=split, seed=seed, p=p, q=q)
                     for k, v in {**m, "fit_seconds": fit_s}.items()]
    else:
        dropped = drop_modalities(data, schema, p / 100, q / 100, label=label, seed=seed)
        if "flexgen-gw" in models:
            m, fit_s = scored(dropped)
            rows += [make_row("flexgen-gw", k, v, split=split, seed=seed, p=p, q=q)
                     for k, v in {**m, "fit_seconds": fit_s}.items()]
        if "knn+flexgen" in models:
            m, fit_s = scored(knn_impute_table(dropped, schema, label))
            rows += [make_row("knn+flexgen", k, v, split=split, seed=seed, p=p, q=q)
                     for k, v in {**m, "fit_seconds": fit_s}.items()]
    print(f"[sweep] seed {seed} {split} done in {time.perf_counter() - t0:.0f}s", flush=True)
    return rows


class _Inline:
    """A finished 'future' for tasks run in this process (--jobs 0)."""

    def __init__(self, fn, *a):
        self.fn, self.a = fn, a

    def result(self):
        return self.fn(*self.a)


class _Done:
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def result(self):
        return self.rows


def _cache_file(args) -> Path | None:
    """JSON-lines file of finished sweep points for this exact sweep configuration (--sweep-cache)."""
    if not args.sweep_cache:
        return None
    import hashlib

    from synthehr.models.latent_diffusion.flexgen import DEFAULT_DECODER_NOISE

    cfg = {**_sweep_config(args), "default_decoder_noise": DEFAULT_DECODER_NOISE}
    for k in ("cache", "gw_option"):  # the alignment is recorded per line, see _cached_points
        cfg.pop(k)
    key = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]
    return Path(args.sweep_cache) / f"sweep-{args.dataset}-{key}.jsonl"


def _cached_points(path: Path | None, alignment: dict[str, Any] | None = None
                   ) -> dict[tuple[int, int, int], dict[str, list[dict]]]:
    """task → {model: rows} from the cache (later lines win).  flexgen-gw rows count only when their
    line's alignment (LEGACY_ALIGNMENT for lines written before it was recorded) equals `alignment`,
    except at (0, 0), where nothing is imputed; knn+flexgen rows always count."""
    done: dict[tuple[int, int, int], dict[str, list[dict]]] = {}
    if path is None or not path.is_file():
        return done
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        task = tuple(item["task"])
        same = alignment is None or item.get("alignment", LEGACY_ALIGNMENT) == alignment or task[1:] == (0, 0)
        by_model: dict[str, list[dict]] = {}
        for r in item["rows"]:
            by_model.setdefault(r["model"], []).append(r)
        for model, rows in by_model.items():
            if model != "flexgen-gw" or same:
                done.setdefault(task, {})[model] = rows
    return done


def _start_sweep(args, train: pd.DataFrame, main_params: dict[str, Any]):
    """Submit every (seed, p, q) task not in the --sweep-cache; with --jobs N > 0 they run in N worker
    processes beside the main run."""
    cfg = _sweep_config(args)
    cached = _cached_points(_cache_file(args), alignment_signature(args))
    reuse = _sweep_is_main(args, len(train)) and not args.sweep_only
    tasks = [(seed, p, q) for seed in sweep_seeds(args) for p, q in sweep_pairs(args)
             if not (p == 0 and q == 0 and seed == args.seed and reuse)]
    reuse_main = [(seed, 0, 0) for seed in sweep_seeds(args) if seed == args.seed and reuse]
    models = ("flexgen-gw", "knn+flexgen")

    def missing(t):
        return tuple(m for m in models if m not in cached.get(t, {}))

    def have(t):
        return [r for m in models for r in cached.get(t, {}).get(m, [])]

    done = [_Done(have(t)) for t in tasks if not missing(t)]
    todo = [t for t in tasks if missing(t)]
    partial = sum(1 for t in todo if have(t))
    if done or partial:
        print(f"[sweep] {len(done)} of {len(tasks)} points from {_cache_file(args)}"
              + (f"; {partial} more with only knn+flexgen cached (flexgen-gw refitted: alignment changed)"
                 if partial else ""), flush=True)
    if args.jobs <= 0:
        return None, done + [(t, _Inline(sweep_point, cfg, *t, missing(t)), have(t)) for t in todo] + reuse_main
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=mp.get_context("spawn"))
    return pool, done + [(t, pool.submit(sweep_point, cfg, *t, missing(t)), have(t)) for t in todo] + reuse_main


def _finish_sweep(pool, futures, main_rows: list[dict], seed: int, cache: Path | None = None,
                  alignment: dict[str, Any] | None = None) -> list[dict]:
    rows: list[dict] = []
    try:
        for f in futures:
            if isinstance(f, tuple) and len(f) == 3 and isinstance(f[0], int):  # (seed, 0, 0) = main's flexgen
                main = {r["metric"]: r["value"] for r in main_rows if r["model"] == "flexgen"}
                for name in ("flexgen-gw", "knn+flexgen"):
                    rows += [make_row(name, k, main[k], split="p0-q0", seed=seed, p=0, q=0)
                             for k in (*SWEEP_METRICS, "fit_seconds")]
            elif isinstance(f, tuple):  # (task, future, cached rows): a point (or its flexgen-gw part) computed now
                task, fut, have = f
                got = fut.result()
                rows.extend(have + got)
                if cache is not None:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    line = {"task": list(task), "rows": got}
                    if alignment is not None:
                        line["alignment"] = alignment
                    with cache.open("a") as fh:
                        fh.write(json.dumps(line) + "\n")
            else:
                rows.extend(f.result())
    finally:
        if pool is not None:
            pool.shutdown()
    return rows


def _sweep_fit_seconds(rows: list[dict]) -> float:
    """Total fit time of the sweep; the (0, 0) fit is shared by both model names, so counted once."""
    return float(sum(r["value"] for r in rows if r["metric"] == "fit_seconds"
                     and (r["p"] + r["q"] > 0 or r["model"] == "flexgen-gw")))


def sweep_checks(rows: list[dict], max_drop: float = 0.02) -> list[dict]:
    """Per seed and missing setting: AUROC drop against the same seed's complete-data fit (both methods),
    flexgen-gw minus knn+flexgen AUROC, and whether the issue's target holds there
    (`target_met` = drop ≤ `max_drop` and gw beats knn)."""
    auroc = {(r["model"], r["seed"], r["p"], r["q"]): r["value"] for r in rows if r["metric"] == "tstr_auroc"}
    out = []
    for (model, seed, p, q), v in sorted(auroc.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][3], kv[0][0])):
        base = auroc.get(("flexgen-gw", seed, 0, 0))
        if (p, q) == (0, 0) or base is None or v is None:
            continue
        split = f"p{p}-q{q}"
        out.append(make_row(model, "auroc_drop", base - v, split=split, seed=seed, p=p, q=q))
        knn = auroc.get(("knn+flexgen", seed, p, q))
        if model == "flexgen-gw" and knn is not None:
            out.append(make_row(model, "auroc_minus_knn", v - knn, split=split, seed=seed, p=p, q=q))
            out.append(make_row(model, "target_met", float(base - v <= max_drop and v > knn), split=split, seed=seed,
                                p=p, q=q))
    return out


def _mean_sd(values: list[float]) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.4f}"
    return f"{v.mean():.4f} ± {v.std(ddof=1):.4f}"


def sweep_markdown(sweep_rows: list[dict], max_drop: float = 0.02) -> str:
    """Mean ± sd over seeds per (p, q), then the target check at 40 % missing seed by seed."""
    if not sweep_rows:
        return ""
    df = pd.DataFrame(sweep_rows)
    seeds = sorted(df["seed"].unique())
    cols = [("flexgen-gw", "tstr_auroc"), ("knn+flexgen", "tstr_auroc"), ("flexgen-gw", "auroc_drop"),
            ("knn+flexgen", "auroc_drop"), ("flexgen-gw", "auroc_minus_knn"), ("flexgen-gw", "tstr_aupr"),
            ("knn+flexgen", "tstr_aupr"), ("flexgen-gw", "dimwise_r2"), ("knn+flexgen", "dimwise_r2")]
    lines = ["", "## Missing-modality sweep (p % static-only, q % temporal-only training stays)", "",
             f"Mean ± sd over {len(seeds)} seed(s) {', '.join(map(str, seeds))}; auroc_drop = the same seed's "
             "complete-data (p = q = 0) flexgen AUROC minus this one; auroc_minus_knn = flexgen-gw − knn+flexgen.",
             "", "| p | q | " + " | ".join(f"{m} {k}" for m, k in cols) + " | seeds with drop ≤ "
             f"{max_drop} and gw > knn |", "|" + "---|" * (len(cols) + 3)]
    for (p, q), g in df.groupby(["p", "q"], sort=True):
        cells = [_mean_sd(g[(g["model"] == m) & (g["metric"] == k)]["value"].tolist()) for m, k in cols]
        met = g[(g["model"] == "flexgen-gw") & (g["metric"] == "target_met")]["value"]
        cells.append("–" if met.empty else f"{int(met.sum())}/{len(met)}")
        lines.append(f"| {p} | {q} | " + " | ".join(cells) + " |")
    at40 = df[(df["p"] + df["q"] == 40) & (df["metric"] == "target_met")]
    if not at40.empty:
        lines += ["", f"Target (AUROC drop ≤ {max_drop} at 40 % missing and beats kNN imputation), per seed:"]
        for seed, g in at40.groupby("seed"):
            detail = ", ".join(f"({int(r.p)}, {int(r.q)}) {'met' if r.value else 'not met'}" for r in g.itertuples())
            lines.append(f"- seed {seed}: {detail}")
        lines.append(f"- all {len(at40)} (seed, setting) pairs met: {bool(at40['value'].all())}; "
                     f"met in {int(at40['value'].sum())} of {len(at40)}")
    return "\n".join(lines) + "\n"


def sampling_note(timing: dict[str, dict[str, float]], repeats: int) -> str:
    """Where sampling time goes, and the speed-up bound that the fixed (non-denoiser) cost implies."""
    base = timing["flexgen"]
    per_call = base["sample_latent_seconds"] / base["denoiser_calls"]
    fixed = base["sample_seconds"] - base["sample_latent_seconds"]
    parts = []
    for name, t in timing.items():
        parts.append(f"{name}: {t['sample_seconds']:.3f} s = latent {t['sample_latent_seconds']:.3f} "
                     f"({int(t['denoiser_calls'])} guided denoiser calls, {t['sample_latent_seconds'] / t['denoiser_calls'] * 1000:.1f} "
                     f"ms each) + decoder nets {t['sample_decoder_seconds']:.3f} + table {t['sample_table_seconds']:.3f}")
    bounds = [f"{int(t['denoiser_calls'])} calls ≤ {base['denoiser_calls'] / t['denoiser_calls']:.1f}× "
              f"(with this fixed cost {base['sample_seconds'] / (t['denoiser_calls'] * per_call + fixed):.2f}×)"
              for name, t in timing.items() if name != "flexgen"]
    return (f"sampling breakdown (fastest of {repeats} repeats, same seed): " + "; ".join(parts)
            + f". Speed-up over DDPM is bounded by the ratio of denoiser calls: " + "; ".join(bounds))


def _main_table(args, train, schema, label, ev: Evaluator, params: dict[str, Any], n_synth: int, add) -> list[str]:
    """flexgen (DDPM), flexgen-ddimK and the peers: rows through `add`; returns notes."""
    out: list[str] = []
    model, fit_s = fit_flexgen(train, schema, label, params)
    out.append(f"flexgen: {json.dumps({k: v for k, v in model.hyperparameters.items()})}")
    out.append(f"flexgen fit info: {json.dumps(model.info_)}")
    synth, prof = profiled_sample(model, n_synth, args.seed, args.timing_repeats)
    add("flexgen", {**ev.all(synth), "fit_seconds": fit_s, **prof})
    uncond = ev.death_score(synth)
    t0 = time.perf_counter()
    deaths = model.condition({label: 1}, n=500, seed=args.seed)
    cond_s = time.perf_counter() - t0
    add("flexgen", {"cond_death_score": ev.death_score(deaths), "uncond_death_score": uncond,
                    "cond500_seconds": cond_s})
    print(f"[flexgen] fit {fit_s:.1f}s sample {prof['sample_seconds']:.2f}s", flush=True)
    timing = {"flexgen": prof}
    for steps in args.ddim_steps:
        name = f"flexgen-ddim{steps}"
        model.use_sampler("ddim", steps)
        synth_ddim, prof_d = profiled_sample(model, n_synth, args.seed, args.timing_repeats)
        deaths = model.condition({label: 1}, n=500, seed=args.seed)
        add(name, {**ev.all(synth_ddim), "fit_seconds": fit_s, **prof_d,
                   "speedup_vs_ddpm": prof["sample_seconds"] / prof_d["sample_seconds"],
                   "cond_death_score": ev.death_score(deaths), "uncond_death_score": ev.death_score(synth_ddim)})
        timing[name] = prof_d
    model.use_sampler("ddpm")
    out.append(sampling_note(timing, args.timing_repeats))

    # peers
    if "vae" in args.peers:
        try:
            vae, vfit = vae_peer(train, schema, args.vae_peer_epochs, args.seed)
            vs, vsamp = timed_sample(vae, n_synth, args.seed)
            add("vae (flattened)", {**ev.all(vs), "fit_seconds": vfit, "sample_seconds": vsamp})
        except Exception as e:  # a peer that fails is reported, not fatal
            out.append(f"peer vae failed: {type(e).__name__}: {e}")
    if "par" in args.peers:
        try:
            par_train = train.sample(n=min(len(train), args.par_max_train), random_state=args.seed)
            t0 = time.perf_counter()
            par = PARPeer(schema, label, args.par_epochs, args.seed).fit(par_train)
            pfit = time.perf_counter() - t0
            ps, psamp = timed_sample(par, min(n_synth, args.par_n_synth), args.seed)
            add("sdv-par", {**ev.all(ps), "fit_seconds": pfit, "sample_seconds": psamp})
            out.append(f"sdv-par: PARSynthesizer epochs={args.par_epochs} fitted on {len(par_train)} stays, "
                         f"{len(ps)} synthetic stays (its sampling is slow: ~0.1 s per stay here)")
        except Exception as e:
            out.append(f"peer sdv-par failed: {type(e).__name__}: {e}")
    print("[peers] done", flush=True)
    return out


def main_from(path: str, dataset: str) -> tuple[list[dict], list[str]]:
    """Main-table rows and notes of an earlier run's results JSON (sweep rows and sweep notes dropped)."""
    doc = json.loads(Path(path).read_text())
    if doc.get("dataset") != dataset:
        raise SystemExit(f"{path} holds dataset {doc.get('dataset')!r}, not {dataset!r}")
    rows = [r for r in doc["rows"] if r.get("p") is None]
    # notes about the sweep being replaced ("sweep ...", a --note "sweep: ...") and the earlier assembly's own go
    notes = [n for n in doc.get("notes", [])
             if not n.startswith(("sweep", "main table from ", "this run's wall time"))]
    notes = [f"main table run of {doc['created']}: {n}" if n.startswith("total wall time") else n for n in notes]
    notes.append(f"main table from {Path(path).name} (created {doc['created']}); sweep added by a later run")
    return rows, notes


# ---------------------------------------------------------------------------------------- run
def run(args) -> tuple[list[dict], list[dict], list[str]]:
    t_start = time.perf_counter()
    train, test, schema, label = load_dataset(args.dataset, Path(args.cache))
    if args.max_train and len(train) > args.max_train:
        train = train.sample(n=args.max_train, random_state=args.seed)
    n_synth = args.n_synth or len(train)
    notes = [f"train {len(train)} stays, test {len(test)} stays, {len(schema.names)} columns "
             f"({sum(1 for c in schema.names if '__t' in c)} temporal); synthetic n = {n_synth}; seed {args.seed}; "
             f"deaths: {int((train[label] == 1).sum())} train, {int((test[label] == 1).sum())} test"]
    if len(test) < 200:
        notes.append("small test set: TSTR AUROC/AUPR are very noisy; real stays shorter than 48 h have empty bins, "
                     "which dominate the membership-inference distances (so mia_accuracy barely depends on the model)")
    ev = Evaluator(train, test, schema, label, seed=args.seed)
    rows: list[dict] = []
    sweep_rows: list[dict] = []

    def add(model: str, metrics: dict[str, float], split: str = "test", target: list | None = None, **extra):
        for k, v in metrics.items():
            (target if target is not None else rows).append(make_row(model, k, v, split=split, seed=args.seed, **extra))

    params = flexgen_params(args)
    if args.main_from:
        rows, notes = main_from(args.main_from, args.dataset)
        pool, futures = _start_sweep(args, train, params) if args.sweep else (None, [])
    else:
        add("real", ev.real_reference())
        pool, futures = _start_sweep(args, train, params) if args.sweep else (None, [])
        notes += _main_table(args, train, schema, label, ev, params, n_synth, add)
    print(f"[main] done at {time.perf_counter() - t_start:.0f}s", flush=True)

    if args.sweep:
        sweep_rows.extend(_finish_sweep(pool, futures, rows, args.seed, _cache_file(args), alignment_signature(args)))
        seeds = sorted({r["seed"] for r in sweep_rows})
        sweep_rows.extend(sweep_checks(sweep_rows))
        sp = flexgen_params(args, sweep=True)
        notes.append(f"sweep (p, q) = {sweep_pairs(args)} (p % static-only, q % temporal-only training stays), "
                     f"seeds {seeds} (each seed: its own modality drop, model seed and sampling seed"
                     + (f", and its own {args.sweep_max_train}-stay subsample of the training set" if
                        args.sweep_max_train and args.sweep_max_train < len(train) else "")
                     + f"); sweep flexgen: vae_epochs={sp['vae_epochs']}, diffusion_epochs={sp['diffusion_epochs']}"
                     + ("" if _sweep_is_main(args, len(train)) else
                        " — a lighter setting than the main table for CPU time, so the sweep's (0, 0) row is its "
                        "own fit, not the main table's flexgen")
                     + f"; synthetic n per sweep fit = {args.n_synth or 'its training size'}; dimwise_r2 against the "
                     "full training table, TSTR on the full test set; at (0, 0) flexgen-gw and knn+flexgen are one "
                     "fit (nothing to impute); knn+flexgen = sklearn KNNImputer(k=5) on the standardized one-hot wide "
                     "table, then flexgen on the completed table; the sweep's fits took "
                     f"{_sweep_fit_seconds(sweep_rows):.0f} s in all (sum of fit_seconds on this shared CPU)")
        notes.append(f"sweep flexgen-gw alignment: {json.dumps(alignment_signature(args))} (see the "
                     "latent_diffusion.alignment docstring)")
    wall = time.perf_counter() - t_start
    notes.append(f"this run's wall time {wall:.0f} s (main table reused; sweep points computed now or read from the "
                 "--sweep-cache)" if args.main_from else f"total wall time {wall:.0f} s")
    notes.extend(args.note)
    return rows, sweep_rows, notes


def sampling_markdown(rows: list[dict]) -> str:
    """Sampling wall-time breakdown of flexgen's samplers (same fit, same n)."""
    df = pd.DataFrame(rows)
    df = df[df["model"].str.startswith("flexgen")]
    keys = ["denoiser_calls", "sample_seconds", "sample_latent_seconds", "sample_decoder_seconds",
            "sample_table_seconds", "speedup_vs_ddpm", "dimwise_r2"]
    if df.empty or "sample_latent_seconds" not in set(df["metric"]):
        return ""
    t = df[df["metric"].isin(keys)].pivot_table(index="model", columns="metric", values="value", sort=False)
    t = t.reindex(columns=[k for k in keys if k in t.columns])
    lines = ["", "## Sampling time breakdown (seconds)", "", "| model | " + " | ".join(t.columns) + " |",
             "|" + "---|" * (len(t.columns) + 1)]
    for name, r in t.iterrows():
        lines.append(f"| {name} | " + " | ".join("–" if pd.isna(v) else f"{v:.4g}" for v in r.to_numpy()) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="synthehr benchmark flexgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="physionet2012", choices=["physionet2012", "mimic-iv-demo"])
    p.add_argument("--cache", default=str(CACHE), help="prepared-data cache folder")
    p.add_argument("--results", default="benchmarks/results", help="output folder")
    p.add_argument("--vae-epochs", type=int, default=50)
    p.add_argument("--diffusion-epochs", type=int, default=300)
    p.add_argument("--encoder", default="lstm", choices=["lstm", "cnn"])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--guidance-weight", type=float, default=1.0)
    p.add_argument("--ddim-steps", default="10,5", help="comma list: one flexgen-ddimK row per K (same fit)")
    p.add_argument("--decoder-noise", type=float, default=None,
                   help="flexgen decoder_noise (default: the model's default)")
    p.add_argument("--gw-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a flexgen alignment hyper-parameter (repeatable), e.g. gw_pair_weight=1; keys: "
                        + ", ".join(ALIGNMENT_KEYS) + " (default: the model's defaults)")
    p.add_argument("--timing-repeats", type=int, default=3,
                   help="sample this many times per sampler; sample_seconds is the fastest")
    p.add_argument("--n-synth", type=int, default=0, help="synthetic rows (default: training size)")
    p.add_argument("--max-train", type=int, default=0, help="subsample training stays (0 = all)")
    p.add_argument("--peers", default="vae,par", help="comma list: vae, par (empty for none)")
    p.add_argument("--vae-peer-epochs", type=int, default=40)
    p.add_argument("--par-epochs", type=int, default=3)
    p.add_argument("--par-max-train", type=int, default=500)
    p.add_argument("--par-n-synth", type=int, default=500)
    p.add_argument("--sweep", action="store_true", help="missing-modality sweep against kNN imputation")
    p.add_argument("--sweep-grid", default="0,20,40,60", help="values of p and q (percent); pairs with p + q < 100")
    p.add_argument("--sweep-points", default="", help="explicit p:q pairs instead of the grid, e.g. 20:20,40:0,0:40")
    p.add_argument("--seeds", default="", help="comma list of sweep seeds (default: --seed); the main table uses --seed")
    p.add_argument("--jobs", type=int, default=1,
                   help="worker processes for the sweep, running beside the main table (0 = in this process, after it)")
    p.add_argument("--sweep-max-train", type=int, default=0,
                   help="sweep only: subsample this many training stays per seed (0 = all)")
    p.add_argument("--sweep-vae-epochs", type=int, default=0, help="sweep only: VAE epochs (0 = --vae-epochs)")
    p.add_argument("--sweep-diffusion-epochs", type=int, default=0,
                   help="sweep only: diffusion epochs (0 = --diffusion-epochs)")
    p.add_argument("--sweep-cache", default="",
                   help="folder for finished sweep points (JSON lines per sweep configuration); a rerun with the "
                        "same configuration reuses them, so seeds can be added run by run")
    p.add_argument("--main-from", default="",
                   help="take the main table (rows, notes) from this earlier results JSON instead of recomputing it")
    p.add_argument("--note", action="append", default=[], help="a free-text note for the results (repeatable)")
    p.add_argument("--sweep-only", action="store_true",
                   help="run only the sweep (fill --sweep-cache); writes no results files")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.ddim_steps = [int(v) for v in str(args.ddim_steps).split(",") if v.strip()]
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.sweep_only:
        t0 = time.perf_counter()
        train = _sweep_data(_sweep_config(args))[0]
        pool, futures = _start_sweep(args, train, {})
        sweep_rows = _finish_sweep(pool, futures, [], args.seed, _cache_file(args), alignment_signature(args))
        print(sweep_markdown(sweep_rows + sweep_checks(sweep_rows)))
        print(f"sweep points in {_cache_file(args)}; {time.perf_counter() - t0:.0f} s")
        return 0
    rows, sweep_rows, notes = run(args)
    jpath, mpath = write_results(SUITE, args.dataset, rows + sweep_rows, args.results, notes=notes)
    doc = json.loads(jpath.read_text())
    mpath.write_text(markdown_table({**doc, "rows": rows}) + sampling_markdown(rows) + sweep_markdown(sweep_rows))
    print(f"results → {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
