"""CLI for the trajectory generator.

`synthehr train --model trajectory --data MEDS_DIR --out MODEL_DIR` and
`synthehr generate --model MODEL_DIR -n N --out MEDS_DIR [--prompt ...]` dispatch here (see
`train_command`, `generate_command`, `is_trajectory_model`); `register_cli` adds only the non-clashing
`synthehr trajectory-validate MEDS_DIR` (structural validity of any MEDS folder).

Prompts (`--prompt`, repeatable): `sex=F`, `age=67` (years) or `age=65-69` (bucket), `race=WHITE` —
a demographic prompt; or `history=MEDS_DIR`, `subject=ID`, `until=2180-05-06T12:00` — continue that
real patient after `until` (its split is searched in train, tuning, held_out).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from synthehr.errors import ConditioningError, DataError

_INT_HP = {"min_subjects", "max_codes", "n_value_bins", "d_model", "n_layers", "n_heads", "context", "batch_rows",
           "max_steps", "seed", "max_len", "threads"}


def is_trajectory_model(path) -> bool:
    from synthehr.models.trajectory.generator import is_trajectory_model as _is

    return _is(path)


def _meds_root(data: str) -> Path:
    """A MEDS root, or a prepared folder (synthehr prepare) whose events/ is one."""
    p = Path(data)
    if (p / "data").is_dir():
        return p
    if (p / "events" / "data").is_dir():
        return p / "events"
    raise DataError("not a MEDS folder (no data/) nor a prepared folder (no events/data/)", file=str(p))


_STR_HP = {"seen_embedding"}  # hyper-parameters that take a word, not a number


def _hyperparameters(items) -> dict:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConditioningError(f"--param expects NAME=VALUE, got {item!r}")
        name, value = name.strip(), value.strip()
        if value.lower() in ("none", "null"):
            out[name] = None
        elif value.lower() in ("true", "false"):
            out[name] = value.lower() == "true"
        elif name in _STR_HP:
            out[name] = value
        else:
            try:
                out[name] = int(float(value)) if name in _INT_HP else float(value)
            except ValueError:
                raise ConditioningError(f"--param {name} expects a number, got {value!r}") from None
    return out


def train_command(args: argparse.Namespace) -> int:
    from synthehr.models.trajectory import TrajectoryGenerator

    root = _meds_root(args.data)
    hp = _hyperparameters(getattr(args, "param", None))
    t0 = time.perf_counter()
    gen = TrajectoryGenerator(**hp).fit(root, split=getattr(args, "split", "train") or "train",
                                        progress=lambda m: print(f"  {m}", flush=True))
    seconds = time.perf_counter() - t0
    out = gen.save(args.out)
    info = {"model": "trajectory", "data": str(root), "split": gen.info_["split"], "fit_seconds": seconds,
            **{k: gen.info_[k] for k in ("n_subjects", "n_tokens", "vocab", "repairs", "train")}}
    (Path(out) / "training.json").write_text(json.dumps(info, indent=2, default=str))
    v = gen.info_["vocab"]
    print(f"trained trajectory on {gen.info_['n_subjects']:,} patients ({gen.info_['n_tokens']:,} tokens) in "
          f"{seconds:.1f} s → {out}")
    print(f"  vocabulary {v['vocab_size']:,} tokens ({v['n_codes_kept']:,} of {v['n_codes_seen']:,} codes, "
          f"{100 * v['event_coverage']:.1f}% of events); final train NLL {gen.info_['train']['final_train_nll']:.3f}")
    return 0


def parse_prompt(items) -> dict:
    out: dict = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConditioningError(f"--prompt expects NAME=VALUE, got {item!r}")
        out[name.strip()] = value.strip()
    unknown = set(out) - {"sex", "age", "race", "history", "subject", "until"}
    if unknown:
        raise ConditioningError(f"unknown --prompt field(s) {sorted(unknown)}; use sex, age, race or history, subject, until")
    return out


def _history(prompt: dict):
    import polars as pl

    if "subject" not in prompt:
        raise ConditioningError("a history prompt needs subject=ID")
    root = _meds_root(prompt["history"])
    sid = int(prompt["subject"])
    for f in sorted((root / "data").rglob("*.parquet")):
        ev = pl.read_parquet(f).filter(pl.col("subject_id") == sid)
        if ev.height:
            return ev
    raise DataError(f"subject {sid} not found", file=str(root))


def _temperature(args: argparse.Namespace, gen, seed: int) -> float:
    """--temperature T, or 'auto' with --calibrate-on MEDS_DIR: chosen on that folder's train split
    (metrics.calibrate_temperature), printed with what each temperature scored."""
    from synthehr.models.trajectory.metrics import calibrate_temperature, parse_temperature

    raw = getattr(args, "temperature", None)
    where = getattr(args, "calibrate_on", None)
    try:
        t = parse_temperature(1.0 if raw is None else raw)
    except ValueError as e:
        raise ConditioningError(f"--{e}") from None
    if t != "auto":
        if where:
            raise ConditioningError("--calibrate-on goes with --temperature auto")
        return t
    if not where:
        raise ConditioningError("--temperature auto needs --calibrate-on MEDS_DIR (the training patients)")
    import polars as pl

    from synthehr.models.trajectory.generator import meds_shards

    root = _meds_root(where)
    train = pl.concat(meds_shards(root, "train"), how="diagonal_relaxed")
    records = int(getattr(args, "calibration_records", 500) or 500)
    if records < 1:
        raise ConditioningError(f"--calibration-records must be at least 1, got {records}")
    calib = calibrate_temperature(gen, train, n=min(records, int(train["subject_id"].n_unique())), seed=seed + 1,
                                  top_p=float(getattr(args, "top_p", 1.0) or 1.0),
                                  min_prob=float(getattr(args, "min_prob", 0.0) or 0.0),
                                  workers=int(getattr(args, "workers", 1)), progress=lambda m: print(f"  {m}"))
    print(f"temperature {calib['temperature']:g}: the best event-probability R2 against the training patients of "
          f"{root} ({calib['n']} records per temperature)")
    return float(calib["temperature"])


def generate_command(args: argparse.Namespace) -> int:
    from synthehr.models.trajectory import TrajectoryGenerator

    gen = TrajectoryGenerator.load(args.model)
    prompt = parse_prompt(getattr(args, "prompt", None))
    n, seed = int(args.n), int(getattr(args, "seed", 0) or 0)
    temperature = _temperature(args, gen, seed)
    top_p = float(getattr(args, "top_p", 1.0) or 1.0)
    min_prob = float(getattr(args, "min_prob", 0.0) or 0.0)
    workers = int(getattr(args, "workers", 1))
    if getattr(args, "stay_cap", None) is not None:  # a sampling setting: overrides the saved one for this run
        cap = float(args.stay_cap)
        if not (cap == 0 or cap >= 1):
            raise ConditioningError(f"--stay-cap must be 0 (no limit) or at least 1, got {cap:g}")
        gen.hyperparameters["stay_cap"] = cap
    out = Path(args.out)
    t0 = time.perf_counter()
    if not prompt:
        info = gen.sample_to_meds(out, n, seed=seed, temperature=temperature, top_p=top_p, min_prob=min_prob,
                                  workers=workers)
        events = info["events"]
    else:
        if "history" in prompt:
            cond = {"history": _history(prompt), "until": prompt.get("until")}
        else:
            extra = set(prompt) - {"sex", "age", "race"}
            if extra:
                raise ConditioningError(f"{sorted(extra)} only go with history=")
            cond = dict(prompt)
        ev = gen.condition(cond, n=n, seed=seed, temperature=temperature, top_p=top_p, min_prob=min_prob,
                            workers=workers)
        (out / "data" / "train").mkdir(parents=True, exist_ok=True)
        ev.write_parquet(out / "data" / "train" / "0.parquet")
        gen.write_metadata(out, sorted(ev["code"].unique().to_list()), n)
        events = ev.height
    s = gen.last_sample_stats_.as_dict()
    print(f"generated {n:,} patients ({events:,} events) in {time.perf_counter() - t0:.1f} s → {out}")
    limits, required = gen.stay_rules_text()
    print(f"  grammar mask removed {100 * s['mask_removed_mass_mean']:.2f}% of the probability mass per sampled "
          f"token; {s['closed_by_length_cap']} record(s) closed at the length cap")
    print("  stay limits: " + (f"{limits} (cut {100 * s['stay_cut_mass_mean']:.2f}% of the mass per sampled token)"
                               if limits else "none"))
    print("  required stays (every training record holds one): " + (required or "none"))
    return 0


def _validate_command(args: argparse.Namespace) -> int:
    import polars as pl

    from synthehr.models.trajectory import check_records

    root = _meds_root(args.meds)
    files = sorted((root / "data").rglob("*.parquet"))
    if not files:
        raise DataError("no data/**/*.parquet", file=str(root))
    results = [check_records(pl.read_parquet(f), icu_in_hospital=not args.icu_outside_stays) for f in files]
    r = pl.concat(results)
    bad = r.filter(~pl.col("valid"))
    print(f"{r.height:,} records, {r.height - bad.height:,} structurally valid ({100 * (1 - bad.height / max(r.height, 1)):.2f}%)")
    for reason, k in bad.group_by("reason").len().sort("len", descending=True).iter_rows():
        print(f"  {k:,} × {reason}")
    return 0 if bad.height == 0 else 1


def register_cli(sub) -> None:
    p = sub.add_parser("trajectory-validate", help="structural validity of the records of a MEDS folder")
    p.add_argument("meds", help="MEDS root (or a prepared folder with events/)")
    p.add_argument("--icu-outside-stays", action="store_true", help="do not require ICU stays inside hospital stays")
    p.set_defaults(func=_validate_command)
