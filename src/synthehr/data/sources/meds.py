"""Any MEDS dataset → ICU stays, static facts and measurements.

ICU stays come from ICU_ADMISSION[//unit] and ICU_DISCHARGE events (paired by `icustay_id` when the
shards carry it, otherwise in time order per subject). In-hospital mortality: the first
HOSPITAL_DISCHARGE event at or after the ICU admission is `HOSPITAL_DISCHARGE//DIED`; with no
hospital discharge event, a MEDS_DEATH during the ICU stay (or within 24 h of leaving it) counts.
Measurement codes map to catalogue features by their first two `//` parts (`LAB//220045//bpm` →
`LAB//220045`), so MIMIC-IV MEDS extracts work with the packaged catalogue; other datasets pass a
code map (CSV: code, feature, multiplier, offset).
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from synthehr.data.catalogue import FeatureCatalogue
from synthehr.data.icu_grid import LABEL
from synthehr.data.meds_io import check_time_order, meds_columns, meds_data_files, meds_relation_sql, sql_file_list
from synthehr.data.report import PreparationReport
from synthehr.data.sources import SourceExtract
from synthehr.errors import DataError

CODE_PREFIX_SQL = "split_part(code, '//', 1) || '//' || split_part(code, '//', 2)"
DIED_CODE = "HOSPITAL_DISCHARGE//DIED"


def meds_measurements_sql(files: list[Path], columns: dict[str, str]) -> str:
    """subject_id, time, code prefix, value, stay_hint (the shard's icustay_id when it has one)."""
    hint = "TRY_CAST(icustay_id AS BIGINT)" if "icustay_id" in columns else "CAST(NULL AS BIGINT)"
    return (f"SELECT CAST(subject_id AS BIGINT) AS subject_id, CAST(time AS TIMESTAMP) AS time, "
            f"{CODE_PREFIX_SQL} AS code, CAST(numeric_value AS DOUBLE) AS value, {hint} AS stay_hint "
            f"FROM read_parquet({sql_file_list(files)}, union_by_name = true) WHERE time IS NOT NULL")


def mimic_meds_mapping(catalogue: FeatureCatalogue) -> pd.DataFrame:
    """The catalogue's MIMIC-IV itemids as MEDS code prefixes (`LAB//<itemid>`)."""
    m = catalogue.mapping("mimic-iv").copy()
    m["code"] = "LAB//" + m["code"].astype(str)
    return m


def read_code_map(path: str | Path, catalogue: FeatureCatalogue) -> pd.DataFrame:
    path = Path(path)
    try:
        cm = pd.read_csv(path, dtype={"code": str})
    except FileNotFoundError:
        raise DataError("code map not found", file=str(path)) from None
    missing = [c for c in ("code", "feature") if c not in cm.columns]
    if missing:
        raise DataError(f"code map lacks column(s) {missing}", file=str(path), column=missing[0])
    unknown = sorted(set(cm["feature"]) - {f.name for f in catalogue.features})
    if unknown:
        raise DataError("unknown feature(s) in code map", file=str(path), column="feature", value=unknown[0])
    cm["multiplier"] = cm.get("multiplier", 1.0)
    cm["offset"] = cm.get("offset", 0.0)
    cm["dataset"] = "meds"
    info = pd.DataFrame([(f.name, f.aggregation, f.plausible_min, f.plausible_max) for f in catalogue.features],
                        columns=["feature", "aggregation", "lo", "hi"])
    return cm.merge(info, on="feature")[["code", "feature", "multiplier", "offset", "aggregation", "lo", "hi"]]


def read_codes_metadata(root: Path) -> pd.DataFrame | None:
    p = root / "metadata" / "codes.parquet"
    return pd.read_parquet(p) if p.is_file() else None


def extract(con: duckdb.DuckDBPyConnection, path: str | Path, report: PreparationReport,
            catalogue: FeatureCatalogue, code_map: str | Path | None = None,
            max_hours: float | None = None, check_order: bool = True) -> SourceExtract:
    root = Path(path)
    files = meds_data_files(root)
    columns = meds_columns(con, files)
    if check_order:
        check_time_order(con, files)
    events_sql = meds_relation_sql(files, columns)
    extra = ", CAST(icustay_id AS BIGINT) AS icustay_id" if "icustay_id" in columns else ", NULL AS icustay_id"
    extra += ", CAST(race AS VARCHAR) AS race" if "race" in columns else ", CAST(NULL AS VARCHAR) AS race"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _meds_key AS
        SELECT CAST(subject_id AS BIGINT) AS subject_id, CAST(time AS TIMESTAMP) AS time, CAST(code AS VARCHAR) AS code
               {extra}
        FROM read_parquet({sql_file_list(files)}, union_by_name = true)
        WHERE code LIKE 'ICU_ADMISSION%' OR code LIKE 'ICU_DISCHARGE%' OR code LIKE 'HOSPITAL_ADMISSION%'
           OR code LIKE 'HOSPITAL_DISCHARGE%' OR code = 'MEDS_DEATH' OR code = 'MEDS_BIRTH' OR code LIKE 'GENDER//%'""").fetchall()
    key = con.execute("SELECT * FROM _meds_key ORDER BY subject_id, time NULLS FIRST").df()

    stays = _pair_stays(key, report)
    if stays.empty:
        raise DataError("no ICU stay found (no ICU_ADMISSION / ICU_DISCHARGE events)", file=str(root))
    stays = _attach_static(stays, key)
    stays = _attach_label(stays, key, report)

    con.register("_meds_stays", stays[["stay_id", "subject_id", "intime", "outtime"]])
    measurements_sql = f"""
        SELECT s.stay_id, date_diff('second', s.intime, m.time) / 3600.0 AS offset_hours, m.code, m.value
        FROM ({meds_measurements_sql(files, columns)}) m JOIN _meds_stays s
          ON m.subject_id = s.subject_id AND m.time >= s.intime AND m.time <= s.outtime
             AND (m.stay_hint IS NULL OR m.stay_hint = s.stay_id)"""
    mapping = read_code_map(code_map, catalogue) if code_map else mimic_meds_mapping(catalogue)
    return SourceExtract(name="meds", stays=stays, measurements_sql=measurements_sql, mapping_dataset="mimic-iv",
                         events_sql=events_sql, codes_metadata=read_codes_metadata(root), max_hours=max_hours,
                         inputs={"meds": str(root), **({"code_map": str(code_map)} if code_map else {})},
                         mapping=mapping)


def _pair_stays(key: pd.DataFrame, report: PreparationReport) -> pd.DataFrame:
    adm = key[key["code"].str.startswith("ICU_ADMISSION")].copy()
    dis = key[key["code"].str.startswith("ICU_DISCHARGE")].copy()
    adm["icu_type"] = adm["code"].str.split("//").str[1]
    if adm["icustay_id"].notna().all() and dis["icustay_id"].notna().all() and len(adm):
        a = adm.groupby("icustay_id").agg(subject_id=("subject_id", "first"), intime=("time", "min"),
                                          icu_type=("icu_type", "first"))
        d = dis.groupby("icustay_id").agg(outtime=("time", "max"))
        stays = a.join(d, how="left").reset_index().rename(columns={"icustay_id": "stay_id"})
    else:
        adm["k"] = adm.groupby("subject_id").cumcount()
        dis["k"] = dis.groupby("subject_id").cumcount()
        stays = adm.merge(dis[["subject_id", "k", "time"]].rename(columns={"time": "outtime"}),
                          on=["subject_id", "k"], how="left").rename(columns={"time": "intime"})
        stays["stay_id"] = stays["subject_id"] * 1000 + stays["k"]
    unpaired = stays["outtime"].isna() | stays["intime"].isna()
    report.drop("stays", "icu_admission_without_discharge", int(unpaired.sum()))
    stays = stays[~unpaired]
    bad = stays["outtime"] <= stays["intime"]
    if bad.any():
        r = stays[bad].iloc[0]
        raise DataError(f"ICU_DISCHARGE at {r['outtime']} is not after ICU_ADMISSION at {r['intime']} "
                        f"(subject {r['subject_id']}, stay {r['stay_id']})", column="time", value=str(r["outtime"]))
    stays = stays[["stay_id", "subject_id", "intime", "outtime", "icu_type"]].copy()
    stays["stay_id"] = stays["stay_id"].astype("int64")
    stays["los_hours"] = (stays["outtime"] - stays["intime"]).dt.total_seconds() / 3600.0
    return stays.sort_values(["subject_id", "intime"]).reset_index(drop=True)


def _attach_static(stays: pd.DataFrame, key: pd.DataFrame) -> pd.DataFrame:
    sex = key[key["code"].str.startswith("GENDER//")].drop_duplicates("subject_id")
    sex = sex.assign(sex=sex["code"].str.split("//").str[1])[["subject_id", "sex"]]
    birth = key[key["code"] == "MEDS_BIRTH"].drop_duplicates("subject_id")[["subject_id", "time"]]
    stays = stays.merge(sex, on="subject_id", how="left").merge(birth.rename(columns={"time": "birth"}),
                                                               on="subject_id", how="left")
    stays["age"] = (stays["intime"] - stays["birth"]).dt.days / 365.25
    # The hospital admission enclosing the ICU stay: the last one at or before ICU admission.
    hadm = key[key["code"].str.startswith("HOSPITAL_ADMISSION")][["subject_id", "time", "code", "race"]]
    hadm = hadm.assign(admission_type=hadm["code"].str.split("//").str[1]).drop(columns="code")
    stays = pd.merge_asof(stays.sort_values("intime"), hadm.sort_values("time").rename(columns={"time": "admittime"}),
                          left_on="intime", right_on="admittime", by="subject_id", direction="backward")
    return stays.drop(columns=["birth"]).sort_values(["subject_id", "intime"]).reset_index(drop=True)


def _attach_label(stays: pd.DataFrame, key: pd.DataFrame, report: PreparationReport) -> pd.DataFrame:
    dis = key[key["code"].str.startswith("HOSPITAL_DISCHARGE")][["subject_id", "time", "code"]]
    dis = dis.rename(columns={"time": "dischtime", "code": "discharge_code"}).sort_values("dischtime")
    stays = pd.merge_asof(stays.sort_values("intime"), dis, left_on="intime", right_on="dischtime",
                          by="subject_id", direction="forward")
    death = key[key["code"] == "MEDS_DEATH"].drop_duplicates("subject_id")[["subject_id", "time"]]
    stays = stays.merge(death.rename(columns={"time": "deathtime"}), on="subject_id", how="left")
    from_discharge = stays["discharge_code"].notna()
    died_in_stay = (stays["deathtime"] >= stays["intime"]) & (stays["deathtime"] <= stays["outtime"] + pd.Timedelta(hours=24))
    stays[LABEL] = np.where(from_discharge, stays["discharge_code"].eq(DIED_CODE), died_in_stay).astype(int)
    n_fallback = int((~from_discharge).sum())
    if n_fallback:
        report.note(f"{n_fallback} stays have no hospital discharge event; their label comes from MEDS_DEATH")
    return stays.drop(columns=["discharge_code"]).sort_values(["subject_id", "intime"]).reset_index(drop=True)
