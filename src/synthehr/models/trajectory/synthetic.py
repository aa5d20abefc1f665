"""Synthetic MEDS corpora with known structure: a Markov chain (sampler calibration) and a cohort shaped
like full MIMIC-IV (scale benchmark: 32k codes, admissions with ICU stays, labs with values, heavy-tailed
record lengths), written shard by shard so any size streams from disk."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

_EPOCH = np.datetime64("2100-01-01T00:00:00", "us")
_DAY_US = 86_400_000_000
_HOUR_US = 3_600_000_000


def markov_events(n_patients: int, transition: np.ndarray, start: np.ndarray, p_end: float, seed: int = 0,
                  gap_hours: float = 1.0, max_events: int = 200) -> pl.DataFrame:
    """Each patient: sex row, birth 40 years before the first event, then codes MC//0..K-1 every `gap_hours`
    hours following the chain (first code ~ start; after each event the record ends with p_end)."""
    rng = np.random.default_rng(seed)
    K = transition.shape[0]
    rows_sid, rows_t, rows_code = [], [], []
    for sid in range(1, n_patients + 1):
        birth = _EPOCH + np.timedelta64(int(rng.integers(0, 3650)) * _DAY_US, "us")
        t0 = birth + np.timedelta64(int(40 * 365.25 * _DAY_US), "us")
        rows_sid += [sid, sid]
        rows_t += [None, int(birth.astype(np.int64))]
        rows_code += ["GENDER//F" if rng.random() < 0.5 else "GENDER//M", "MEDS_BIRTH"]
        k = rng.choice(K, p=start)
        for j in range(max_events):
            rows_sid.append(sid)
            rows_t.append(int(t0.astype(np.int64)) + int(j * gap_hours * _HOUR_US))
            rows_code.append(f"MC//{k}")
            if rng.random() < p_end:
                break
            k = rng.choice(K, p=transition[k])
    return pl.DataFrame({"subject_id": np.asarray(rows_sid, np.int64),
                         "time": pl.Series(rows_t, dtype=pl.Int64).cast(pl.Datetime("us")),
                         "code": rows_code, "numeric_value": pl.Series([None] * len(rows_sid), dtype=pl.Float32)})


def transition_counts(events: pl.DataFrame, K: int) -> np.ndarray:
    """Counts of consecutive MC//i → MC//j pairs within each subject (file order)."""
    mc = events.filter(pl.col("code").str.starts_with("MC//")).with_columns(
        pl.col("code").str.slice(4).cast(pl.Int64).alias("k"))
    k = mc["k"].to_numpy()
    s = mc["subject_id"].to_numpy()
    same = s[1:] == s[:-1]
    C = np.zeros((K, K))
    np.add.at(C, (k[:-1][same], k[1:][same]), 1)
    return C


# ------------------------------------------------------------------ MIMIC-IV-shaped corpus

ADMISSION_TYPES = ["EW EMER.//EMERGENCY ROOM", "URGENT//TRANSFER FROM HOSPITAL", "ELECTIVE//PHYSICIAN REFERRAL",
                   "OBSERVATION ADMIT//EMERGENCY ROOM", "SURGICAL SAME DAY ADMISSION//PHYSICIAN REFERRAL",
                   "DIRECT EMER.//PHYSICIAN REFERRAL", "EU OBSERVATION//EMERGENCY ROOM"]
DISCHARGES = ["HOME", "HOME HEALTH CARE", "SKILLED NURSING FACILITY", "REHAB", "UNK", "CHRONIC/LONG TERM ACUTE CARE"]
ICU_UNITS = ["Medical Intensive Care Unit (MICU)", "Surgical Intensive Care Unit (SICU)",
             "Cardiac Vascular Intensive Care Unit (CVICU)", "Coronary Care Unit (CCU)", "Trauma SICU (TSICU)"]
RACES = ["WHITE", "BLACK/AFRICAN AMERICAN", "HISPANIC OR LATINO", "ASIAN", "OTHER", "UNKNOWN"]


def _zipf_sampler(n: int, a: float, rng: np.random.Generator):
    w = 1.0 / np.arange(1, n + 1) ** a
    cdf = np.cumsum(w) / w.sum()
    perm = rng.permutation(n)
    return lambda size: perm[np.minimum(np.searchsorted(cdf, rng.random(size)), n - 1)]


def mimic_like_codes(n_codes: int = 32000) -> dict[str, list[str]]:
    """Code names per family, ~n_codes in all (diagnoses 55%, medications 25%, labs 8%, procedures 12%)."""
    n_dx, n_med, n_lab = int(0.55 * n_codes), int(0.25 * n_codes), int(0.08 * n_codes)
    n_px = n_codes - n_dx - n_med - n_lab
    letters = "ABCDEFGHIJKLMNPRSTZ"
    dx = [f"DIAGNOSIS//ICD//10//{letters[i % len(letters)]}{(i // len(letters)) % 100:02d}{i // (len(letters) * 100)}"
          for i in range(n_dx)]
    med = [f"MEDICATION//DRUG{i:05d}//Administered" for i in range(n_med)]
    lab = [f"LAB//{50000 + i}//mg/dL" for i in range(n_lab)]
    px = [f"PROCEDURE//ICD//10//0{'ABCDEFGHJKLMNPQRSTWXY'[i % 21]}{i // 21:05d}" for i in range(n_px)]
    return {"dx": dx, "med": med, "lab": lab, "px": px}


def write_mimic_like_corpus(root: str | Path, n_patients: int, n_codes: int = 32000, shard_size: int = 10000,
                            seed: int = 0) -> dict:
    """MEDS folder root/data/train/<k>.parquet shaped like MIMIC-IV hosp + ICU stays.

    Per patient: sex, race (on admissions), birth; 1 + Geometric(0.45) admissions (cap 30) separated by
    log-normal gaps (median 120 d); log-normal length of stay (median 3.5 d); an ICU stay inside 25% of
    stays; per stay a daily lab panel of 4-14 Zipf-drawn labs with log-normal values, ~3 medication
    events per day, 1 + Poisson(7) discharge diagnoses, Poisson(1) procedures; 3% of stays end in death.
    Returns counts (patients, events, distinct codes, events per patient quantiles)."""
    root = Path(root)
    ddir = root / "data" / "train"
    ddir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fam = mimic_like_codes(n_codes)
    draw = {k: _zipf_sampler(len(v), 1.05, np.random.default_rng([seed, i])) for i, (k, v) in enumerate(fam.items())}
    names = {k: np.array(v, dtype=object) for k, v in fam.items()}
    lab_mu = np.random.default_rng([seed, 99]).normal(3.0, 1.0, len(fam["lab"]))
    total_events, lengths, codes_seen = 0, [], set()
    for k, lo in enumerate(range(0, n_patients, shard_size)):
        n = min(shard_size, n_patients - lo)
        sid = np.arange(lo + 1, lo + n + 1, dtype=np.int64)
        sex = np.where(rng.random(n) < 0.5, "GENDER//F", "GENDER//M")
        race = np.array(RACES, dtype=object)[rng.choice(len(RACES), n, p=[0.6, 0.15, 0.07, 0.05, 0.05, 0.08])]
        age0 = rng.uniform(18, 91, n)
        start = _EPOCH + (rng.integers(0, 80 * 365, n) * _DAY_US).astype("timedelta64[us]")
        birth = start - (age0 * 365.25 * _DAY_US).astype(np.int64).astype("timedelta64[us]")
        n_adm = np.minimum(1 + rng.geometric(0.45, n) - 1, 30)
        A = int(n_adm.sum())
        a_pat = np.repeat(np.arange(n), n_adm)
        first = np.r_[True, a_pat[1:] != a_pat[:-1]]
        los_us = (rng.lognormal(np.log(3.5), 0.8, A) * _DAY_US).astype(np.int64)
        gap_us = np.where(first, 0, (rng.lognormal(np.log(120), 1.2, A) * _DAY_US).astype(np.int64))
        # admission start = patient start + cumulative (previous stays + gaps)
        span = gap_us + np.r_[0, los_us[:-1]] * (~first)
        grp_start = np.maximum.accumulate(np.where(first, np.arange(A), 0))
        csum = np.cumsum(span)
        a_start = start[a_pat].astype(np.int64) + csum - csum[grp_start]
        a_end = a_start + los_us
        died = rng.random(A) < 0.03
        # a death ends the record: later admissions of that patient are dropped
        deaths_before = np.cumsum(died) - died          # deaths in earlier admissions (all patients)
        dead_before = deaths_before - deaths_before[grp_start] > 0
        keep = ~dead_before
        a_pat, a_start, a_end, died, los_us = a_pat[keep], a_start[keep], a_end[keep], died[keep], los_us[keep]
        A = a_pat.size
        ev_sid, ev_t, ev_code, ev_val = [], [], [], []

        def add(p, t, codes, vals=None):
            ev_sid.append(sid[p]); ev_t.append(t); ev_code.append(codes)
            ev_val.append(np.full(len(codes), np.nan, np.float32) if vals is None else vals.astype(np.float32))

        adm = np.array([f"HOSPITAL_ADMISSION//{x}" for x in ADMISSION_TYPES], dtype=object)
        dis = np.array([f"HOSPITAL_DISCHARGE//{x}" for x in DISCHARGES], dtype=object)
        add(a_pat, a_start, adm[rng.choice(len(adm), A, p=[0.45, 0.15, 0.1, 0.1, 0.08, 0.07, 0.05])])
        dcode = np.where(died, "HOSPITAL_DISCHARGE//DIED", dis[rng.choice(len(dis), A)])
        # ICU stays inside 25% of admissions
        icu = rng.random(A) < 0.25
        ii = np.flatnonzero(icu)
        i_start = a_start[ii] + (rng.random(ii.size) * 0.3 * los_us[ii]).astype(np.int64)
        i_end = i_start + (rng.uniform(0.2, 0.6, ii.size) * los_us[ii]).astype(np.int64)
        units = np.array(ICU_UNITS, dtype=object)[rng.choice(len(ICU_UNITS), ii.size)]
        add(a_pat[ii], i_start, np.array([f"ICU_ADMISSION//{u}" for u in units], dtype=object))
        add(a_pat[ii], i_end, np.array([f"ICU_DISCHARGE//{u}" for u in units], dtype=object))
        # daily lab panels
        days = np.maximum(1, (los_us // _DAY_US)).astype(np.int64)
        d_adm = np.repeat(np.arange(A), days)
        d_idx = np.arange(d_adm.size) - np.repeat(np.cumsum(days) - days, days)
        d_t = a_start[d_adm] + d_idx * _DAY_US + 6 * _HOUR_US
        d_t = np.minimum(d_t, a_end[d_adm] - 60_000_000)
        n_lab = rng.integers(4, 15, d_adm.size)
        l_adm = np.repeat(d_adm, n_lab)
        l_code = draw["lab"](l_adm.size)
        l_val = rng.lognormal(lab_mu[l_code], 0.4)
        add(a_pat[l_adm], np.repeat(d_t, n_lab), names["lab"][l_code], l_val)
        # medications
        n_med = rng.poisson(3 * days)
        m_adm = np.repeat(np.arange(A), n_med)
        m_t = a_start[m_adm] + (rng.random(m_adm.size) * los_us[m_adm]).astype(np.int64)
        add(a_pat[m_adm], m_t, names["med"][draw["med"](m_adm.size)])
        # procedures during the stay, diagnoses at discharge
        n_px = rng.poisson(1.0, A)
        p_adm = np.repeat(np.arange(A), n_px)
        p_t = a_start[p_adm] + (rng.random(p_adm.size) * los_us[p_adm]).astype(np.int64)
        add(a_pat[p_adm], p_t, names["px"][draw["px"](p_adm.size)])
        n_dx = 1 + rng.poisson(7, A)
        x_adm = np.repeat(np.arange(A), n_dx)
        add(a_pat[x_adm], a_end[x_adm], names["dx"][draw["dx"](x_adm.size)])
        add(a_pat, a_end, dcode)
        add(a_pat[died], a_end[died], np.array(["MEDS_DEATH"] * int(died.sum()), dtype=object))
        # order within a time: admission, ICU admission, others, diagnoses, ICU discharge, discharge, death
        s_all = np.concatenate(ev_sid)
        t_all = np.concatenate(ev_t)
        c_all = np.concatenate(ev_code)
        v_all = np.concatenate(ev_val)
        pr = np.select([np.char.startswith(c_all.astype(str), "HOSPITAL_ADMISSION"),
                        np.char.startswith(c_all.astype(str), "ICU_ADMISSION"),
                        np.char.startswith(c_all.astype(str), "ICU_DISCHARGE"),
                        np.char.startswith(c_all.astype(str), "HOSPITAL_DISCHARGE"),
                        c_all == "MEDS_DEATH"], [0, 1, 7, 8, 9], 5)
        order = np.lexsort((pr, t_all, s_all))
        timed = pl.DataFrame({"subject_id": s_all[order], "time": pl.Series(t_all[order], dtype=pl.Int64).cast(pl.Datetime("us")),
                              "code": pl.Series(c_all[order].tolist(), dtype=pl.Utf8),
                              "numeric_value": pl.Series(v_all[order], dtype=pl.Float32).fill_nan(None)})
        timed = timed.join(pl.DataFrame({"subject_id": sid, "_race": race.tolist()}), on="subject_id", how="left",
                           maintain_order="left").with_columns(
            pl.when(pl.col("code").str.starts_with("HOSPITAL_ADMISSION")).then(pl.col("_race")).alias("race")).drop("_race")
        static = pl.DataFrame({"subject_id": np.r_[sid, sid],
                               "time": pl.Series(np.r_[np.full(n, np.iinfo(np.int64).min), birth.astype(np.int64)],
                                                 dtype=pl.Int64),
                               "code": np.r_[sex, np.full(n, "MEDS_BIRTH")].tolist(),
                               "numeric_value": pl.Series([None] * (2 * n), dtype=pl.Float32),
                               "race": pl.Series([None] * (2 * n), dtype=pl.Utf8)})
        static = static.with_columns(pl.when(pl.col("time") == np.iinfo(np.int64).min).then(None)
                                     .otherwise(pl.col("time")).cast(pl.Datetime("us")).alias("time"))
        shard = pl.concat([static, timed]).sort(["subject_id", "time"], nulls_last=False, maintain_order=True)
        shard.write_parquet(ddir / f"{k}.parquet")
        total_events += shard.height
        lengths.append(shard.group_by("subject_id").len()["len"].to_numpy())
        codes_seen.update(shard["code"].unique().to_list())
    lengths = np.concatenate(lengths)
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"code": sorted(codes_seen)}).with_columns(
        pl.lit(None, pl.Utf8).alias("description"), pl.lit([], pl.List(pl.Utf8)).alias("parent_codes")) \
        .write_parquet(root / "metadata" / "codes.parquet")
    info = {"patients": int(n_patients), "events": int(total_events), "codes": len(codes_seen),
            "events_per_patient": {q: float(np.percentile(lengths, p)) for q, p in
                                   (("p5", 5), ("median", 50), ("mean", None), ("p95", 95), ("max", 100)) if p is not None}}
    info["events_per_patient"]["mean"] = float(lengths.mean())
    (root / "metadata" / "dataset.json").write_text(json.dumps({"dataset_name": "mimic-iv-shaped-synthetic", **info}))
    return info
