"""`synthehr benchmark prepare`: wall time, rows/s and peak memory of `synthehr.prepare`.

Each preparation runs in a fresh Python process so its peak RSS is its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from synthehr.benchmarks.results import make_row, write_results

REPO = Path(__file__).resolve().parents[3]

_CHILD = r"""
import json, resource, sys, time
from synthehr.data import prepare
args = json.loads(sys.argv[1])
t0 = time.perf_counter()
data = prepare(**args, progress=False)
wall = time.perf_counter() - t0
report = json.loads((data.root / "preparation_report.json").read_text())
print(json.dumps({"wall": wall, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rows_read": report["rows_read"], "grid_rows": len(data.icu_grid),
                  "stays": int(data.icu_grid["stay_id"].nunique()), "steps": report["seconds"]}))
"""


def cases(shared: Path) -> list[tuple[str, dict]]:
    demo = REPO / "data" / "demo"
    out = []
    if (shared / "physionet-challenge-2012" / "set-a.tar.gz").is_file():
        out.append(("physionet2012-set-a", {"source": "physionet2012",
                                            "path": str(shared / "physionet-challenge-2012" / "set-a.tar.gz")}))
    out.append(("mimic-iv-demo", {"source": "mimic-iv", "path": str(demo / "mimic-iv-demo-2.2"),
                                  "meds": str(demo / "mimic-iv-demo-meds")}))
    return out


def _rel(v: str) -> str:
    """Paths relative to the repository, so no machine's layout lands in committed results."""
    return os.path.relpath(v, REPO) if isinstance(v, str) and os.path.isabs(v) else v


def run_prepare_benchmark(out_dir: Path, shared: Path | None = None, repeats: int = 3) -> list[Path]:
    shared = shared or REPO.parent / "shared" / "data"
    written = []
    for dataset, args in cases(shared):
        rows = []
        for rep in range(repeats):
            with tempfile.TemporaryDirectory() as tmp:
                res = subprocess.run([sys.executable, "-c", _CHILD, json.dumps({**args, "out": tmp})],
                                     capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"prepare {dataset} failed:\n{res.stderr[-3000:]}")
            r = json.loads(res.stdout.strip().splitlines()[-1])
            # PhysioNet counts its text rows; MEDS-based sources count events.
            input_rows = r["rows_read"].get("observation_rows") or r["rows_read"].get("events", 0)
            rows += [make_row("prepare", "wall_seconds", r["wall"], seed=rep),
                     make_row("prepare", "input_rows_per_second", input_rows / r["wall"], seed=rep),
                     make_row("prepare", "peak_rss_mb", r["rss_mb"], seed=rep),
                     make_row("prepare", "input_rows", input_rows, seed=rep),
                     make_row("prepare", "grid_rows", r["grid_rows"], seed=rep),
                     make_row("prepare", "stays", r["stays"], seed=rep)]
            rows += [make_row("prepare", f"step_seconds:{k}", v, seed=rep) for k, v in r["steps"].items()]
            print(f"{dataset} run {rep + 1}/{repeats}: {r['wall']:.1f} s, {input_rows / r['wall']:,.0f} rows/s, "
                  f"peak {r['rss_mb']:.0f} MB", flush=True)
        j, m = write_results("prepare", dataset, rows, out_dir,
                             notes=[f"mean of {repeats} runs, each in a fresh process; machine load average at the end: "
                                    f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (other jobs inflate wall time)",
                                    f"inputs: { {k: _rel(v) for k, v in args.items()} }"])
        written += [j, m]
        print(f"  → {j}")
    return written


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="synthehr benchmark prepare", description=__doc__)
    p.add_argument("--results", default="benchmarks/results", help="output folder")
    p.add_argument("--shared", help="folder with the shared datasets (default: ../shared/data)")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    run_prepare_benchmark(Path(a.results), Path(a.shared) if a.shared else None, repeats=a.repeats)
    return 0
