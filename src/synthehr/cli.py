"""`synthehr` command line: a thin layer over the Python API (argparse, no logic of its own)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synthehr.errors import SynthEHRError


def _cmd_prepare(args: argparse.Namespace) -> int:
    from synthehr.data import prepare

    data = prepare(args.source, args.path, args.out, meds=args.meds, outcomes=args.outcomes, code_map=args.code_map,
                   max_hours=args.max_hours, seed=args.seed, memory_limit=args.memory_limit,
                   progress=not args.quiet)
    import json

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


def _cmd_benchmark(args: argparse.Namespace) -> int:
    if args.suite == "prepare":
        from synthehr.benchmarks.prepare_speed import run_prepare_benchmark

        run_prepare_benchmark(out_dir=Path(args.results), shared=Path(args.shared) if args.shared else None)
        return 0
    raise SystemExit(f"unknown benchmark suite {args.suite!r}")


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

    bench = sub.add_parser("benchmark", help="run a benchmark suite; results under benchmarks/results/")
    bench.add_argument("suite", choices=["prepare"])
    bench.add_argument("--results", default="benchmarks/results")
    bench.add_argument("--shared", help="folder holding the shared datasets (default: ../shared/data)")
    bench.set_defaults(func=_cmd_benchmark)
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
