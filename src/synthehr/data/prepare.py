"""`synthehr.prepare`: any supported source → the three canonical views on disk."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import duckdb
import pandas as pd

from synthehr import __version__
from synthehr.data.catalogue import FeatureCatalogue
from synthehr.data.icu_grid import BIN_HOURS, LABEL, aggregate_measurements, build_grid, n_bins_for
from synthehr.data.meds_io import write_events_view
from synthehr.data.report import PreparationReport
from synthehr.data.sources import SOURCES, SourceExtract
from synthehr.data.splits import assign_splits
from synthehr.data.views import (CATALOGUE_FILE, DATASET_FILE, EVENTS_DIR, GRID_FILE, REPORT_FILE, STATIC_FILE,
                                 PreparedData, load_prepared)
from synthehr.errors import DataError

STATIC_COLUMNS = ["stay_id", "subject_id", "split", "age", "sex", "race", "admission_type", "icu_type",
                  "los_hours"]


def prepare(source: str, path: str | Path, out: str | Path, *, meds: str | Path | None = None,
            outcomes: str | Path | None = None, code_map: str | Path | None = None,
            max_hours: float | None = None, seed: int = 0,
            split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
            catalogue: FeatureCatalogue | None = None, memory_limit: str = "4GB",
            progress: bool = True) -> PreparedData:
    """Prepare `path` (a `source` dataset) into `out`; returns the prepared views.

    source: 'mimic-iv' (raw hosp/ + icu/ CSVs, with `meds` when chartevents is absent),
            'meds' (any MEDS dataset, `code_map` for non-MIMIC codes) or
            'physionet2012' (set-X.tar.gz or folder, `outcomes` file found beside it by default).
    max_hours: grid window from ICU admission (default: the whole stay; 48 h for PhysioNet 2012).
    """
    if source not in SOURCES:
        raise DataError(f"unknown source {source!r}; choose one of {list(SOURCES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    catalogue = catalogue or FeatureCatalogue.load()
    report = PreparationReport(source=source)
    steps = _Progress(progress)
    with tempfile.TemporaryDirectory(prefix="synthehr-duckdb-") as tmp:
        con = duckdb.connect()
        con.execute(f"SET memory_limit = '{memory_limit}'").fetchall()
        con.execute(f"SET temp_directory = '{tmp}'").fetchall()
        con.execute("SET preserve_insertion_order = false").fetchall()

        with steps("reading source", report):
            extract = _extract(con, source, Path(path), report, catalogue, meds=meds, outcomes=outcomes,
                               code_map=code_map, max_hours=max_hours)
        report.inputs.update(extract.inputs)
        stays = extract.stays
        if stays.empty:
            raise DataError("the cohort is empty: no ICU stay with a label was found", file=str(path))
        splits = assign_splits(stays["subject_id"], seed=seed, fractions=split_fractions)
        stays = stays.merge(splits, on="subject_id", how="left")
        stays["n_bins"] = n_bins_for(stays["los_hours"], extract.max_hours)

        with steps("binning measurements", report):
            mapping = extract.mapping if extract.mapping is not None else catalogue.mapping(extract.mapping_dataset)
            binned, first = aggregate_measurements(con, extract.measurements_sql, stays, mapping, report)
        with steps("building the ICU grid", report):
            grid, fill_values = build_grid(binned, stays, catalogue, report)
            static = _static_view(stays, first, catalogue)
        with steps("writing the event stream (MEDS)", report):
            ev_info = write_events_view(con, extract.events_sql, splits, out / EVENTS_DIR, report,
                                        codes_metadata=extract.codes_metadata, dataset_name=f"synthehr-{source}")
        con.close()

    features = [c for c in grid.columns if c in {f.name for f in catalogue.grid_features}]
    grid.to_parquet(out / GRID_FILE, index=False)
    static.to_parquet(out / STATIC_FILE, index=False)
    catalogue.to_frame().to_csv(out / CATALOGUE_FILE, index=False)
    absent = [f.name for f in catalogue.grid_features if f.name not in features]
    info = {
        "synthehr_version": __version__, "source": source, "inputs": report.inputs, "seed": seed,
        "split_fractions": list(split_fractions), "bin_hours": BIN_HOURS, "max_hours": extract.max_hours,
        "features": features, "absent_features": absent,
        "salient_features": [f for f in catalogue.salient if f in features],
        "binary_features": [f for f in features if catalogue[f].kind == "binary"],
        "fill_values": fill_values, "label": LABEL,
        "plausible_ranges": {f: [catalogue[f].plausible_min, catalogue[f].plausible_max] for f in features},
        "units": {f: catalogue[f].unit for f in features},
    }
    (out / DATASET_FILE).write_text(json.dumps(info, indent=2))
    n_stays = grid["stay_id"].nunique()
    report.outputs = {
        "icu_grid": {"stays": int(n_stays), "rows": int(len(grid)), "features": len(features),
                     "deaths": int(static[LABEL].sum()), "absent_features": len(absent)},
        "static": {"rows": int(len(static))},
        "events": ev_info,
        "splits": {k: int(v) for k, v in splits["split"].value_counts().items()},
    }
    report.write(out / REPORT_FILE)
    return load_prepared(out)


def _extract(con, source: str, path: Path, report: PreparationReport, catalogue: FeatureCatalogue, *, meds,
             outcomes, code_map, max_hours) -> SourceExtract:
    if source == "physionet2012":
        from synthehr.data.sources import physionet2012

        return physionet2012.extract(con, path, report, outcomes=outcomes,
                                     max_hours=max_hours if max_hours is not None else physionet2012.WINDOW_HOURS)
    if source == "meds":
        from synthehr.data.sources import meds as meds_source

        return meds_source.extract(con, path, report, catalogue, code_map=code_map, max_hours=max_hours)
    from synthehr.data.sources import mimic_iv

    return mimic_iv.extract(con, path, report, catalogue, meds=meds, max_hours=max_hours)


def _static_view(stays: pd.DataFrame, first: pd.DataFrame, catalogue: FeatureCatalogue) -> pd.DataFrame:
    cols = [c for c in STATIC_COLUMNS if c in stays.columns]
    extra = [c for c in ("saps_i", "sofa", "icu_los_days", "survival_days") if c in stays.columns]
    static = stays[cols + extra + [LABEL]].copy()
    for f in catalogue.static_features:
        static[f.name] = static["stay_id"].map(first[f.name]) if f.name in getattr(first, "columns", []) else float("nan")
    for c in ("race", "admission_type", "icu_type", "sex"):
        if c not in static.columns:
            static[c] = None
    return static.sort_values("stay_id").reset_index(drop=True)


class _Progress:
    """Prints each step with its wall time (rich spinner when on a terminal)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, label: str, report: PreparationReport):
        return _Step(label, report, self.enabled)


class _Step:
    def __init__(self, label, report, enabled):
        self.label, self.report, self.enabled = label, report, enabled

    def __enter__(self):
        self.t0 = time.perf_counter()
        if self.enabled:
            from rich.console import Console

            self.console = Console(stderr=True)
            self.status = self.console.status(f"{self.label}…")
            self.status.__enter__()
        return self

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        self.report.seconds[self.label] = round(dt, 3)
        if self.enabled:
            self.status.__exit__(*exc)
            if exc[0] is None:
                self.console.print(f"[green]✓[/] {self.label} ({dt:.1f} s)")
        return False
