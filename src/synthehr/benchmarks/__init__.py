"""Benchmark suites. Each writes benchmarks/results/<suite>-<dataset>.json (one long format) + .md.

`synthehr benchmark SUITE [suite options]` dispatches to the module named here; each suite module
defines `main(argv: list[str]) -> int` with its own argparse options.
"""

SUITES = {
    "prepare": "synthehr.benchmarks.prepare_speed",
    "tabular": "synthehr.benchmarks.tabular",
    "flexgen": "synthehr.benchmarks.flexgen_suite",
    "audit": "synthehr.benchmarks.audit_suite",
    "app": "synthehr.benchmarks.app_load",
    "trajectory": "synthehr.benchmarks.trajectory_suite",
    "intergenehr": "synthehr.benchmarks.intergenehr_suite",
    "imputation-split": "synthehr.benchmarks.imputation_split",
}
