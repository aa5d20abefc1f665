"""PhysioNet/CinC Challenge 2012 (set-a / set-b): per-record `Time,Parameter,Value` text files.

Accepts the tarball (`set-a.tar.gz`) or an extracted folder, plus the matching `Outcomes-X.txt`
(found beside the input when not given). Each record is one ICU stay and one patient; the challenge
has no patient linkage, so subject_id = stay_id = RecordID.

MEDS conversion: there are no calendar dates, so every stay is anchored at 2012-01-01 00:00 and
event times are the record's HH:MM offsets from it. GENDER//F|M (static), MEDS_BIRTH (anchor minus
age in years), ICU_ADMISSION//<ICU type>, PHYSIONET2012//<Parameter> with numeric_value,
ICU_DISCHARGE at anchor + Length_of_stay days, MEDS_DEATH at anchor + Survival days for in-hospital deaths.
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import polars as pl

from synthehr.data.icu_grid import LABEL
from synthehr.data.report import PreparationReport
from synthehr.data.sources import SourceExtract
from synthehr.errors import DataError

DESCRIPTORS = ("RecordID", "Age", "Gender", "Height", "ICUType")
ICU_TYPES = {1: "Coronary Care Unit", 2: "Cardiac Surgery Recovery Unit", 3: "Medical ICU", 4: "Surgical ICU"}
OUTCOME_COLUMNS = ["RecordID", "SAPS-I", "SOFA", "Length_of_stay", "Survival", "In-hospital_death"]
WINDOW_HOURS = 48.0
ANCHOR = pd.Timestamp("2012-01-01")
_TIME = re.compile(r"^\d{1,2}:\d{2}$")


def _iter_records(path: Path):
    """Yield (name, text) for every record file in a tarball or a folder."""
    if path.is_file():
        try:
            with tarfile.open(path) as tar:
                for m in tar:
                    if m.isfile() and m.name.endswith(".txt"):
                        yield f"{path}:{m.name}", tar.extractfile(m).read().decode("utf-8", errors="replace")
        except tarfile.TarError as e:
            raise DataError(f"not a readable tar archive ({e})", file=str(path)) from None
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if not p.name.lower().startswith("outcomes"))
        for f in files:
            yield str(f), f.read_text(errors="replace")
    else:
        raise DataError("PhysioNet 2012 input not found (expected set-X.tar.gz or a folder of records)",
                        file=str(path))


def read_records(path: Path, report: PreparationReport) -> pl.DataFrame:
    """All records as one long table: record_id, minutes, parameter, value.

    The files are concatenated (each line tagged with its file's index) and parsed in one pass;
    every check still names the file the bad line came from.
    """
    names: list[str] = []
    chunks: list[str] = []
    for name, text in _iter_records(path):
        header, _, body = text.partition("\n")
        if header.strip() != "Time,Parameter,Value":
            raise DataError(f"header must be 'Time,Parameter,Value', found {header[:60]!r}", file=name)
        i = len(names)
        names.append(name)
        lines = [ln for ln in body.splitlines() if ln.strip()]
        if not lines:
            raise DataError("record has no rows", file=name)
        bad = next((ln for ln in lines if ln.count(",") != 2), None)
        if bad is not None:
            raise DataError("line must have three comma-separated fields", file=name, value=bad)
        chunks.append("".join(f"{i},{ln}\n" for ln in lines))
    if not names:
        raise DataError("no record files found", file=str(path))
    df = pl.read_csv(io.StringIO("".join(chunks)), has_header=False,
                     new_columns=["file", "time", "parameter", "value"],
                     schema_overrides={"file": pl.Int32, "time": pl.String, "parameter": pl.String, "value": pl.String})
    bad_time = df.filter(~pl.col("time").str.contains(r"^\d{1,2}:\d{2}$"))
    if bad_time.height:
        raise DataError("unparseable time (expected HH:MM)", file=names[bad_time["file"][0]], column="Time",
                        value=bad_time["time"][0])
    df = df.with_columns(pl.col("value").cast(pl.Float64, strict=False).alias("num"))
    bad_val = df.filter(pl.col("num").is_null() & pl.col("value").is_not_null())
    if bad_val.height:
        raise DataError(f"unparseable number for parameter {bad_val['parameter'][0]!r}",
                        file=names[bad_val["file"][0]], column="Value", value=bad_val["value"][0])
    ids = df.filter(pl.col("parameter") == "RecordID").group_by("file").agg(pl.col("num").first().alias("rid"))
    if ids.height < len(names):
        missing = sorted(set(range(len(names))) - set(ids["file"].to_list()))[0]
        raise DataError("no RecordID row", file=names[missing], column="Parameter")
    dup = ids.filter(pl.col("rid").is_duplicated()).sort("file")
    if dup.height:
        rid = int(dup["rid"][0])
        raise DataError(f"duplicate RecordID {rid} (also in {names[dup['file'][0]]})", file=names[dup["file"][1]],
                        column="RecordID", value=rid)
    hm = df.get_column("time").str.split_exact(":", 1)
    out = df.join(ids, on="file").select(
        pl.col("rid").cast(pl.Int64).alias("record_id"),
        (hm.struct.field("field_0").cast(pl.Int32) * 60 + hm.struct.field("field_1").cast(pl.Int32)).alias("minutes"),
        "parameter", pl.col("num").alias("value"))
    report.read("record_files", len(names))
    report.read("observation_rows", out.height)
    return out


def find_outcomes(path: Path) -> Path:
    m = re.search(r"set-([a-z])", path.name)
    candidates = [path.parent / f"Outcomes-{m.group(1)}.txt"] if m else []
    candidates += sorted(path.parent.glob("Outcomes*.txt")) if path.is_file() else sorted(path.glob("Outcomes*.txt"))
    for c in candidates:
        if c.is_file():
            return c
    raise DataError("outcomes file not found beside the input; pass it with --outcomes (e.g. Outcomes-a.txt)",
                    file=str(path))


def read_outcomes(path: Path) -> pd.DataFrame:
    try:
        out = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError("outcomes file not found", file=str(path)) from None
    missing = [c for c in OUTCOME_COLUMNS if c not in out.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}", file=str(path), column=missing[0])
    for c in OUTCOME_COLUMNS:
        num = pd.to_numeric(out[c], errors="coerce")
        if num.isna().any():
            raise DataError("unparseable number", file=str(path), column=c, value=out.loc[num.isna(), c].iloc[0])
        out[c] = num
    dup = out["RecordID"].duplicated()
    if dup.any():
        raise DataError("duplicate RecordID", file=str(path), column="RecordID", value=int(out.loc[dup, "RecordID"].iloc[0]))
    bad = ~out["In-hospital_death"].isin([0, 1])
    if bad.any():
        raise DataError("label must be 0 or 1", file=str(path), column="In-hospital_death",
                        value=out.loc[bad, "In-hospital_death"].iloc[0])
    return out


def extract(con: duckdb.DuckDBPyConnection, path: str | Path, report: PreparationReport,
            outcomes: str | Path | None = None, max_hours: float | None = WINDOW_HOURS) -> SourceExtract:
    path = Path(path)
    outcomes_path = Path(outcomes) if outcomes else find_outcomes(path)
    records = read_records(path, report)
    oc = read_outcomes(outcomes_path)
    report.read("outcomes_rows", len(oc))

    # Descriptors: the first value of each, -1 meaning "not recorded".
    desc = (records.filter(pl.col("parameter").is_in(DESCRIPTORS)).group_by(["record_id", "parameter"])
            .agg(pl.col("value").first()).pivot(on="parameter", index="record_id", values="value").to_pandas())
    for c in DESCRIPTORS[1:]:
        if c not in desc.columns:
            desc[c] = np.nan
    desc = desc.replace(-1.0, np.nan)
    stays = pd.DataFrame({
        "stay_id": desc["record_id"].astype("int64"),
        "subject_id": desc["record_id"].astype("int64"),
        "age": desc["Age"],
        "sex": desc["Gender"].map({0.0: "F", 1.0: "M"}),
        "icu_type": desc["ICUType"].map(ICU_TYPES),
    })
    oc = oc.rename(columns={"RecordID": "stay_id", "In-hospital_death": LABEL, "SAPS-I": "saps_i", "SOFA": "sofa",
                            "Length_of_stay": "icu_los_days", "Survival": "survival_days"})
    for c in ("saps_i", "sofa", "icu_los_days", "survival_days"):
        oc[c] = oc[c].where(oc[c] >= 0)
    merged = stays.merge(oc, on="stay_id", how="left", indicator=True)
    no_outcome = merged["_merge"] == "left_only"
    if no_outcome.any():
        ids = merged.loc[no_outcome, "stay_id"].tolist()
        report.drop("stays", "no_outcome_row", len(ids))
        report.note(f"stays without an outcome row in {outcomes_path.name} (dropped): {ids[:50]}")
    extra = set(oc["stay_id"]) - set(stays["stay_id"])
    if extra:
        report.note(f"{len(extra)} outcome rows have no record file (ignored)")
    stays = merged.loc[~no_outcome].drop(columns="_merge")
    stays[LABEL] = stays[LABEL].astype(int)
    stays["los_hours"] = WINDOW_HOURS  # the challenge records the first 48 h of every stay
    n_descriptor_only = len(set(stays["stay_id"]) - set(
        records.filter(~pl.col("parameter").is_in(DESCRIPTORS + ("Weight",)))["record_id"].unique().to_list()))
    if n_descriptor_only:
        report.note(f"{n_descriptor_only} stays have descriptors only (no time series); kept, their grid is all fill")

    n_missing = records.filter(pl.col("value") == -1).height
    report.drop("measurements", "descriptor_not_recorded(-1)", n_missing)
    meas = records.filter((pl.col("value") != -1) & (pl.col("parameter") != "RecordID")).with_columns(
        (pl.col("minutes") / 60.0).alias("offset_hours"))
    con.register("_pn_meas", meas.select("record_id", "offset_hours", "parameter", "value").to_arrow())
    measurements_sql = ("SELECT record_id AS stay_id, offset_hours, parameter AS code, value FROM _pn_meas")

    static_ev = []
    for r in stays.itertuples():
        if isinstance(r.sex, str):
            static_ev.append((r.stay_id, None, f"GENDER//{r.sex}", None))
        if pd.notna(r.age):
            static_ev.append((r.stay_id, ANCHOR - pd.DateOffset(years=int(r.age)), "MEDS_BIRTH", None))
        static_ev.append((r.stay_id, ANCHOR, f"ICU_ADMISSION//{r.icu_type if isinstance(r.icu_type, str) else 'UNK'}", None))
        if pd.notna(r.icu_los_days):
            static_ev.append((r.stay_id, ANCHOR + pd.Timedelta(days=float(r.icu_los_days)), "ICU_DISCHARGE", None))
        if getattr(r, LABEL) == 1:
            days = r.survival_days if pd.notna(r.survival_days) else r.icu_los_days
            if pd.notna(days):
                static_ev.append((r.stay_id, ANCHOR + pd.Timedelta(days=float(days)), "MEDS_DEATH", None))
    ev = pd.DataFrame(static_ev, columns=["subject_id", "time", "code", "numeric_value"])
    ev["time"] = pd.to_datetime(ev["time"])
    con.register("_pn_static_events", ev)
    events_sql = (f"SELECT subject_id, time, code, CAST(numeric_value AS DOUBLE) AS numeric_value, "
                  f"CAST(NULL AS VARCHAR) AS text_value FROM _pn_static_events UNION ALL "
                  f"SELECT record_id AS subject_id, TIMESTAMP '{ANCHOR}' + to_minutes(CAST(minutes AS BIGINT)) AS time, "
                  f"'PHYSIONET2012//' || parameter AS code, value AS numeric_value, CAST(NULL AS VARCHAR) AS text_value "
                  f"FROM _pn_meas_events")
    con.register("_pn_meas_events", meas.filter(~pl.col("parameter").is_in(DESCRIPTORS)).select(
        "record_id", "minutes", "parameter", "value").to_arrow())
    return SourceExtract(name="physionet2012", stays=stays, measurements_sql=measurements_sql,
                         mapping_dataset="physionet2012", events_sql=events_sql, max_hours=max_hours,
                         inputs={"records": str(path), "outcomes": str(outcomes_path)})
