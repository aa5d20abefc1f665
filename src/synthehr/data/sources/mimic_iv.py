"""MIMIC-IV (v2.x) raw tables: `hosp/` and `icu/` CSVs, gzip or not, read by DuckDB from disk.

Stays: icu/icustays. Label: hosp/admissions.hospital_expire_flag of the stay's admission.
Static: age at ICU admission (anchor_age + years since anchor_year), sex, race, admission type,
first care unit, first height/weight in the stay.
Measurements: icu/chartevents and hosp/labevents (joined to the stay by subject and time window).
When chartevents is absent (the public demo ships it only in MEDS form) pass `meds=` a MEDS
extract of the same patients: measurements and the event view then come from it.
Without a MEDS extract the event view is converted from the raw tables (patients, admissions,
icustays, chartevents, labevents, diagnoses_icd, procedures_icd, prescriptions).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd

from synthehr.data.catalogue import FeatureCatalogue
from synthehr.data.icu_grid import LABEL
from synthehr.data.meds_io import check_time_order, meds_columns, meds_data_files, meds_relation_sql
from synthehr.data.report import PreparationReport
from synthehr.data.sources import SourceExtract
from synthehr.data.sources.meds import meds_measurements_sql, mimic_meds_mapping, read_codes_metadata
from synthehr.errors import DataError

TABLE_COLUMNS = {
    "icu/icustays": ["subject_id", "hadm_id", "stay_id", "first_careunit", "intime", "outtime"],
    "hosp/admissions": ["subject_id", "hadm_id", "admittime", "dischtime", "admission_type", "race",
                        "hospital_expire_flag"],
    "hosp/patients": ["subject_id", "gender", "anchor_age", "anchor_year"],
    "icu/chartevents": ["subject_id", "charttime", "itemid", "value", "valuenum", "valueuom"],
    "hosp/labevents": ["subject_id", "charttime", "itemid", "value", "valuenum", "valueuom"],
    "hosp/diagnoses_icd": ["subject_id", "hadm_id", "icd_code", "icd_version"],
    "hosp/procedures_icd": ["subject_id", "hadm_id", "chartdate", "icd_code", "icd_version"],
    "hosp/prescriptions": ["subject_id", "starttime", "drug"],
}


def find_table(root: Path, table: str, required: bool = True) -> Path | None:
    for suffix in (".csv.gz", ".csv", ".parquet"):
        p = root / f"{table}{suffix}"
        if p.is_file():
            return p
    if required:
        raise DataError(f"MIMIC-IV table {table} not found (looked for {table}.csv.gz, .csv, .parquet)", file=str(root))
    return None


def _reader(path: Path) -> str:
    p = str(path).replace("'", "''")
    if path.suffix == ".parquet":
        return f"read_parquet('{p}')"
    # all_varchar then explicit casts: a bad value is reported by column, not guessed away.
    return f"read_csv('{p}', header = true, all_varchar = true)"


def _table(con: duckdb.DuckDBPyConnection, root: Path, table: str, required: bool = True) -> str | None:
    path = find_table(root, table, required)
    if path is None:
        return None
    cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {_reader(path)}").fetchall()]
    missing = [c for c in TABLE_COLUMNS[table] if c not in cols]
    if missing:
        raise DataError(f"missing column(s) {missing}", file=str(path), column=missing[0])
    return _reader(path)


def _cast_or_fail(con, relation: str, path_hint: str, casts: dict[str, str]) -> None:
    """Raise naming the first value of each column that cannot be cast."""
    for col, typ in casts.items():
        bad = con.execute(f"SELECT {col} FROM {relation} WHERE {col} IS NOT NULL AND TRY_CAST({col} AS {typ}) IS NULL "
                          "LIMIT 1").fetchall()
        if bad:
            raise DataError(f"cannot parse as {typ}", file=path_hint, column=col, value=bad[0][0])


def extract(con: duckdb.DuckDBPyConnection, path: str | Path, report: PreparationReport,
            catalogue: FeatureCatalogue, meds: str | Path | None = None,
            max_hours: float | None = None) -> SourceExtract:
    root = Path(path)
    if not root.is_dir():
        raise DataError("MIMIC-IV folder not found (expected hosp/ and icu/ inside)", file=str(root))
    icu = _table(con, root, "icu/icustays")
    adm = _table(con, root, "hosp/admissions")
    pat = _table(con, root, "hosp/patients")
    for rel, name, casts in (
        (icu, "icu/icustays", {"stay_id": "BIGINT", "subject_id": "BIGINT", "hadm_id": "BIGINT",
                               "intime": "TIMESTAMP", "outtime": "TIMESTAMP"}),
        (adm, "hosp/admissions", {"hadm_id": "BIGINT", "hospital_expire_flag": "INTEGER"}),
        (pat, "hosp/patients", {"subject_id": "BIGINT", "anchor_age": "INTEGER", "anchor_year": "INTEGER"}),
    ):
        _cast_or_fail(con, rel, str(find_table(root, name)), casts)
    stays = con.execute(f"""
        SELECT CAST(i.stay_id AS BIGINT) AS stay_id, CAST(i.subject_id AS BIGINT) AS subject_id,
               CAST(i.hadm_id AS BIGINT) AS hadm_id, CAST(i.intime AS TIMESTAMP) AS intime,
               CAST(i.outtime AS TIMESTAMP) AS outtime, i.first_careunit AS icu_type,
               p.gender AS sex,
               CAST(p.anchor_age AS INTEGER) + year(CAST(i.intime AS TIMESTAMP)) - CAST(p.anchor_year AS INTEGER) AS age,
               a.race, a.admission_type, CAST(a.hospital_expire_flag AS INTEGER) AS {LABEL},
               a.hadm_id IS NULL AS no_admission
        FROM {icu} i
        LEFT JOIN {pat} p ON CAST(p.subject_id AS BIGINT) = CAST(i.subject_id AS BIGINT)
        LEFT JOIN {adm} a ON CAST(a.hadm_id AS BIGINT) = CAST(i.hadm_id AS BIGINT)
        ORDER BY subject_id, intime""").df()
    report.read("icustays", len(stays))
    icu_path = str(find_table(root, "icu/icustays"))
    dup = stays["stay_id"].duplicated()
    if dup.any():
        raise DataError("duplicate stay_id", file=icu_path, column="stay_id", value=int(stays.loc[dup, "stay_id"].iloc[0]))
    bad = stays["outtime"].isna() | stays["intime"].isna() | (stays["outtime"] <= stays["intime"])
    if bad.any():
        r = stays[bad].iloc[0]
        raise DataError(f"outtime {r['outtime']} is not after intime {r['intime']} for stay {r['stay_id']}",
                        file=icu_path, column="outtime", value=str(r["outtime"]))
    n_noadm = int(stays["no_admission"].sum())
    report.drop("stays", "admission_not_found(no label)", n_noadm)
    stays = stays[~stays["no_admission"]].drop(columns="no_admission").reset_index(drop=True)
    stays["los_hours"] = (stays["outtime"] - stays["intime"]).dt.total_seconds() / 3600.0
    con.register("_mimic_stays", stays[["stay_id", "subject_id", "intime", "outtime"]])

    chart = _table(con, root, "icu/chartevents", required=False)
    if chart is not None:
        lab = _table(con, root, "hosp/labevents", required=False)
        # chartevents name their stay; labevents only a time, so they join by the stay window.
        parts = [f"SELECT CAST(subject_id AS BIGINT) AS subject_id, CAST(charttime AS TIMESTAMP) AS time, "
                 f"CAST(itemid AS VARCHAR) AS code, TRY_CAST(valuenum AS DOUBLE) AS value, {hint} AS stay_hint FROM {rel}"
                 for rel, hint in ((chart, "TRY_CAST(stay_id AS BIGINT)"), (lab, "CAST(NULL AS BIGINT)"))
                 if rel is not None]
        raw = " UNION ALL ".join(parts)
        mapping = catalogue.mapping("mimic-iv")
        events_sql = _raw_events_sql(con, root, chart, lab)
        codes_metadata = None
        inputs = {"mimic_iv": str(root)}
    elif meds is not None:
        files = meds_data_files(meds)
        columns = meds_columns(con, files)
        check_time_order(con, files)
        events_sql = meds_relation_sql(files, columns)
        raw = meds_measurements_sql(files, columns)
        mapping = mimic_meds_mapping(catalogue)
        codes_metadata = read_codes_metadata(Path(meds))
        inputs = {"mimic_iv": str(root), "meds": str(meds)}
    else:
        raise DataError("icu/chartevents is missing; pass a MEDS extract of the same patients with --meds "
                        "(the public MIMIC-IV demo ships chartevents only in MEDS form)", file=str(root))
    measurements_sql = f"""
        SELECT s.stay_id, date_diff('second', s.intime, m.time) / 3600.0 AS offset_hours, m.code, m.value
        FROM ({raw}) m JOIN _mimic_stays s
          ON m.subject_id = s.subject_id AND m.time >= s.intime AND m.time <= s.outtime
             AND (m.stay_hint IS NULL OR m.stay_hint = s.stay_id)"""
    return SourceExtract(name="mimic-iv", stays=stays, measurements_sql=measurements_sql, mapping_dataset="mimic-iv",
                         events_sql=events_sql, codes_metadata=codes_metadata, max_hours=max_hours,
                         inputs=inputs, mapping=mapping)


def _raw_events_sql(con, root: Path, chart: str, lab: str | None) -> str:
    """Raw MIMIC-IV tables → MEDS events (codes in the MIMIC-IV MEDS ETL's style)."""
    pat = _table(con, root, "hosp/patients")
    adm = _table(con, root, "hosp/admissions")
    icu = _table(con, root, "icu/icustays")
    null_txt = "CAST(NULL AS VARCHAR)"
    parts = [
        f"SELECT CAST(subject_id AS BIGINT) AS subject_id, CAST(NULL AS TIMESTAMP) AS time, 'GENDER//' || gender AS code, "
        f"CAST(NULL AS DOUBLE) AS numeric_value, {null_txt} AS text_value FROM {pat}",
        f"SELECT CAST(subject_id AS BIGINT), make_timestamp(CAST(anchor_year AS INTEGER) - CAST(anchor_age AS INTEGER), 1, 1, 0, 0, 0), "
        f"'MEDS_BIRTH', NULL, {null_txt} FROM {pat}",
        f"SELECT CAST(subject_id AS BIGINT), CAST(admittime AS TIMESTAMP), 'HOSPITAL_ADMISSION//' || admission_type, NULL, {null_txt} FROM {adm}",
        f"SELECT CAST(subject_id AS BIGINT), CAST(dischtime AS TIMESTAMP), 'HOSPITAL_DISCHARGE//' || "
        f"CASE WHEN CAST(hospital_expire_flag AS INTEGER) = 1 THEN 'DIED' ELSE coalesce(discharge_location, 'UNK') END, "
        f"NULL, {null_txt} FROM {adm}" if "discharge_location" in _cols(con, adm) else
        f"SELECT CAST(subject_id AS BIGINT), CAST(dischtime AS TIMESTAMP), 'HOSPITAL_DISCHARGE//' || "
        f"CASE WHEN CAST(hospital_expire_flag AS INTEGER) = 1 THEN 'DIED' ELSE 'UNK' END, NULL, {null_txt} FROM {adm}",
        f"SELECT CAST(subject_id AS BIGINT), CAST(intime AS TIMESTAMP), 'ICU_ADMISSION//' || first_careunit, NULL, {null_txt} FROM {icu}",
        f"SELECT CAST(subject_id AS BIGINT), CAST(outtime AS TIMESTAMP), 'ICU_DISCHARGE//' || last_careunit, NULL, {null_txt} FROM {icu}"
        if "last_careunit" in _cols(con, icu) else
        f"SELECT CAST(subject_id AS BIGINT), CAST(outtime AS TIMESTAMP), 'ICU_DISCHARGE', NULL, {null_txt} FROM {icu}",
    ]
    if "dod" in _cols(con, pat):
        parts.append(f"SELECT CAST(subject_id AS BIGINT), CAST(dod AS TIMESTAMP), 'MEDS_DEATH', NULL, {null_txt} "
                     f"FROM {pat} WHERE dod IS NOT NULL AND dod <> ''")
    for rel in (chart, lab):
        if rel is not None:
            parts.append(f"SELECT CAST(subject_id AS BIGINT), CAST(charttime AS TIMESTAMP), 'LAB//' || itemid || '//' || "
                         f"coalesce(valueuom, 'UNK'), TRY_CAST(valuenum AS DOUBLE), CAST(value AS VARCHAR) FROM {rel}")
    dx = _table(con, root, "hosp/diagnoses_icd", required=False)
    if dx is not None:
        parts.append(f"SELECT CAST(d.subject_id AS BIGINT), CAST(a.dischtime AS TIMESTAMP), 'DIAGNOSIS//ICD//' || d.icd_version "
                     f"|| '//' || d.icd_code, NULL, {null_txt} FROM {dx} d JOIN {adm} a ON a.hadm_id = d.hadm_id")
    px = _table(con, root, "hosp/procedures_icd", required=False)
    if px is not None:
        parts.append(f"SELECT CAST(subject_id AS BIGINT), CAST(chartdate AS TIMESTAMP), 'PROCEDURE//ICD//' || icd_version "
                     f"|| '//' || icd_code, NULL, {null_txt} FROM {px}")
    rx = _table(con, root, "hosp/prescriptions", required=False)
    if rx is not None:
        parts.append(f"SELECT CAST(subject_id AS BIGINT), CAST(starttime AS TIMESTAMP), 'MEDICATION//' || drug, NULL, "
                     f"{null_txt} FROM {rx} WHERE starttime IS NOT NULL")
    return " UNION ALL ".join(parts)


def _cols(con, relation: str) -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()]
