"""Command-line support for constraints: `--enforce` and `--bound` on `synthehr generate`.

The constraints ride on the existing `generate` sub-command rather than a sub-command of their own:
`add_generate_options(gen_parser)` adds the flags and `generate_from_args(model, args, observed)`
produces the table (plain `sample`/`condition` when no constraint is asked for, so existing output
is unchanged).  `register_cli` is the plugin hook `synthehr.cli` calls; it adds nothing.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping

import pandas as pd

from synthehr.constraints.enforce import generate_with_constraints

__all__ = ["add_generate_options", "enforced_equations", "generate_from_args", "register_cli", "report_lines"]


def register_cli(sub: Any) -> None:  # noqa: ARG001 - plugin hook; the flags live on `generate`
    """No sub-command of its own: see add_generate_options."""
    return None


def add_generate_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument(
        "--enforce", action="append", metavar="EQUATION[,EQUATION...]",
        help="equations every record must satisfy exactly: henderson_hasselbalch, base_excess, severinghaus "
             "or all (comma-separated, repeatable); the other features are generated given the constrained values")
    parser.add_argument(
        "--bound", action="append", metavar="TEXT",
        help="clinician bound, e.g. \"pao2 in [50, 60]\", \"map >= 120\", \"ph < 7.2\" (repeatable); values are "
             "drawn from the model's conditional restricted to the bound")
    parser.add_argument(
        "--max-proposals", type=int, default=None, metavar="N",
        help="give up on a too unlikely bound after N proposal rows (default: max(2e6, 200 n))")
    return parser


def enforced_equations(args: argparse.Namespace) -> list[str]:
    return [part.strip() for item in (getattr(args, "enforce", None) or []) for part in item.split(",") if part.strip()]


def generate_from_args(model: Any, args: argparse.Namespace, observed: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """The table `synthehr generate` writes: args.n records with args.seed, given `observed`
    (default: parsed from args.condition), with args.enforce / args.bound enforced."""
    if observed is None:
        from synthehr.cli import _parse_conditions

        observed = _parse_conditions(getattr(args, "condition", None))
    observed = dict(observed)
    equations = enforced_equations(args)
    bounds = list(getattr(args, "bound", None) or [])
    if not equations and not bounds:
        return model.condition(observed, n=args.n, seed=args.seed) if observed else model.sample(args.n, seed=args.seed)
    return generate_with_constraints(model, args.n, args.seed, observed, equations, bounds,
                                     max_proposals=getattr(args, "max_proposals", None))


def report_lines(table: pd.DataFrame) -> list[str]:
    """One line per equation / bound from the report `generate_with_constraints` attaches (empty if none)."""
    report = table.attrs.get("constraint_report") or {}
    lines = []
    for name, r in report.get("equations", {}).items():
        lines.append(f"{name}: MAE {r['mae']:.3g}, max |error| {r['max_abs_error']:.3g} over {r['n_rows']:,} rows"
                     f"{' (enforced)' if r['enforced'] else ''}")
    for text, r in report.get("bounds", {}).items():
        lines.append(f"bound {text!r}: {r['n_outside']:,} of {r['n_rows']:,} rows outside")
    return lines
