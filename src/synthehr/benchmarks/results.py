"""The one long results format every benchmark suite writes, plus its Markdown table.

{"suite", "dataset", "created", "environment": {cpu, torch, versions}, "rows": [{"model", "metric",
"value", "split", "seed", ...}]}
"""

from __future__ import annotations

import json
import math
import os
import platform
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import pandas as pd

ROW_KEYS = ("model", "metric", "value", "split", "seed")
_PACKAGES = ("synthehr", "torch", "numpy", "pandas", "polars", "duckdb", "scikit-learn", "sdv")


def environment() -> dict:
    versions = {}
    for p in _PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": versions.get("torch"), "versions": versions}


def display_path(path: str | Path) -> str:
    """How a results file names an input: relative to the working directory when it lies inside it (the
    repo), else only its last two parts -- results are committed, and one machine's absolute paths mean
    nothing on another (and should not leak into the repo)."""
    p = Path(path)
    try:
        return p.resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return Path(*p.parts[-2:]).as_posix() if p.is_absolute() else p.as_posix()


def make_row(model: str, metric: str, value, split: str = "", seed: int | None = None, **extra) -> dict:
    v = float(value) if value is not None else None
    if v is not None and not math.isfinite(v):
        v = None  # JSON has no NaN; a missing value is explicit
    return {"model": model, "metric": metric, "value": v, "split": split, "seed": seed, **extra}


def write_results(suite: str, dataset: str, rows: list[dict], out_dir: str | Path = "benchmarks/results",
                  notes: list[str] | None = None) -> tuple[Path, Path]:
    for r in rows:
        missing = [k for k in ROW_KEYS if k not in r]
        if missing:
            raise ValueError(f"result row {r} lacks {missing}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"suite": suite, "dataset": dataset, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "environment": environment(), "rows": rows}
    if notes:
        doc["notes"] = notes
    jpath = out_dir / f"{suite}-{dataset}.json"
    jpath.write_text(json.dumps(doc, indent=2))
    mpath = out_dir / f"{suite}-{dataset}.md"
    mpath.write_text(markdown_table(doc))
    return jpath, mpath


def markdown_table(doc: dict) -> str:
    df = pd.DataFrame(doc["rows"])
    lines = [f"# {doc['suite']} — {doc['dataset']}", "",
             f"created {doc['created']} on {doc['environment']['cpu']} ({doc['environment']['cores']} cores), "
             f"torch {doc['environment'].get('torch')}", ""]
    if df.empty:
        return "\n".join(lines + ["(no rows)"]) + "\n"
    # One row per metric (and split), one column per model: suites have few models, many metrics.
    df["row"] = df["metric"] + df["split"].map(lambda s: f" [{s}]" if s else "")
    table = df.pivot_table(index="row", columns="model", values="value", aggfunc="mean", sort=False, dropna=False)
    lines += ["| metric | " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * (len(table.columns) + 1)]
    for row, r in table.iterrows():
        lines.append(f"| {row} | " + " | ".join(_fmt(v) for v in r.to_numpy()) + " |")
    for n in doc.get("notes", []):
        lines += ["", f"- {n}"]
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    a = abs(v)
    return f"{v:,.0f}" if a >= 1000 else f"{v:.4g}"
