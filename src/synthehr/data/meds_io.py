"""Reading and writing MEDS datasets (Medical Event Data Standard) with DuckDB, streaming from disk.

MEDS layout: data/**/*.parquet with subject_id, time, code, numeric_value (+ optional text_value and
extension columns), sorted by subject then time (static rows with null time first);
metadata/codes.parquet (code, description, parent_codes); metadata/subject_splits.parquet.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pandas as pd

from synthehr.data.report import PreparationReport
from synthehr.errors import DataError

MEDS_REQUIRED = ("subject_id", "time", "code", "numeric_value")
MEDS_OUTPUT_COLUMNS = ("subject_id", "time", "code", "numeric_value", "text_value")


def meds_data_files(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise DataError("MEDS folder not found", file=str(root))
    files = sorted((root / "data").rglob("*.parquet")) if (root / "data").is_dir() else []
    if not files:
        raise DataError("no data/**/*.parquet shards found: not a MEDS dataset", file=str(root))
    return files


def sql_file_list(files: list[Path]) -> str:
    return "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"


def meds_columns(con: duckdb.DuckDBPyConnection, files: list[Path]) -> dict[str, str]:
    """Validate every shard has the MEDS core columns; return the union schema (column → type)."""
    columns: dict[str, str] = {}
    for f in files:
        try:
            desc = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{f}')").fetchall()
        except duckdb.Error as e:
            raise DataError(f"cannot be read as Parquet ({e})", file=str(f)) from None
        cols = {r[0]: r[1] for r in desc}
        missing = [c for c in MEDS_REQUIRED if c not in cols]
        if missing:
            raise DataError(f"MEDS shard lacks required column(s) {missing}", file=str(f), column=missing[0])
        if "TIMESTAMP" not in cols["time"].upper():
            raise DataError(f"MEDS column 'time' must be a timestamp, found {cols['time']}", file=str(f), column="time")
        columns.update({k: v for k, v in cols.items() if k not in columns})
    return columns


def check_time_order(con: duckdb.DuckDBPyConnection, files: list[Path]) -> None:
    """MEDS requires each shard sorted by subject, then time (nulls first). Name the first offence."""
    for f in files:
        bad = con.execute(f"""
            WITH r AS (
                SELECT subject_id, time, file_row_number AS rn,
                       lag(subject_id) OVER (ORDER BY file_row_number) AS prev_subject,
                       lag(time) OVER (ORDER BY file_row_number) AS prev_time
                FROM read_parquet('{f}', file_row_number = true))
            SELECT rn, subject_id, time, prev_subject, prev_time FROM r
            WHERE prev_subject > subject_id
               OR (prev_subject = subject_id AND time IS NULL AND prev_time IS NOT NULL)
               OR (prev_subject = subject_id AND time < prev_time)
            ORDER BY rn LIMIT 1""").fetchall()
        if bad:
            rn, sid, t, psid, pt = bad[0]
            raise DataError(
                f"events out of order at row {rn}: subject {sid} time {t} follows subject {psid} time {pt} "
                "(MEDS shards must be sorted by subject_id, then time)", file=str(f), column="time", value=str(t))


def meds_relation_sql(files: list[Path], columns: dict[str, str]) -> str:
    """A SELECT over all shards with the core columns (text_value null where the source lacks it)."""
    text = "CAST(text_value AS VARCHAR)" if "text_value" in columns else "CAST(NULL AS VARCHAR)"
    return (f"SELECT CAST(subject_id AS BIGINT) AS subject_id, CAST(time AS TIMESTAMP) AS time, "
            f"CAST(code AS VARCHAR) AS code, CAST(numeric_value AS DOUBLE) AS numeric_value, {text} AS text_value "
            f"FROM read_parquet({sql_file_list(files)}, union_by_name = true)")


def write_events_view(con: duckdb.DuckDBPyConnection, events_sql: str, splits: pd.DataFrame, out_dir: Path,
                      report: PreparationReport, codes_metadata: pd.DataFrame | None = None,
                      dataset_name: str = "synthehr") -> dict:
    """Write a MEDS dataset: data/<split>/0.parquet sorted by subject and time, plus metadata."""
    out_dir = Path(out_dir)
    (out_dir / "metadata").mkdir(parents=True, exist_ok=True)
    con.register("_splits", splits[["subject_id", "split"]])
    con.execute(f"CREATE OR REPLACE TEMP TABLE _events AS SELECT e.*, s.split FROM ({events_sql}) e "
                "LEFT JOIN _splits s USING (subject_id)").fetchall()
    n_total, n_nosplit = con.execute("SELECT count(*), count(*) FILTER (WHERE split IS NULL) FROM _events").fetchall()[0]
    report.read("events", n_total)
    report.drop("events", "subject_not_in_cohort", n_nosplit)
    counts = {}
    for split in ("train", "tuning", "held_out"):
        d = out_dir / "data" / split
        d.mkdir(parents=True, exist_ok=True)
        cols = ", ".join(MEDS_OUTPUT_COLUMNS)
        con.execute(f"COPY (SELECT {cols} FROM _events WHERE split = '{split}' "
                    f"ORDER BY subject_id, time NULLS FIRST, code) TO '{d / '0.parquet'}' (FORMAT PARQUET)").fetchall()
        counts[split] = con.execute(f"SELECT count(*) FROM _events WHERE split = '{split}'").fetchall()[0][0]
    n_codes = con.execute("SELECT count(DISTINCT code) FROM _events WHERE split IS NOT NULL").fetchall()[0][0]
    codes = con.execute("SELECT DISTINCT code FROM _events WHERE split IS NOT NULL").df()
    if codes_metadata is not None and len(codes_metadata):
        keep = [c for c in ("code", "description", "parent_codes") if c in codes_metadata.columns]
        codes = codes.merge(codes_metadata[keep].drop_duplicates("code"), on="code", how="left")
    else:
        codes["description"] = None
        codes["parent_codes"] = [[] for _ in range(len(codes))]
    codes.to_parquet(out_dir / "metadata" / "codes.parquet", index=False)
    splits[["subject_id", "split"]].to_parquet(out_dir / "metadata" / "subject_splits.parquet", index=False)
    (out_dir / "metadata" / "dataset.json").write_text(json.dumps(
        {"dataset_name": dataset_name, "dataset_version": "prepared-by-synthehr", "etl_name": "synthehr",
         "meds_version": "0.3.3"}, indent=2))
    con.execute("DROP TABLE _events").fetchall()
    con.unregister("_splits")
    return {"events": int(n_total - n_nosplit), "codes": int(n_codes), **{f"events_{k}": int(v) for k, v in counts.items()}}
