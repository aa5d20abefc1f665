"""`synthehr benchmark trajectory`: whole-patient trajectory generator on real MEDS data, and at scale.

Default (`--dataset mimic-iv-demo`): train on the demo's train split (80 patients), generate, and compare
with the real training patients and the held-out patients (tuning + held_out, 20): event-probability
R2 / mean bias (real-vs-real floor beside it), code co-occurrence, sequence lengths, inter-event times,
TSTR in-hospital mortality from the first stay, membership inference and distances to closest records,
structural validity and the probability mass the grammar mask removed.  Real codes are compared as the
vocabulary sees them (codes below the frequency cutoff → their prefix's OTHER token) — `*_raw` rows
compare raw codes.  `--dataset physionet2012` prepares PhysioNet 2012 set-a as MEDS first.

`--scale`: a corpus shaped like full MIMIC-IV (32k codes, heavy-tailed records), streamed from disk, at
each of `--sizes` patients; every size runs in a fresh process so its peak RSS is its own: training
tokens/s (fixed number of steps), generated patients/min, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from synthehr.benchmarks.results import make_row, write_results

REPO = Path(__file__).resolve().parents[3]
SUITE = "trajectory"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _read_split(root: Path, splits: list[str]) -> pl.DataFrame:
    from synthehr.models.trajectory.tokenizer import normalize_events

    frames = []
    for s in splits:
        for f in sorted((root / "data" / s).glob("*.parquet")):
            cols = [c for c in ("subject_id", "time", "code", "numeric_value", "race") if c in pl.read_parquet_schema(f)]
            frames.append(normalize_events(pl.read_parquet(f, columns=cols)))
    return pl.concat(frames, how="diagonal_relaxed")


def _meds_root(args, work: Path) -> tuple[Path, str]:
    if args.dataset == "mimic-iv-demo":
        return REPO / "data" / "demo" / "mimic-iv-demo-meds", "mimic-iv-demo"
    if args.dataset == "physionet2012":
        from synthehr.data import prepare

        src = Path(args.physionet or REPO.parent / "shared" / "data" / "physionet-challenge-2012" / "set-a.tar.gz")
        out = work / "physionet2012-prepared"
        if not (out / "events" / "data" / "train").is_dir():
            prepare("physionet2012", src, out, progress=False)
        return out / "events", "physionet2012-set-a"
    if not args.meds:
        raise SystemExit("--dataset meds needs --meds MEDS_ROOT")
    return Path(args.meds), Path(args.meds).name


def run_dataset(args) -> list[Path]:
    from synthehr.models.trajectory import TrajectoryGenerator, Tokenizer, check_records
    from synthehr.models.trajectory import metrics as M
    from synthehr.evaluation.events import event_probability_bias_r2

    work = Path(args.work or tempfile.mkdtemp(prefix="synthehr-traj-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    root, dataset = _meds_root(args, work)
    hp = {"d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads, "kv_heads": args.kv_heads,
          "seen_memory": args.seen_memory, "seen_embedding": args.seen_embedding,
          "seen_bias": args.seen_bias, "novel_bias": args.novel_bias, "length_budget": args.length_budget,
          "context": args.context, "dropout": args.dropout,
          "epochs": args.epochs, "max_seconds": args.max_seconds, "batch_rows": args.batch_rows, "lr": args.lr,
          "min_subjects": args.min_subjects, "threads": args.threads, "seed": args.seed, "max_len": args.max_len,
          "stay_cap": args.stay_cap, "require_stays": args.require_stays}
    t0 = time.perf_counter()
    if args.model_dir:  # reuse a model this suite trained and saved before (its fit_seconds are reported)
        gen = TrajectoryGenerator.load(args.model_dir)
        fit_s = float(gen.info_.get("fit_seconds", float("nan")))
        gen.hyperparameters["stay_cap"] = args.stay_cap  # a sampling setting: this run's, not the saved one
        gen.hyperparameters["require_stays"] = args.require_stays
        if "records_with_stay" not in gen.info_:  # saved before the stay limits / required stays: measure as fit() does
            print(f"  training stays: {gen.measure_training_stays(root, 'train')}", flush=True)
    else:
        gen = TrajectoryGenerator(**{k: v for k, v in hp.items() if v is not None})
        gen.fit(root, split="train", progress=lambda m: print(f"  {m}", flush=True))
        fit_s = time.perf_counter() - t0
        gen.info_["fit_seconds"] = fit_s
        gen.save(work / "model")
    info = gen.info_
    print(f"fit {fit_s:.0f} s; vocabulary {info['vocab']['vocab_size']:,}; final train NLL "
          f"{info['train']['final_train_nll']:.3f}", flush=True)

    train_real = _read_split(root, ["train"])
    held_real = _read_split(root, ["tuning", "held_out"])
    held_nll = gen.nll(held_real)
    print(f"held-out NLL {held_nll:.3f} nats/token", flush=True)
    ablation = None
    if args.ablate_hierarchy:
        abl = TrajectoryGenerator(**{**{k: v for k, v in hp.items() if v is not None}, "hierarchy": False})
        abl.fit(root, split="train")
        ablation = {"train": abl.info_["train"]["final_train_nll"], "held_out": abl.nll(held_real),
                    "steps": abl.info_["train"]["steps"]}
        print(f"without hierarchy: held-out NLL {ablation['held_out']:.3f}", flush=True)
    n_syn = args.n_synthetic or int(train_real["subject_id"].n_unique())
    calib, temperature = None, args.temperature
    if temperature == "auto":  # chosen on the training patients only; see metrics.calibrate_temperature
        t1 = time.perf_counter()
        calib = M.calibrate_temperature(
            gen, train_real, temperatures=args.temperature_grid,
            n=min(args.calibration_records, int(train_real["subject_id"].n_unique())), seed=args.seed + 1,
            batch_size=args.batch_size, max_len=args.max_len, min_prob=args.min_prob, workers=args.sample_workers,
            progress=lambda m: print(f"  {m}", flush=True))
        calib["seconds"] = time.perf_counter() - t1
        temperature = calib["temperature"]
        print(f"sampling temperature {temperature:g} (chosen on the training cohort in {calib['seconds']:.0f} s)",
              flush=True)
    syn_dir = work / "trajectory"  # the folder name is the model name in the audit results
    t1 = time.perf_counter()
    sinfo = gen.sample_to_meds(syn_dir, n_syn, seed=args.seed, batch_size=args.batch_size, max_len=args.max_len,
                               temperature=temperature, min_prob=args.min_prob, workers=args.sample_workers,
                               progress=lambda m: print(f"  {m}", flush=True))
    gen_s = time.perf_counter() - t1
    synth = _read_split(syn_dir, ["train"])
    print(f"generated {n_syn} patients in {gen_s:.0f} s ({sinfo['records_per_minute']:.0f}/min)", flush=True)

    tok = Tokenizer(gen.vocab_)
    tr_m, ho_m = tok.map_codes(train_real), tok.map_codes(held_real)
    rows: list[dict] = []
    T, R = "trajectory", "real"

    def add(model, metric, value, split="", **extra):
        rows.append(make_row(model, metric, value, split=split, seed=args.seed, **extra))

    # event probabilities (vocabulary codes) and the real-vs-real floor
    floor = event_probability_bias_r2(tr_m, ho_m)
    for split, real in (("train", tr_m), ("held_out", ho_m)):
        e = event_probability_bias_r2(real, synth)
        add(T, "event_prob_r2", e["r2"], split)
        add(T, "event_prob_r2_floor", floor["r2"], split)
        add(T, "event_prob_mean_bias", e["mean_bias"], split)
        add(T, "event_prob_mean_abs_bias", e["mean_abs_bias"], split)
    add(R, "event_prob_r2", floor["r2"], "held_out")
    add(R, "event_prob_mean_bias", floor["mean_bias"], "held_out")
    add(R, "event_prob_mean_abs_bias", floor["mean_abs_bias"], "held_out")
    floor_raw = event_probability_bias_r2(train_real, held_real)
    for split, real in (("train", train_real), ("held_out", held_real)):
        e = event_probability_bias_r2(real, synth)
        add(T, "event_prob_r2_raw", e["r2"], split)
        add(T, "event_prob_mean_bias_raw", e["mean_bias"], split)
    add(R, "event_prob_r2_raw", floor_raw["r2"], "held_out")
    add(R, "event_prob_mean_bias_raw", floor_raw["mean_bias"], "held_out")
    # co-occurrence, lengths, gaps
    codes50 = M.top_codes(tr_m, 50)
    for split, real in (("train", tr_m), ("held_out", ho_m)):
        add(T, "cooccurrence_corr", M.cooccurrence(real, synth, codes=codes50)["corr"], split)
    add(R, "cooccurrence_corr", M.cooccurrence(ho_m, tr_m, codes=codes50)["corr"], "held_out")
    ev_syn = M.event_metrics(ho_m, synth)
    ev_floor = M.event_metrics(ho_m, tr_m)
    for model, ev in ((T, ev_syn), (R, ev_floor)):
        add(model, "seq_length_ks", ev["sequence_length"]["ks"], "held_out")
        add(model, "seq_length_median", ev["sequence_length"]["synthetic_median"], "held_out")
        add(model, "inter_event_ks", ev["inter_event_time"]["ks"], "held_out")
    add(R, "seq_length_median", ev_syn["sequence_length"]["real_median"], "real_held_out")
    # how long the first ICU stay lasts, and how long its events go on (median hours)
    for model, ev, split in ((T, synth, ""), (R, ho_m, "held_out")):
        st = M.first_stay_hours(ev)
        add(model, "first_icu_stay_hours_median", float(st["stay_hours"].median()), split)
        add(model, "first_icu_active_hours_median", float(st["active_hours"].median()), split)
        for kind, prefix in (("icu", "ICU_ADMISSION"), ("hospital", "HOSPITAL_ADMISSION")):
            add(model, f"records_with_{kind}_stay_share", M.share_with_stay(ev, prefix), split)
    # utility: in-hospital mortality of the first stay (first 48 h)
    codes100 = M.top_codes(tr_m, 100)
    stay = "HOSPITAL_ADMISSION" if tr_m["code"].str.starts_with("HOSPITAL_ADMISSION").any() else "ICU_ADMISSION"
    tstr = M.tstr_mortality(synth, ho_m, codes100, stay_prefix=stay, seed=args.seed)
    trtr = M.tstr_mortality(tr_m, ho_m, codes100, stay_prefix=stay, seed=args.seed)
    add(T, "tstr_auroc", tstr["auroc"], "held_out", n_test=tstr["n_test"], pos_test=tstr["pos_test"])
    add(R, "tstr_auroc", trtr["auroc"], "held_out", n_test=trtr["n_test"], pos_test=trtr["pos_test"])
    rtstr = M.tstr_mortality(synth, ho_m, codes100, stay_prefix=stay, seed=args.seed, label="readmission")
    rtrtr = M.tstr_mortality(tr_m, ho_m, codes100, stay_prefix=stay, seed=args.seed, label="readmission")
    add(T, "tstr_readmission_auroc", rtstr["auroc"], "held_out", n_test=rtstr["n_test"], pos_test=rtstr["pos_test"])
    add(R, "tstr_readmission_auroc", rtrtr["auroc"], "held_out", n_test=rtrtr["n_test"], pos_test=rtrtr["pos_test"])
    # privacy
    pv = M.privacy(tr_m, ho_m, synth, seed=args.seed)
    add(T, "mia_auc", pv["mia"]["auc"], "", n_members=pv["mia"]["n_members"])
    for key in ("auc_ci_low", "auc_ci_high", "auc_null_sd"):  # how far a small cohort's AUC can be trusted
        add(T, f"mia_{key}", pv["mia"][key])
    add(T, "mia_f1", pv["mia"]["f1"])
    add(T, "dcr_median", pv["dcr"]["synthetic"]["median"])
    add(R, "dcr_median", pv["dcr"]["holdout"]["median"], "held_out")
    add(T, "dcr_exact_copy_share", pv["dcr"]["synthetic"]["exact_copy_share"])
    # structure, sampling, cost
    v = check_records(synth, value_codes=gen.vocab_.value_codes(), icu_in_hospital=gen.vocab_.icu_in_hospital)
    add(T, "structural_validity", v["valid"].mean())
    rv = check_records(train_real, icu_in_hospital=gen.vocab_.icu_in_hospital)
    add(R, "structural_validity", rv["valid"].mean(), "train")
    add(T, "mask_removed_mass_mean", sinfo["mask_removed_mass_mean"])
    add(T, "mask_removed_mass_max", sinfo["mask_removed_mass_max"])
    add(T, "min_prob_truncated_mass_mean", sinfo["min_prob_truncated_mass_mean"], min_prob=args.min_prob,
        temperature=temperature)
    add(T, "sampling_temperature", temperature)
    for g in (calib or {}).get("grid", []):  # the choice, per temperature tried (training patients only)
        add(T, "calibration_event_prob_r2", g["r2"], f"train T={g['temperature']:g}")
        add(T, "calibration_event_prob_mean_bias", g["mean_bias"], f"train T={g['temperature']:g}")
    add(T, "stay_cut_mass_mean", sinfo["stay_cut_mass_mean"], stay_cap=args.stay_cap)
    add(T, "closed_by_length_cap_share", sinfo["closed_by_length_cap"] / n_syn)
    add(T, "patients_per_minute", sinfo["records_per_minute"], workers=sinfo["processes"])
    add(T, "generated_tokens_per_second", sinfo["sampled_tokens"] / max(sinfo["seconds"], 1e-9),
        workers=sinfo["processes"])
    add(T, "train_tokens_per_second", info["train"]["tokens_per_second"])
    add(T, "train_steps", info["train"]["steps"])
    add(T, "nll", info["train"]["final_train_nll"], "train")
    add(T, "nll", held_nll, "held_out")
    if ablation:
        add("trajectory-no-hierarchy", "nll", ablation["train"], "train")
        add("trajectory-no-hierarchy", "nll", ablation["held_out"], "held_out")
        add("trajectory-no-hierarchy", "train_steps", ablation["steps"])
    add(T, "fit_seconds", fit_s)
    add(T, "vocab_size", info["vocab"]["vocab_size"])
    add(T, "n_synthetic", n_syn)
    add(T, "peak_rss_mb", _rss_mb())
    limits, required = gen.stay_rules_text()
    reasons = rv.filter(~pl.col("valid")).group_by("reason").len().sort("len", descending=True)
    notes = [
        f"model: {json.dumps({k: gen.hyperparameters.get(k) for k in ('d_model', 'n_layers', 'n_heads', 'kv_heads', 'context', 'dropout', 'epochs', 'max_seconds', 'batch_rows', 'lr', 'min_subjects', 'hierarchy', 'stay_clock', 'seen_memory', 'seen_bias', 'novel_bias', 'length_budget', 'seen_embedding', 'stay_cap', 'require_stays', 'threads')})}",
        *(["length budget: each synthetic record's length is drawn from the training lengths' percentiles and counted "
           "down as an input; the NLL rows score real records given their true lengths, so they do not compare with "
           "models without the budget"] if gen.hyperparameters.get("length_budget") else []),
        f"vocabulary {info['vocab']['vocab_size']:,} tokens: {info['vocab']['n_codes_kept']:,} of "
        f"{info['vocab']['n_codes_seen']:,} codes kept (seen in >= {info['vocab']['min_subjects']} training "
        f"subjects, {100 * info['vocab']['event_coverage']:.1f}% of events), {info['vocab']['n_value_codes']:,} "
        f"codes with value bins, {info['vocab']['n_hierarchy_nodes']:,} hierarchy nodes",
        f"training records: {info['n_subjects']} patients, {info['n_tokens']:,} tokens (median "
        f"{info['record_tokens']['median']:.0f}, max {info['record_tokens']['max']:,} per patient); "
        f"generation cap {args.max_len or info['max_len']:,} tokens",
        f"held_out = tuning + held_out splits ({held_real['subject_id'].n_unique()} patients); "
        f"{n_syn} synthetic patients; event_prob_* compare codes as the vocabulary sees them (rare → OTHER); *_raw: raw codes",
        f"event_prob_r2_floor = real train vs real held-out (the real-vs-real floor), beside every R2",
        f"canonicalisation repairs of real training records: {info['repairs']}",
        f"real records failing the structural check before repair: "
        f"{', '.join(f'{r} {n}' for r, n in reasons.iter_rows()) or 'none'}",
        f"TSTR: logistic regression, in-hospital death of the first {stay.split('_')[0].lower()} stay from its "
        f"first 48 h (top-100 codes + age + sex); test n={tstr['n_test']} ({tstr['pos_test']} deaths); "
        f"trained on synthetic n={tstr['n_train']} ({tstr['pos_train']} deaths), real n={trtr['n_train']} "
        f"({trtr['pos_train']} deaths)",
        f"TSTR readmission (another stay within 30 days of the first one's discharge, same features): test "
        f"n={rtstr['n_test']} ({rtstr['pos_test']} readmitted); synthetic n={rtstr['n_train']} ({rtstr['pos_train']}), "
        f"real n={rtrtr['n_train']} ({rtrtr['pos_train']})",
        f"MIA: distance attack on per-patient profiles (top-100 codes, log events, age, sex), "
        f"{pv['mia']['n_members']} members vs as many held-out patients; AUC {pv['mia']['auc']:.3f}, 95% bootstrap "
        f"interval [{pv['mia']['auc_ci_low']:.3f}, {pv['mia']['auc_ci_high']:.3f}], sd under no leakage "
        f"{pv['mia']['auc_null_sd']:.3f} (mia_auc_ci_low / _high / _null_sd)",
        (f"sampling temperature {temperature:g} chosen by --temperature auto on the training patients alone "
         f"({calib['n']} records per temperature, seed {calib['seed']}, the same random streams at each; "
         f"calibration_event_prob_r2 rows; held-out records never read; {calib['seconds']:.0f} s): at "
         f"temperature 1 the model puts too much mass on codes a record has not had yet, and over hundreds of "
         f"steps too many records hold an intermittent code at least once" if calib else
         f"sampling temperature {temperature:g} (--temperature)"),
        f"sampling: temperature {temperature:g}, top_p 1, "
        + (f"min_prob {args.min_prob:g} (dropped {100 * sinfo['min_prob_truncated_mass_mean']:.2f}% of the mass "
           f"per sampled token on average)" if args.min_prob > 0 else "no truncation")
        + f", grammar mask on; "
        f"mask removed {100 * sinfo['mask_removed_mass_mean']:.2f}% of the probability mass per sampled token "
        f"on average (max {100 * sinfo['mask_removed_mass_max']:.1f}%); "
        + (f"stay limits {limits} (stay_cap {args.stay_cap:g} x the longest training stay) cut "
           f"{100 * sinfo['stay_cut_mass_mean']:.3f}% of the mass per sampled token (in the mask's share)"
           if limits else "no stay limits")
        + "; required stays (a record may not end or die before opening one; every training record holds one): "
        + (required or "none"),
        f"CPU threads: torch {gen.hyperparameters.get('threads') or 'default'}; sampling in {sinfo['processes']} "
        f"process(es) (--sample-workers {args.sample_workers}; the prompts split into about one task per process); shared machine, timings are indicative",
    ]
    out = write_results(SUITE, dataset, rows, args.out, notes=notes)
    (work / "fit_info.json").write_text(json.dumps(info, indent=2, default=str))
    print(f"  → {out[0]}\n  → {out[1]}")
    if args.audit:
        # the clinical-consistency audit (rules of synthehr.audit) of the generated records against the real ones
        from synthehr.benchmarks.audit_suite import run_audit_benchmark

        out = [*out, *run_audit_benchmark(root, Path(args.out), synthetic=syn_dir, dataset=dataset, seed=args.seed,
                                          throughput_records=args.audit_throughput_records)]
    return list(out)


# ---------------------------------------------------------------------------- scale

_CHILD = r"""
import json, resource, sys, threading, time, torch
args = json.loads(sys.argv[1])
# peak anonymous memory (heap, tensors), polled: ru_maxrss also counts file pages the OS may map in
anon = {"peak": float("nan"), "fit": float("nan")}
def _poll():
    while True:
        try:
            with open("/proc/self/status") as f:
                kb = next(int(l.split()[1]) for l in f if l.startswith("RssAnon:"))
        except (OSError, StopIteration):
            return
        anon["peak"] = kb / 1024 if anon["peak"] != anon["peak"] else max(anon["peak"], kb / 1024)
        time.sleep(0.02)
threading.Thread(target=_poll, daemon=True).start()
torch.set_num_threads(args["threads"])
from synthehr.models.trajectory import TrajectoryGenerator
g = TrajectoryGenerator(d_model=args["d_model"], n_layers=args["n_layers"], n_heads=args["n_heads"], kv_heads=args["kv_heads"],
                        context=args["context"], max_steps=args["steps"], batch_rows=args["batch_rows"],
                        epochs=1000, threads=args["threads"], max_len=args["max_len"], min_subjects=2,
                        seen_bias=args["seen_bias"], novel_bias=args["novel_bias"],
                        length_budget=args["length_budget"])
t0 = time.perf_counter()
g.fit(args["corpus"], work_dir=args["work"])
fit = time.perf_counter() - t0
rss_fit = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
anon["fit"] = anon["peak"]
s = g.sample_to_meds(args["out"], args["n_generate"], seed=0, batch_size=args["batch_size"])
print(json.dumps({"fit_seconds": fit, "info": g.info_, "sample": s, "rss_fit_mb": rss_fit,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anon_mb": anon["peak"], "anon_fit_mb": anon["fit"]}, default=str))
"""


def run_scale(args) -> list[Path]:
    from synthehr.models.trajectory.synthetic import write_mimic_like_corpus

    sizes = [int(s) for s in args.sizes.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="synthehr-traj-scale-"))
    full = work / f"corpus-{max(sizes)}"
    shard = args.shard_size
    if not (full / "metadata" / "dataset.json").is_file():
        t0 = time.perf_counter()
        cinfo = write_mimic_like_corpus(full, max(sizes), n_codes=args.n_codes, shard_size=shard, seed=0)
        print(f"corpus of {max(sizes):,} patients written in {time.perf_counter() - t0:.0f} s: {cinfo}", flush=True)
    cinfo = json.loads((full / "metadata" / "dataset.json").read_text())
    rows: list[dict] = []
    for n in sizes:
        if n % shard:
            raise SystemExit(f"--sizes must be multiples of --shard-size {shard}")
        root = work / f"corpus-view-{n}"
        (root / "data" / "train").mkdir(parents=True, exist_ok=True)
        (root / "metadata").mkdir(exist_ok=True)
        for k in range(n // shard):
            link = root / "data" / "train" / f"{k}.parquet"
            if not link.exists():
                link.symlink_to(full / "data" / "train" / f"{k}.parquet")
        child_args = {"corpus": str(root), "work": str(work), "out": str(work / f"synthetic-{n}"), "threads": args.threads,
                      "d_model": args.d_model, "n_layers": args.n_layers, "n_heads": args.n_heads, "kv_heads": args.kv_heads,
                      "context": args.context, "steps": args.scale_steps, "batch_rows": args.batch_rows,
                      "n_generate": args.scale_generate, "batch_size": args.batch_size, "max_len": args.max_len or 4096,
                      "seen_bias": args.seen_bias, "novel_bias": args.novel_bias,
                      "length_budget": args.length_budget}
        t0 = time.perf_counter()
        res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(child_args)], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if res.returncode != 0:
            raise RuntimeError(f"scale run at {n} patients failed:\n{res.stderr[-3000:]}")
        r = json.loads(res.stdout.strip().splitlines()[-1])
        info, s = r["info"], r["sample"]
        split = f"{n}"
        rows += [make_row(SUITE, "train_tokens_per_second", info["train"]["tokens_per_second"], split),
                 make_row(SUITE, "patients_per_minute", s["records_per_minute"], split),
                 make_row(SUITE, "generated_tokens_per_second", s["sampled_tokens"] / max(s["seconds"], 1e-9), split),
                 make_row(SUITE, "peak_rss_mb", r["rss_mb"], split),
                 make_row(SUITE, "peak_rss_fit_mb", r["rss_fit_mb"], split),
                 make_row(SUITE, "peak_anon_rss_mb", r["anon_mb"], split),
                 make_row(SUITE, "peak_anon_rss_fit_mb", r["anon_fit_mb"], split),
                 make_row(SUITE, "vocab_size", info["vocab"]["vocab_size"], split),
                 make_row(SUITE, "tokenize_seconds", info["seconds"]["tokenize"], split),
                 make_row(SUITE, "vocabulary_seconds", info["seconds"]["vocabulary"], split),
                 make_row(SUITE, "training_tokens", info["n_tokens"], split),
                 make_row(SUITE, "structural_validity", _validity(work / f"synthetic-{n}"), split),
                 make_row(SUITE, "mask_removed_mass_mean", s["mask_removed_mass_mean"], split),
                 make_row(SUITE, "mean_generated_tokens", s["mean_tokens_per_record"], split)]
        print(f"{n:,} patients: fit {r['fit_seconds']:.0f} s ({info['train']['tokens_per_second']:,.0f} train tok/s), "
              f"{s['records_per_minute']:,.0f} patients/min, peak RSS {r['rss_mb']:,.0f} MB "
              f"(wall {time.perf_counter() - t0:.0f} s)", flush=True)
    notes = [f"corpus: synthetic, shaped like MIMIC-IV (synthehr.models.trajectory.synthetic.write_mimic_like_corpus): "
             f"{cinfo['codes']:,} distinct codes, events per patient {json.dumps(cinfo['events_per_patient'])}; "
             f"shards of {shard:,} patients read one at a time",
             f"split = number of patients; each size in a fresh process (peak RSS its own): vocabulary pass + "
             f"tokenisation to an on-disk store over all patients, {args.scale_steps} training steps "
             f"({args.batch_rows} rows x {args.context} tokens), then {args.scale_generate:,} patients generated "
             f"(batch {args.batch_size}, cap {args.max_len or 4096} tokens) streamed to MEDS shards",
             f"model: d_model {args.d_model}, {args.n_layers} layers, {args.n_heads} heads ({args.kv_heads or args.n_heads} key/value), context {args.context}, "
             f"seen bias {'on' if args.seen_bias else 'off'}; novel bias {'on' if args.novel_bias else 'off'}; length budget {'on' if args.length_budget else 'off'}; torch threads {args.threads}; shared 2-core CPU, timings are indicative",
             "the scale model is trained for a fixed number of steps only: these rows measure cost, not fidelity",
             "peak_rss_mb: the process's peak resident set (ru_maxrss), file pages the OS mapped in included; "
             "peak_anon_rss_mb: peak anonymous memory (heap and tensors, RssAnon polled every 20 ms); *_fit_*: "
             "up to the end of training"]
    return list(write_results(SUITE, "mimic-iv-shaped-scale", rows, args.out, notes=notes))


def _validity(syn_dir: Path) -> float:
    from synthehr.models.trajectory import validity_rate

    files = sorted((syn_dir / "data" / "train").glob("*.parquet"))
    return float(np.mean([validity_rate(pl.read_parquet(f)) for f in files])) if files else float("nan")


def _temperature(text: str):
    from synthehr.models.trajectory.metrics import parse_temperature

    try:
        return parse_temperature(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _temperature_grid(text: str) -> tuple[float, ...]:
    out = tuple(_temperature(t.strip()) for t in text.split(",") if t.strip())
    if not out or "auto" in out:
        raise argparse.ArgumentTypeError(f"--temperature-grid takes positive numbers, got {text!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    from synthehr.models.trajectory.metrics import TEMPERATURE_GRID

    ap = argparse.ArgumentParser(prog="synthehr benchmark trajectory", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="mimic-iv-demo", choices=["mimic-iv-demo", "physionet2012", "meds"])
    ap.add_argument("--meds", help="MEDS root for --dataset meds")
    ap.add_argument("--physionet", help="PhysioNet 2012 set-a.tar.gz (default: the shared copy)")
    ap.add_argument("--scale", action="store_true", help="run the scale benchmark instead")
    ap.add_argument("--sizes", default="10000,50000,200000")
    ap.add_argument("--shard-size", type=int, default=10000)
    ap.add_argument("--n-codes", type=int, default=32000)
    ap.add_argument("--scale-steps", type=int, default=200)
    ap.add_argument("--scale-generate", type=int, default=2000)
    ap.add_argument("--n-synthetic", type=int, help="patients to generate (default: as many as trained on)")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--n-heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=1,
                    help="key/value heads shared by the query heads (default 1; 0: one per query head)")
    ap.add_argument("--no-seen-memory", dest="seen_memory", action="store_false",
                    help="train without the seen-codes memory (an ablation)")
    ap.add_argument("--seen-embedding", choices=["tied", "own"], default="tied",
                    help="the seen-codes memory's code vectors: the tied token embeddings or a table of its own")
    ap.add_argument("--seen-bias", action=argparse.BooleanOptionalAction, default=True,
                    help="a learned logit offset per code once the record has held that code (default on; "
                         "--no-seen-bias for the model without it)")
    ap.add_argument("--novel-bias", action=argparse.BooleanOptionalAction, default=True,
                    help="a learned logit offset per (stay-clock bucket, token) until the record holds that token "
                         "(needs the seen bias)")
    ap.add_argument("--length-budget", action=argparse.BooleanOptionalAction, default=False,
                    help="draw each record's length from the training lengths first and give the model the tokens "
                         "it has left at every step (default off)")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--dropout", type=float, default=0.0, help="dropout on the embeddings and residual branches")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--max-seconds", type=float, help="training time budget")
    ap.add_argument("--batch-rows", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=64, help="records sampled in parallel")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-subjects", type=int, default=2)
    ap.add_argument("--max-len", type=int, help="token cap per generated record")
    ap.add_argument("--temperature", type=_temperature, default=1.0,
                    help="sampling temperature, or 'auto': the best of --temperature-grid by event-probability R2 "
                         "against the training patients (never the held-out ones)")
    ap.add_argument("--temperature-grid", type=_temperature_grid, default=TEMPERATURE_GRID,
                    help="temperatures --temperature auto tries (comma list; 1 is always added)")
    ap.add_argument("--calibration-records", type=int, default=500,
                    help="records sampled per temperature by --temperature auto (at most the training patients)")
    ap.add_argument("--sample-workers", type=int, default=1,
                    help="processes (one thread each) that sample the synthetic patients")
    ap.add_argument("--min-prob", type=float, default=0.0,
                    help="epsilon sampling: drop tokens less likely than this at each step (0 = no truncation)")
    ap.add_argument("--stay-cap", type=float, default=1.0,
                    help="no sampled ICU / hospital stay longer than this x the longest in training (0: no cap)")
    ap.add_argument("--require-stays", action=argparse.BooleanOptionalAction, default=False,
                    help="every sampled record opens an ICU / hospital stay when every training record does")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ablate-hierarchy", action="store_true",
                    help="also train without hierarchy tying (same budget) and report its NLL")
    ap.add_argument("--no-audit", dest="audit", action="store_false",
                    help="skip the clinical-consistency audit of the generated records (synthehr benchmark audit)")
    ap.add_argument("--audit-throughput-records", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model-dir", help="reuse a saved trajectory model instead of training one")
    ap.add_argument("--work", help="folder for models, corpora and synthetic data (default: a temp folder)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    args.kv_heads = args.kv_heads or None  # 0: one key/value head per query head
    import torch

    torch.set_num_threads(args.threads)
    paths = run_scale(args) if args.scale else run_dataset(args)
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
