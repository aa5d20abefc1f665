"""`synthehr benchmark audit`: clinical-consistency audit of real vs synthetic MEDS records.

Reproduces the seed's audit figures ("From Statistical Fidelity to Clinical Consistency", 2026) with
the rule audit of ``synthehr.audit``:

* inconsistency rate per rule family (share of records with >= 1 finding) on real held-out data
  (split ``real``; the demo's held-out split has only 10 subjects, so ``real_all`` — all demo subjects —
  is reported too), on synthetic records before the audit (``synthetic_before``) and after it
  (``synthetic_after``: repair, then drop records with a finding at or above ``--filter``);
* Cohen's d (synthetic minus real, per-record 0/1 indicators) per family before and after the audit,
  against ``real`` (and ``real_all``);
* audit throughput (records/s, events/s) on the demo subjects replicated to ``--throughput-records``.

Synthetic data: ``--synthetic MEDS_DIR`` audits a generator's output.  Without it the suite uses a
*reference trajectory sampler* — a baseline to be replaced by the trajectory model once it exists, not
a generator: each synthetic record takes its demographics (sex, birth, death) from one real training
subject and its timed events from another, shifted to start at the first subject's first event; then
each timed event is, with probability ``--mix``, replaced by an event drawn from the pooled training
events (code, value, text), and each remaining lab value is, with probability ``--mix``, redrawn from
that lab code's pooled values.  It reproduces the marginals of the training data while breaking the
joint structure, as a generator that has not learned it would.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import polars as pl

from synthehr.benchmarks.results import display_path, make_row, write_results

REPO = Path(__file__).resolve().parents[3]
SPLITS = ("real", "real_all", "synthetic_before", "synthetic_after")

# Why a rule fires on more than 1% of real MIMIC-IV demo records (checked by hand on the findings).
EXPLANATIONS = {
    "VAL001": "charting errors in ICU chartevents kept by the MEDS extract: arterial mean pressure (itemid 220052) "
              "below 0 or above 300 mmHg from arterial-line zeroing/flushing artefacts (12 of 100 subjects), a "
              "Fahrenheit temperature typed into the Celsius item 223762, FiO2 entered as 4 (litres/min or a "
              "fraction) in item 223835, a tidal volume of 585,573 mL, a peak pressure of 298 cmH2O and a weight of 0 — "
              "recording errors, not physiology; the repair drops these events",
    "DUP001": "valueless lab rows repeated at the same time (serum indices H/I/L and 'Red Top Hold', itemids 50934, "
              "50947, 50979, 51678, and 'Length of Urine Collection' 51087), ICU lab values charted twice with the same "
              "value, and the same ICD-10-PCS procedure coded twice on one day; the repair keeps one copy",
    "DC001": "real prescribing: propranolol (portal hypertension, tremor) and labetalol (blood pressure) in patients "
             "with an asthma code — a label contraindication clinicians weigh against benefit",
    "DC006": "ketorolac or ibuprofen given during an admission with coronary bypass surgery (4 admissions): a "
             "documented real-world deviation from the NSAID boxed warning (peri-operative CABG pain)",
    "DDI101": "warfarin overlapping with naproxen or ketorolac (3 patients): a textbook bleeding-risk pair that "
              "clinicians sometimes accept with monitoring",
    "DDI008": "ramelteon with ciprofloxacin in one patient",
    "DDI014": "tizanidine with ciprofloxacin in one patient (label contraindication)",
    "EQN001": "one blood gas whose serum (chemistry) bicarbonate was drawn at the same time: pH 7.11, PaCO2 94, "
              "HCO3 22 deviates 0.12 pH units from Henderson-Hasselbalch (chemistry total CO2 is not blood-gas HCO3)",
}


# --------------------------------------------------------------------------------------------- sampler
def reference_trajectories(train: pl.DataFrame, n: int, seed: int = 0, mix: float = 0.3,
                           id_offset: int = 900_000_000) -> pl.DataFrame:
    """Baseline synthetic MEDS records from real training events (see the module docstring)."""
    rng = np.random.default_rng(seed)
    core = train.select("subject_id", pl.col("time").cast(pl.Datetime("us")), "code",
                        pl.col("numeric_value").cast(pl.Float64), pl.col("text_value").cast(pl.Utf8))
    is_demo = pl.col("time").is_null() | pl.col("code").is_in(["MEDS_BIRTH", "MEDS_DEATH"])
    demo, timed = core.filter(is_demo), core.filter(~is_demo)
    subjects = timed["subject_id"].unique().sort().to_numpy()
    first = dict(timed.group_by("subject_id").agg(pl.col("time").min()).iter_rows())
    demo_by = {k[0]: g for k, g in demo.partition_by("subject_id", as_dict=True).items()}
    timed_by = {k[0]: g for k, g in timed.partition_by("subject_id", as_dict=True).items()}
    parts = []
    for i in range(n):
        d, e = rng.choice(subjects, 2, replace=False) if len(subjects) > 1 else (subjects[0], subjects[0])
        sid = id_offset + i
        if d in demo_by:
            parts.append(demo_by[d].with_columns(subject_id=pl.lit(sid, dtype=pl.Int64)))
        shift = first.get(d, first[e]) - first[e]
        parts.append(timed_by[e].with_columns(subject_id=pl.lit(sid, dtype=pl.Int64), time=pl.col("time") + shift))
    out = pl.concat(parts)
    t_mask = out["time"].is_not_null() & ~out["code"].is_in(["MEDS_BIRTH", "MEDS_DEATH"])
    replace = t_mask.to_numpy() & (rng.random(out.height) < mix)
    # 1) event replacement from the pooled training events
    idx = rng.integers(0, timed.height, int(replace.sum()))
    repl = out.filter(pl.Series(replace)).select("subject_id", "time").hstack(
        timed[idx].select("code", "numeric_value", "text_value"))
    kept = out.filter(~pl.Series(replace))
    # 2) lab values redrawn from the code's pooled values
    pool = timed.filter(pl.col("numeric_value").is_not_null() & pl.col("code").str.starts_with("LAB//")) \
                .sort("code").select("code", "numeric_value")
    stats = pool.with_row_index("i").group_by("code").agg(start=pl.col("i").min(), count=pl.len())
    kept = kept.with_row_index("_k").join(stats, on="code", how="left")
    redraw = (kept["count"].is_not_null() & kept["numeric_value"].is_not_null()).to_numpy() \
        & (rng.random(kept.height) < mix) & kept["time"].is_not_null().to_numpy()
    u = rng.random(kept.height)
    pos = np.where(redraw, kept["start"].fill_null(0).to_numpy() + np.floor(u * kept["count"].fill_null(1)
                                                                              .to_numpy()).astype(np.int64), 0)
    new_vals = pool["numeric_value"].to_numpy()[pos]
    kept = kept.with_columns(numeric_value=pl.when(pl.Series(redraw)).then(pl.Series(new_vals))
                             .otherwise(pl.col("numeric_value"))).drop("_k", "start", "count")
    return pl.concat([kept, repl.select(kept.columns)]).sort("subject_id", "time", nulls_last=False)


def replicate(events: pl.DataFrame, copies: int, id_step: int = 1_000_000_000) -> pl.DataFrame:
    """`copies` copies of the records with distinct subject ids (for throughput measurements)."""
    core = events.select("subject_id", "time", "code", "numeric_value", "text_value")
    return pl.concat([core.with_columns(subject_id=pl.col("subject_id") + k * id_step) for k in range(copies)])


# --------------------------------------------------------------------------------------------- metrics
def cohens_d_binary(synthetic: np.ndarray, real: np.ndarray) -> float:
    """Cohen's d (synthetic minus real) of per-record 0/1 indicators; 0 when both are constant and equal."""
    from synthehr.evaluation.consistency import cohens_d

    s, r = np.asarray(synthetic, float), np.asarray(real, float)
    d = cohens_d(s, r)
    if math.isnan(d) and s.size >= 2 and r.size >= 2 and s.std() == 0 and r.std() == 0 and s.mean() == r.mean():
        return 0.0
    return d


def _rates(flags: pl.DataFrame, families: list[str]) -> dict[str, float]:
    from synthehr.audit.engine import family_rates

    return family_rates(flags, families)


def throughput(events: pl.DataFrame, rules, catalogue, total_records: int, chunk_records: int) -> dict:
    """Rule-audit speed on `events` replicated to `total_records` records, audited `chunk_records` at a time."""
    from synthehr.audit.engine import audit

    n_subj = events["subject_id"].n_unique()
    copies = max(1, chunk_records // n_subj)
    chunk = replicate(events, copies)
    audit(chunk.head(200_000), rules, catalogue=catalogue)  # warm-up (imports, drug-name cache)
    n_chunks = math.ceil(total_records / (copies * n_subj))
    secs, cpu, recs, evs = 0.0, 0.0, 0, 0
    for _ in range(n_chunks):
        t0, c0 = time.perf_counter(), time.process_time()
        res = audit(chunk, rules, catalogue=catalogue)
        secs += time.perf_counter() - t0
        cpu += time.process_time() - c0
        recs += res.n_records
        evs += res.n_events
    return {"records": recs, "events": evs, "seconds": secs, "cpu_seconds": cpu, "records_per_second": recs / secs,
            "events_per_second": evs / secs, "records_per_cpu_second": recs / cpu, "events_per_record": evs / recs,
            "chunk_records": copies * n_subj}


def run_audit_benchmark(meds: Path, out_dir: Path, synthetic: Path | None = None, dataset: str = "mimic-iv-demo",
                        n_synthetic: int = 500, mix: float = 0.3, seed: int = 0, filter_severity: str = "warning",
                        repair: bool = True, throughput_records: int = 20_000, chunk_records: int = 1_000,
                        llm=None, llm_max_records: int = 50) -> list[Path]:
    from synthehr.audit.engine import audit, read_meds, record_flags
    from synthehr.audit.ruleset import FAMILIES, load_rules
    from synthehr.data.catalogue import FeatureCatalogue

    rules, catalogue = load_rules(), FeatureCatalogue.load()
    fams = list(FAMILIES)
    real = read_meds(meds)
    split_of = real.select("subject_id", split=pl.col("_shard").str.split("/").list.first()).unique("subject_id")
    held = split_of.filter(pl.col("split") == "held_out")["subject_id"]
    print(f"real: {real['subject_id'].n_unique()} records ({held.len()} held out), {real.height:,} events", flush=True)
    r_all = audit(real, rules, catalogue=catalogue)
    flags = {"real_all": r_all.records, "real": r_all.records.filter(pl.col("subject_id").is_in(held.implode()))}

    if synthetic is not None:
        syn = read_meds(synthetic).drop("_shard")
        model = Path(synthetic).name
    else:
        train = real.filter(pl.col("_shard").str.starts_with("train/")).drop("_shard")
        if train.is_empty():  # a dataset without a train split: sample from every real record
            train = real.drop("_shard")
        syn = reference_trajectories(train, n_synthetic, seed=seed, mix=mix)
        model = "reference-shuffle-baseline"
    print(f"synthetic ({model}): {syn['subject_id'].n_unique()} records, {syn.height:,} events", flush=True)
    r_syn = audit(syn, rules, repair=repair, filter_severity=filter_severity, catalogue=catalogue)
    flags["synthetic_before"] = r_syn.records
    kept = pl.Series(r_syn.kept_subjects, dtype=pl.Int64)
    fa = r_syn.findings_after.filter(pl.col("subject_id").is_in(kept.implode()))
    flags["synthetic_after"] = record_flags(fa, kept, fams)
    rates = {s: _rates(flags[s], fams) for s in SPLITS}

    rows: list[dict] = []
    for s in SPLITS:
        for f in [*fams, "any"]:
            rows.append(make_row(model if s.startswith("synthetic") else "real", f"inconsistency_rate_{f}",
                                 rates[s][f], split=s, seed=seed if s.startswith("synthetic") else None,
                                 records=flags[s].height))
    d = {}
    for ref in ("real", "real_all"):
        for phase, split in (("before", "synthetic_before"), ("after", "synthetic_after")):
            for f in [*fams, "any"]:
                def ind(fl, fam=f):
                    col = (pl.col("max_level") >= 0) if fam == "any" else pl.col(fam)
                    return fl.select(col.cast(pl.Float64))[:, 0].to_numpy()

                v = cohens_d_binary(ind(flags[split]), ind(flags[ref]))
                d[(ref, phase, f)] = v
                rows.append(make_row(model, f"cohens_d_{phase}_audit_{f}", v, split=ref, seed=seed))
    rows.append(make_row(model, "records_kept_share", flags["synthetic_after"].height / max(1, r_syn.n_records),
                         split="synthetic_after", seed=seed))
    for rid, n in sorted(r_syn.repairs.items()):
        rows.append(make_row(model, f"repaired_events_{rid}", n, split="synthetic_after", seed=seed))
    # per-rule record rates on real data (to explain rules firing on > 1 % of real records)
    notes_rules = []
    for split_name, rec in (("real_all", r_all.records), ("real", flags["real"])):
        subj = rec["subject_id"].implode()
        per_rule = r_all.findings.filter(pl.col("subject_id").is_in(subj)).group_by("rule_id") \
                        .agg(n=pl.col("subject_id").n_unique()).sort("rule_id")
        for rid, n in per_rule.iter_rows():
            rate = n / rec.height
            rows.append(make_row("real", f"rule_rate_{rid}", rate, split=split_name, records=rec.height))
            if split_name == "real_all" and rate > 0.01:
                notes_rules.append(f"{rid} fires on {rate:.0%} of real records: "
                                   f"{EXPLANATIONS.get(rid, 'no explanation recorded')}")

    print("throughput ...", flush=True)
    tp = throughput(real.drop("_shard"), rules, catalogue, throughput_records, chunk_records)
    rows += [make_row("rules", "records_per_second", tp["records_per_second"], split="throughput",
                      records=tp["records"], events_per_record=round(tp["events_per_record"], 1)),
             make_row("rules", "events_per_second", tp["events_per_second"], split="throughput",
                      records=tp["records"]),
             make_row("rules", "records_per_cpu_second", tp["records_per_cpu_second"], split="throughput",
                      records=tp["records"])]
    print(f"  {tp['records']:,} records ({tp['events']:,} events) in {tp['seconds']:.1f} s: "
          f"{tp['records_per_second']:,.0f} records/s, {tp['events_per_second']:,.0f} events/s", flush=True)

    llm_note = "LLM reviewer: not run (no OpenAI-compatible endpoint configured; none was available on this machine)"
    if llm is not None and llm.enabled:
        from synthehr.audit.llm import LLMReviewer, agreement, summarise_records

        subj = syn["subject_id"].unique().sort().sample(min(llm_max_records, syn["subject_id"].n_unique()),
                                                        seed=seed).to_list()
        reviews = LLMReviewer(llm).review(summarise_records(syn, subj, rules=rules))
        ag = agreement(r_syn.findings, reviews)
        if "overall" in ag:
            rows += [make_row(model, "llm_rule_agreement", ag["overall"]["agreement"], split="synthetic_before",
                              seed=seed, records=ag["records_judged_by_both"]),
                     make_row(model, "llm_rule_kappa", ag["overall"]["cohens_kappa"], split="synthetic_before",
                              seed=seed, records=ag["records_judged_by_both"])]
        llm_note = (f"LLM reviewer {llm.model} at {llm.base_url}: {ag.get('records_judged_by_both', 0)} records "
                    f"judged by both, {ag.get('reviewer_errors', 0)} reviewer errors")

    held_n, all_n = flags["real"].height, flags["real_all"].height
    notes = [
        f"real = MIMIC-IV demo held-out split ({held_n} records: rates are noisy, steps of {1 / max(1, held_n):.0%}); "
        f"real_all = all {all_n} demo records (train + tuning + held_out), reported for stability",
        ("synthetic = " + (f"generator output from {display_path(synthetic)}" if synthetic else
                           f"{n_synthetic} records from the reference trajectory sampler (mix={mix}, seed={seed}): a "
                           "BASELINE that shuffles real training events across subjects, to be replaced by the "
                           "trajectory model; pass --synthetic MEDS_DIR to audit a generator")),
        f"audit = {'repair, then ' if repair else ''}drop records with a finding of severity >= {filter_severity}; "
        f"{flags['synthetic_after'].height} of {r_syn.n_records} synthetic records kept. After-audit rates use the "
        "same rules that filtered, so they are 0 by construction for every family whose rules are at or above the "
        "filter severity; the informative numbers are the before rates, the kept share and Cohen's d",
        "inconsistency_rate_<family> = share of records with >= 1 finding of that family; Cohen's d = "
        "(mean_syn - mean_real) / pooled SD of the per-record 0/1 indicators (0 when both are constant and equal); "
        "signed: negative = synthetic cleaner than real",
        f"throughput: the {real['subject_id'].n_unique()} demo records replicated to {tp['records']:,} records "
        f"({tp['events_per_record']:,.0f} events per record), audited {tp['chunk_records']:,} records per call, "
        f"report mode, all rules, 2 CPU cores shared with other jobs: wall {tp['seconds']:.0f} s, process CPU "
        f"{tp['cpu_seconds']:.0f} s ({tp['records_per_cpu_second']:,.0f} records per CPU-second, both cores counted); "
        f"the 10,000 records/s target would need {10_000 * tp['events_per_record'] / 1e6:,.0f} M events/s at this "
        "record length",
        llm_note,
        *notes_rules,
    ]
    written = list(write_results("audit", dataset, rows, out_dir, notes=notes))
    written.append(_figure(out_dir, dataset, rates, d, fams, tp))
    _append_family_table(written[1], rates, d, fams, tp, flags)
    return written


def _figure(out_dir: Path, dataset: str, rates, d, fams, tp) -> Path:
    from synthehr.audit.report import benchmark_figure

    fig = benchmark_figure({s: rates[s] for s in SPLITS}, {f: d[("real", "before", f)] for f in fams},
                           {f: d[("real", "after", f)] for f in fams}, fams, tp["records_per_second"],
                           tp["events_per_record"])
    path = Path(out_dir) / f"audit-{dataset}.png"
    fig.savefig(path, dpi=72, metadata={"Software": None})
    return path


def _append_family_table(md: Path, rates, d, fams, tp, flags) -> None:
    def f3(v):
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = ["", "## By rule family", "",
             "| family | real (held-out, n=%d) | real_all (n=%d) | synthetic before (n=%d) | synthetic after (n=%d) "
             "| d before | d after | d before (vs real_all) | d after (vs real_all) |"
             % (flags["real"].height, flags["real_all"].height, flags["synthetic_before"].height,
                flags["synthetic_after"].height),
             "|---|---|---|---|---|---|---|---|---|"]
    for f in [*fams, "any"]:
        dd = [d.get((ref, ph, f)) for ref in ("real", "real_all") for ph in ("before", "after")]
        lines.append(f"| {f} | {f3(rates['real'][f])} | {f3(rates['real_all'][f])} | "
                     f"{f3(rates['synthetic_before'][f])} | {f3(rates['synthetic_after'][f])} | "
                     f"{f3(dd[0])} | {f3(dd[1])} | {f3(dd[2])} | {f3(dd[3])} |")
    lines += ["", f"Rule audit throughput: {tp['records_per_second']:,.0f} records/s, "
                  f"{tp['events_per_second']:,.0f} events/s ({tp['events_per_record']:,.0f} events/record); "
                  f"{tp['records_per_cpu_second']:,.0f} records per process CPU-second.", ""]
    md.write_text(md.read_text() + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="synthehr benchmark audit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--meds", default=str(REPO / "data" / "demo" / "mimic-iv-demo-meds"), help="real MEDS dataset")
    p.add_argument("--dataset", default="mimic-iv-demo", help="name used in the result files")
    p.add_argument("--synthetic", help="MEDS folder of a generator's output (default: the reference sampler)")
    p.add_argument("--n-synthetic", type=int, default=500, help="reference sampler: records to draw")
    p.add_argument("--mix", type=float, default=0.3, help="reference sampler: replacement probability")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--filter", default="warning", choices=["info", "warning", "error", "critical"],
                   help="audit: drop records with a finding at or above this severity")
    p.add_argument("--no-repair", action="store_true", help="audit: filter only, no repairs")
    p.add_argument("--throughput-records", type=int, default=20_000)
    p.add_argument("--chunk-records", type=int, default=1_000)
    p.add_argument("--llm-url", help="OpenAI-compatible base URL for the optional reviewer")
    p.add_argument("--llm-model")
    p.add_argument("--llm-max-records", type=int, default=50)
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    a = p.parse_args(argv)
    from synthehr.audit.llm import LLMConfig

    llm = LLMConfig.from_env(base_url=a.llm_url, model=a.llm_model)
    paths = run_audit_benchmark(Path(a.meds), Path(a.out_dir), Path(a.synthetic) if a.synthetic else None,
                                a.dataset, a.n_synthetic, a.mix, a.seed, a.filter, not a.no_repair,
                                a.throughput_records, a.chunk_records, llm, a.llm_max_records)
    for path in paths:
        print(f"  → {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
