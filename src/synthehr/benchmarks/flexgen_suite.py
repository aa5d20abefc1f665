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
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from synthehr.benchmarks.results import make_row, markdown_table, write_results

SUITE = "flexgen"
CACHE = Path("/tmp/synthehr-bench-cache")


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
        from synthehr.evaluation import make_classifier

        self.schema, self.label, self.seed, self.mmd_rows = schema, label, seed, mmd_rows
        self.x_train, self.y_train = numeric_view(train, schema, label)
        self.x_test, self.y_test = numeric_view(test, schema, label)
        self.trtr = make_classifier("random_forest", seed).fit(self.x_train.to_numpy(float), self.y_train)

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
def flexgen_params(args) -> dict[str, Any]:
    return dict(vae_epochs=args.vae_epochs, diffusion_epochs=args.diffusion_epochs, encoder=args.encoder,
                guidance_weight=args.guidance_weight, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                label=None)


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

    add("real", ev.real_reference())
    params = flexgen_params(args)
    model, fit_s = fit_flexgen(train, schema, label, params)
    notes.append(f"flexgen: {json.dumps({k: v for k, v in model.hyperparameters.items()})}")
    notes.append(f"flexgen fit info: {json.dumps(model.info_)}")
    synth, samp_s = timed_sample(model, n_synth, args.seed)
    add("flexgen", {**ev.all(synth), "fit_seconds": fit_s, "sample_seconds": samp_s})
    uncond = ev.death_score(synth)
    t0 = time.perf_counter()
    deaths = model.condition({label: 1}, n=500, seed=args.seed)
    cond_s = time.perf_counter() - t0
    add("flexgen", {"cond_death_score": ev.death_score(deaths), "uncond_death_score": uncond,
                    "cond500_seconds": cond_s})
    print(f"[flexgen] fit {fit_s:.1f}s sample {samp_s:.1f}s", flush=True)

    model.use_sampler("ddim", args.ddim_steps)
    synth_ddim, samp_ddim = timed_sample(model, n_synth, args.seed)
    add(f"flexgen-ddim{args.ddim_steps}", {**ev.all(synth_ddim), "fit_seconds": fit_s, "sample_seconds": samp_ddim})
    deaths = model.condition({label: 1}, n=500, seed=args.seed)
    add(f"flexgen-ddim{args.ddim_steps}", {"cond_death_score": ev.death_score(deaths),
                                           "uncond_death_score": ev.death_score(synth_ddim)})
    model.use_sampler("ddpm")

    # peers
    if "vae" in args.peers:
        try:
            vae, vfit = vae_peer(train, schema, args.vae_peer_epochs, args.seed)
            vs, vsamp = timed_sample(vae, n_synth, args.seed)
            add("vae (flattened)", {**ev.all(vs), "fit_seconds": vfit, "sample_seconds": vsamp})
        except Exception as e:  # a peer that fails is reported, not fatal
            notes.append(f"peer vae failed: {type(e).__name__}: {e}")
    if "par" in args.peers:
        try:
            par_train = train.sample(n=min(len(train), args.par_max_train), random_state=args.seed)
            t0 = time.perf_counter()
            par = PARPeer(schema, label, args.par_epochs, args.seed).fit(par_train)
            pfit = time.perf_counter() - t0
            ps, psamp = timed_sample(par, min(n_synth, args.par_n_synth), args.seed)
            add("sdv-par", {**ev.all(ps), "fit_seconds": pfit, "sample_seconds": psamp})
            notes.append(f"sdv-par: PARSynthesizer epochs={args.par_epochs} fitted on {len(par_train)} stays, "
                         f"{len(ps)} synthetic stays (its sampling is slow: ~0.1 s per stay here)")
        except Exception as e:
            notes.append(f"peer sdv-par failed: {type(e).__name__}: {e}")
    print(f"[peers] done at {time.perf_counter() - t_start:.0f}s", flush=True)

    if args.sweep:
        grid = [int(v) for v in args.sweep_grid.split(",")]
        pairs = ([tuple(int(v) for v in item.split(":")) for item in args.sweep_points.split(",")]
                 if args.sweep_points else [(p, q) for p in grid for q in grid if p + q < 100])
        pairs = [(0, 0)] + [pq for pq in pairs if pq != (0, 0)]
        full = {"dimwise_r2": None, "tstr_auroc": None, "tstr_aupr": None}
        for r in rows:
            if r["model"] == "flexgen" and r["metric"] in full:
                full[r["metric"]] = r["value"]
        from synthehr.models.latent_diffusion import drop_modalities

        for p, q in pairs:
            split = f"p{p}-q{q}"
            if p == 0 and q == 0:
                add("flexgen-gw", full, split=split, target=sweep_rows, p=p, q=q)
                add("knn+flexgen", full, split=split, target=sweep_rows, p=p, q=q)
                continue
            dropped = drop_modalities(train, schema, p / 100, q / 100, label=label, seed=args.seed)
            m_gw, f_gw = fit_flexgen(dropped, schema, label, params)
            s_gw, _ = timed_sample(m_gw, n_synth, args.seed)
            x, y = numeric_view(s_gw, schema, label)
            add("flexgen-gw", {"dimwise_r2": ev.fidelity(x)["dimwise_r2"], **ev.tstr(x, y),
                               "fit_seconds": f_gw}, split=split, target=sweep_rows, p=p, q=q)
            imputed = knn_impute_table(dropped, schema, label)
            m_knn, f_knn = fit_flexgen(imputed, schema, label, params)
            s_knn, _ = timed_sample(m_knn, n_synth, args.seed)
            x, y = numeric_view(s_knn, schema, label)
            add("knn+flexgen", {"dimwise_r2": ev.fidelity(x)["dimwise_r2"], **ev.tstr(x, y),
                                "fit_seconds": f_knn}, split=split, target=sweep_rows, p=p, q=q)
            print(f"[sweep] {split} done at {time.perf_counter() - t_start:.0f}s", flush=True)
        notes.append(f"sweep (p, q) = {pairs} (p % static-only, q % temporal-only training "
                     "stays); knn+flexgen = sklearn KNNImputer(k=5) on the standardized one-hot wide table, then "
                     "flexgen on the completed table")
    notes.append(f"total wall time {time.perf_counter() - t_start:.0f} s")
    return rows, sweep_rows, notes


def sweep_markdown(sweep_rows: list[dict]) -> str:
    if not sweep_rows:
        return ""
    df = pd.DataFrame(sweep_rows)
    df = df[df["metric"].isin(["dimwise_r2", "tstr_auroc", "tstr_aupr"])]
    table = df.pivot_table(index=["p", "q"], columns=["model", "metric"], values="value", aggfunc="mean")
    cols = list(table.columns)
    lines = ["", "## Missing-modality sweep (p % static-only, q % temporal-only training stays)", "",
             "| p | q | " + " | ".join(f"{m} {k}" for m, k in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    for (p, q), r in table.iterrows():
        lines.append(f"| {p} | {q} | " + " | ".join("–" if pd.isna(v) else f"{v:.4g}" for v in r.to_numpy()) + " |")
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
    p.add_argument("--ddim-steps", type=int, default=10)
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
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    warnings.filterwarnings("ignore", category=FutureWarning)
    rows, sweep_rows, notes = run(args)
    jpath, mpath = write_results(SUITE, args.dataset, rows + sweep_rows, args.results, notes=notes)
    doc = json.loads(jpath.read_text())
    mpath.write_text(markdown_table({**doc, "rows": rows}) + sweep_markdown(sweep_rows))
    print(f"results → {jpath} and {mpath}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
