"""`synthehr` command line: a thin layer over the Python API (argparse, no logic of its own)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from synthehr.errors import SynthEHRError

# Torch's worker threads busy-wait by default; on a small shared CPU that slowed training ~10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _cmd_prepare(args: argparse.Namespace) -> int:
    from synthehr.data import prepare

    data = prepare(args.source, args.path, args.out, meds=args.meds, outcomes=args.outcomes, code_map=args.code_map,
                   max_hours=args.max_hours, seed=args.seed, memory_limit=args.memory_limit,
                   progress=not args.quiet)

    report = json.loads((Path(args.out) / "preparation_report.json").read_text())
    g = report["outputs"]["icu_grid"]
    print(f"prepared {args.source} → {args.out}")
    print(f"  icu_grid: {g['stays']:,} stays, {g['rows']:,} rows × {g['features']} features, "
          f"{g['deaths']:,} in-hospital deaths; absent features: {data.info['absent_features'] or 'none'}")
    print(f"  static:   {report['outputs']['static']['rows']:,} rows")
    ev = report["outputs"]["events"]
    print(f"  events:   {ev['events']:,} MEDS events, {ev['codes']:,} codes")
    print(f"  splits:   {report['outputs']['splits']}")
    for what, reasons in report["dropped"].items():
        total = sum(reasons.values())
        top = ", ".join(f"{k} {v:,}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])[:4])
        print(f"  dropped {what}: {total:,} ({top}{', …' if len(reasons) > 4 else ''})")
    for note in report["notes"]:
        print(f"  note: {note}")
    print(f"  full report: {Path(args.out) / 'preparation_report.json'}")
    return 0


def _parse_conditions(items: list[str] | None) -> dict:
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SynthEHRError(f"--condition expects NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            out[name.strip()] = value.strip()
    return out


def _read_table(path: str) -> "pd.DataFrame":
    import pandas as pd

    from synthehr.errors import DataError

    p = Path(path)
    if not p.is_file():
        raise DataError("table not found", file=str(p))
    if p.suffix == ".csv":
        return pd.read_csv(p)
    if p.suffix == ".parquet":
        return pd.read_parquet(p)
    raise DataError("expected a .parquet or .csv table", file=str(p))


def _write_table(df, path: str) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.suffix == ".csv":
        df.to_csv(p, index=False)
    else:
        df.to_parquet(p, index=False)
    return p


def _cmd_train(args: argparse.Namespace) -> int:
    if args.model == "trajectory":  # trains on a MEDS event stream, not on the ICU grid
        from synthehr.models.trajectory.cli import train_command

        return train_command(args)
    from synthehr.models.training import train_model

    hp = {k: v for k, v in _parse_conditions(args.param).items()}
    gen = train_model(args.model, args.data, args.out, split=args.split, **hp)
    info = json.loads((Path(args.out) / "training.json").read_text())
    print(f"trained {gen.model_type} on {info['rows']:,} {args.split} rows in {info['fit_seconds']:.1f} s → {args.out}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from synthehr.models.trajectory.cli import is_trajectory_model

    if is_trajectory_model(args.model):  # whole-patient event records → a MEDS folder
        if args.condition or args.label is not None or getattr(args, "enforce", None) or getattr(args, "bound", None):
            raise SynthEHRError("a trajectory model takes --prompt (sex=, age=, race=, or history=, subject=, "
                                "until=), not --condition/--label/--enforce/--bound")
        from synthehr.models.trajectory.cli import generate_command

        return generate_command(args)
    if args.prompt:
        raise SynthEHRError(f"--prompt is for trajectory models; {args.model} is a table model (use --condition)")
    from synthehr.models.trajectory.metrics import parse_temperature

    try:
        temperature = parse_temperature(args.temperature)
    except ValueError:
        temperature = None
    if args.calibrate_on or temperature != 1.0:  # only trajectory models sample with a temperature
        raise SynthEHRError(f"--temperature / --calibrate-on are for trajectory models; {args.model} is a table "
                            f"model")
    from synthehr.models.base import load_model

    model = load_model(args.model)
    observed = _parse_conditions(args.condition)
    if args.label is not None:
        label = getattr(model, "label", None)
        observed[label if isinstance(label, str) else "in_hospital_mortality"] = args.label
    from synthehr.constraints.cli import generate_from_args, report_lines

    out = generate_from_args(model, args, observed)
    path = _write_table(out, args.out)
    print(f"generated {len(out):,} records × {out.shape[1]} columns → {path}")
    for line in report_lines(out):
        print("  " + line)
    return 0


def _cmd_impute(args: argparse.Namespace) -> int:
    from synthehr.models.base import load_model

    model = load_model(args.model)
    table = _read_table(args.input)
    out = model.impute(table, seed=args.seed)
    path = _write_table(out, args.out)
    filled = int(table.reindex(columns=out.columns).isna().sum().sum())
    print(f"imputed {filled:,} missing cells in {len(out):,} rows → {path}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from synthehr.evaluation import evaluate_tables

    synthetic = _read_table(args.synthetic)
    if args.data:
        from synthehr.data import load_prepared

        prepared = load_prepared(args.data)
        real = prepared.feature_table("held_out", with_label=True)
        train = prepared.feature_table("train", with_label=True)
        label = args.label or prepared.label
    else:
        if not (args.real and args.train):
            raise SynthEHRError("give --data PREPARED_DIR, or both --real and --train tables")
        real, train, label = _read_table(args.real), _read_table(args.train), args.label
    if label and label not in synthetic.columns:
        label = None
    metrics = evaluate_tables(real, synthetic, train, label=label, out_dir=Path(args.out), seed=args.seed)
    print(f"evaluation written to {args.out}/metrics.json")
    print(f"report: {Path(args.out) / 'report.html'}")
    for line in _headline(metrics):
        print("  " + line)
    return 0


def _headline(metrics: dict) -> list[str]:
    """A few numbers worth seeing on screen; everything else is in metrics.json and the report."""
    from synthehr.evaluation import flatten_metrics

    wanted = ("rmspe", "mape", "mean_mmd", "correlation_difference_mean_abs", "tstr", "auroc", "mia_auc", "dcr")
    rows = flatten_metrics(metrics)
    out = []
    for r in rows:
        name = r["metric"]
        if any(w in name for w in wanted) and isinstance(r.get("value"), (int, float)):
            out.append(f"{name}{' [' + r['split'] + ']' if r.get('split') else ''}: {r['value']:.4g}")
    return out[:16]


def _cmd_benchmark(args: argparse.Namespace) -> int:
    import importlib

    from synthehr.benchmarks import SUITES

    if args.suite not in SUITES:
        raise SynthEHRError(f"unknown benchmark suite {args.suite!r}; choose one of {sorted(SUITES)}")
    return importlib.import_module(SUITES[args.suite]).main(args.suite_args)


# Capabilities that add their own sub-commands: each module defines register_cli(subparsers).
# Their set_defaults(func=...) handlers receive the parsed args and return an exit code.
PLUGIN_MODULES = (
    "synthehr.constraints.cli",
    "synthehr.models.conditional.cli",
    "synthehr.audit.cli",
    "synthehr.app.cli",
    "synthehr.models.trajectory.cli",
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="synthehr", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    prep = sub.add_parser("prepare", help="raw EHR data → ICU grid, static table and MEDS events")
    prep.add_argument("--source", required=True, choices=["mimic-iv", "meds", "physionet2012"])
    prep.add_argument("--path", required=True, help="MIMIC-IV root (hosp/, icu/), MEDS root, or PhysioNet set-X.tar.gz/folder")
    prep.add_argument("--out", required=True, help="output folder (created)")
    prep.add_argument("--meds", help="mimic-iv only: MEDS extract of the same patients (when chartevents is absent)")
    prep.add_argument("--outcomes", help="physionet2012 only: Outcomes-X.txt (default: found beside --path)")
    prep.add_argument("--code-map", help="meds only: CSV mapping code prefixes to catalogue features")
    prep.add_argument("--max-hours", type=float, help="grid window from ICU admission (default: whole stay; 48 for PhysioNet)")
    prep.add_argument("--seed", type=int, default=0, help="split seed (patient-level hash split)")
    prep.add_argument("--memory-limit", default="4GB", help="DuckDB memory limit; larger data spill to disk")
    prep.add_argument("--quiet", action="store_true")
    prep.set_defaults(func=_cmd_prepare)

    train = sub.add_parser("train", help="fit a generator on a prepared dataset's ICU grid and save it")
    train.add_argument("--model", required=True,
                       help="pmvae | vaeac | vae | flexgen | gaussian | independent_marginals | trajectory | ...")
    train.add_argument("--data", required=True,
                       help="prepared folder (from synthehr prepare); for trajectory, a MEDS root or a prepared folder")
    train.add_argument("--out", required=True, help="model folder to write")
    train.add_argument("--split", default="train")
    train.add_argument("--param", action="append", metavar="NAME=VALUE", help="hyper-parameter (repeatable)")
    train.set_defaults(func=_cmd_train)

    gen = sub.add_parser("generate", help="sample synthetic records from a saved model")
    gen.add_argument("--model", required=True, help="model folder")
    gen.add_argument("-n", type=int, default=1000)
    gen.add_argument("--condition", action="append", metavar="FEATURE=VALUE",
                     help="fix a feature; the rest is generated given it (repeatable)")
    gen.add_argument("--label", type=int, choices=[0, 1], help="outcome label to generate (e.g. 1 = died in hospital)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", required=True, help=".parquet or .csv; for a trajectory model, a MEDS folder")
    gen.add_argument("--prompt", action="append", metavar="NAME=VALUE",
                     help="trajectory models: sex=F, age=67 or age=65-69, race=WHITE (demographic prompt), or "
                          "history=MEDS_DIR subject=ID until=TIME (continue a real patient) (repeatable)")
    gen.add_argument("--temperature", default="1.0",
                     help="trajectory models: sampling temperature, or 'auto': the one (0.85-1) whose records best "
                          "match the per-code probabilities of the training patients given by --calibrate-on")
    gen.add_argument("--calibrate-on", metavar="MEDS_DIR",
                     help="trajectory models, --temperature auto: the MEDS folder the model was trained on (its "
                          "train split is read; nothing else)")
    gen.add_argument("--calibration-records", type=int, default=500,
                     help="--temperature auto: records sampled per temperature tried (default 500)")
    gen.add_argument("--top-p", type=float, default=1.0,
                     help="trajectory models: nucleus mass kept (1 = the full distribution, no truncation)")
    gen.add_argument("--min-prob", type=float, default=0.0,
                     help="trajectory models: drop tokens less likely than this at each step (epsilon sampling; "
                          "0 = no truncation)")
    gen.add_argument("--stay-cap", type=float,
                     help="trajectory models: no sampled ICU / hospital stay longer than this x the longest in the "
                          "training data (default: the model's stay_cap, 1; 0 = no limit)")
    gen.add_argument("--workers", type=int, default=1,
                     help="trajectory models: sampling processes, one CPU thread each (records depend on the seed "
                          "only, for any number > 1)")
    from synthehr.constraints.cli import add_generate_options

    add_generate_options(gen)
    gen.set_defaults(func=_cmd_generate)

    imp = sub.add_parser("impute", help="fill the empty cells of a table, each given the row's other cells")
    imp.add_argument("--model", required=True, help="model folder")
    imp.add_argument("--input", required=True, help=".parquet or .csv with empty cells to fill")
    imp.add_argument("--seed", type=int, default=0)
    imp.add_argument("--out", required=True, help=".parquet or .csv")
    imp.set_defaults(func=_cmd_impute)

    ev = sub.add_parser("evaluate", help="fidelity, utility, privacy and constraint metrics + HTML report")
    ev.add_argument("--synthetic", required=True, help=".parquet or .csv")
    ev.add_argument("--data", help="prepared folder: real = its held_out split, train = its train split")
    ev.add_argument("--real", help="real held-out table (.parquet/.csv), instead of --data")
    ev.add_argument("--train", help="real training table (.parquet/.csv), instead of --data")
    ev.add_argument("--label", help="binary outcome column for TSTR (default: the prepared label)")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--out", required=True)
    ev.set_defaults(func=_cmd_evaluate)

    bench = sub.add_parser("benchmark", help="run a benchmark suite; results under benchmarks/results/",
                           description="synthehr benchmark SUITE --help lists a suite's options")
    bench.add_argument("suite", help="prepare | tabular | ... (see synthehr.benchmarks.SUITES)")
    bench.add_argument("suite_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=_cmd_benchmark)
    for module in PLUGIN_MODULES:
        try:
            mod = __import__(module, fromlist=["register_cli"])
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("synthehr"):
                continue  # that capability is not built yet
            raise
        mod.register_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SynthEHRError as e:
        print(f"synthehr {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
