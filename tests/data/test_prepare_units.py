"""Small hand-made inputs: the grid rules, splits and every bad-input error."""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from synthehr.data import assign_splits, prepare
from synthehr.data.icu_grid import MASK_PREFIX
from synthehr.errors import DataError

OUTCOMES_HEADER = "RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death\n"


def write_record(folder: Path, rid: int, rows: list[tuple[str, str, float]], age=60, gender=1) -> None:
    lines = ["Time,Parameter,Value", f"00:00,RecordID,{rid}", f"00:00,Age,{age}", f"00:00,Gender,{gender}",
             "00:00,Height,-1", "00:00,ICUType,3", "00:00,Weight,80"]
    lines += [f"{t},{p},{v}" for t, p, v in rows]
    (folder / f"{rid}.txt").write_text("\n".join(lines) + "\n")


def tiny_physionet(tmp_path: Path, n: int = 30) -> Path:
    d = tmp_path / "set-x"
    d.mkdir()
    rng = np.random.default_rng(0)
    out = OUTCOMES_HEADER
    for i in range(n):
        rid = 100000 + i
        rows = [("00:30", "HR", 80 + i), ("01:00", "HR", 90 + i), ("05:00", "pH", 7.3), ("05:00", "PaO2", 80),
                ("05:00", "FiO2", 0.5), ("09:10", "HR", 100), ("47:59", "Temp", 37.0)]
        write_record(d, rid, rows)
        out += f"{rid},10,5,7,-1,{int(rng.random() < 0.3)}\n"
    (tmp_path / "Outcomes-x.txt").write_text(out)
    return d


def test_grid_rules_on_handmade_records(tmp_path):
    folder = tiny_physionet(tmp_path)
    data = prepare("physionet2012", folder, tmp_path / "out", outcomes=tmp_path / "Outcomes-x.txt", progress=False)
    g = data.icu_grid[data.icu_grid["stay_id"] == 100000].set_index("bin")
    assert len(g) == 12
    assert g.loc[0, "heart_rate"] == pytest.approx(85.0)  # median of 80 and 90 in bin 0
    assert bool(g.loc[0, MASK_PREFIX + "heart_rate"]) and not bool(g.loc[1, MASK_PREFIX + "heart_rate"])
    assert g.loc[1, "heart_rate"] == pytest.approx(85.0)  # forward filled
    assert g.loc[2, "heart_rate"] == pytest.approx(100.0)
    assert g.loc[1, "fio2"] == pytest.approx(50.0)  # fraction → percent
    assert g.loc[1, "pf_ratio"] == pytest.approx(160.0)  # derived in the bin where both were measured
    assert g.loc[11, "temperature"] == pytest.approx(37.0)
    # Before its first measurement a feature takes the training split's median.
    train_median = data.info["fill_values"]["ph"]
    assert g.loc[0, "ph"] == pytest.approx(train_median) and not bool(g.loc[0, MASK_PREFIX + "ph"])


def test_physionet_tarball_and_folder_agree(tmp_path):
    folder = tiny_physionet(tmp_path)
    tar_path = tmp_path / "set-x.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        tar.add(folder, arcname="set-x")
    a = prepare("physionet2012", folder, tmp_path / "a", outcomes=tmp_path / "Outcomes-x.txt", progress=False)
    b = prepare("physionet2012", tar_path, tmp_path / "b", progress=False)  # outcomes found beside the tarball
    pd.testing.assert_frame_equal(a.icu_grid, b.icu_grid)


def test_implausible_values_are_counted_not_silently_dropped(tmp_path):
    folder = tiny_physionet(tmp_path)
    write_record(folder, 100000, [("00:30", "HR", 80), ("01:00", "HR", 900), ("02:00", "pH", 73.5)])
    data = prepare("physionet2012", folder, tmp_path / "out", outcomes=tmp_path / "Outcomes-x.txt", progress=False)
    import json

    dropped = json.loads((tmp_path / "out" / "preparation_report.json").read_text())["dropped"]["measurements"]
    assert dropped["implausible_value:heart_rate"] == 1
    assert dropped["implausible_value:ph"] == 1
    assert data.icu_grid.loc[data.icu_grid["stay_id"] == 100000, "heart_rate"].iloc[0] == 80


def test_missing_outcome_rows_are_reported_by_id(tmp_path):
    folder = tiny_physionet(tmp_path)
    lines = (tmp_path / "Outcomes-x.txt").read_text().splitlines()
    (tmp_path / "Outcomes-x.txt").write_text("\n".join(lines[:-2]) + "\n")
    data = prepare("physionet2012", folder, tmp_path / "out", outcomes=tmp_path / "Outcomes-x.txt", progress=False)
    import json

    report = json.loads((tmp_path / "out" / "preparation_report.json").read_text())
    assert report["dropped"]["stays"]["no_outcome_row"] == 2
    assert any("100028" in n and "100029" in n for n in report["notes"])
    assert data.icu_grid["stay_id"].nunique() == 28


@pytest.mark.parametrize("problem, match", [
    ("bad_value", r"Value.*'abc'"),
    ("bad_time", r"Time.*'1:2x'"),
    ("bad_header", r"header"),
    ("duplicate_id", r"duplicate RecordID 100001"),
])
def test_bad_physionet_records_name_file_column_and_value(tmp_path, problem, match):
    folder = tiny_physionet(tmp_path)
    f = folder / "100003.txt"
    text = f.read_text()
    if problem == "bad_value":
        text += "06:00,HR,abc\n"
    elif problem == "bad_time":
        text += "1:2x,HR,80\n"
    elif problem == "bad_header":
        text = "Time;Parameter;Value\n" + text.split("\n", 1)[1]
    else:
        text = text.replace("RecordID,100003", "RecordID,100001")
    f.write_text(text)
    with pytest.raises(DataError, match=match) as e:
        prepare("physionet2012", folder, tmp_path / "out", outcomes=tmp_path / "Outcomes-x.txt", progress=False)
    assert "100003.txt" in str(e.value)


def test_bad_outcomes_file(tmp_path):
    folder = tiny_physionet(tmp_path)
    oc = tmp_path / "Outcomes-x.txt"
    oc.write_text(oc.read_text().replace("In-hospital_death", "death"))
    with pytest.raises(DataError, match=r"Outcomes-x.txt.*In-hospital_death"):
        prepare("physionet2012", folder, tmp_path / "out", outcomes=oc, progress=False)
    with pytest.raises(DataError, match=r"not found"):
        prepare("physionet2012", tmp_path / "nope.tar.gz", tmp_path / "out", progress=False)


def test_empty_cohort_is_an_error(tmp_path):
    folder = tiny_physionet(tmp_path, n=1)
    (tmp_path / "Outcomes-x.txt").write_text(OUTCOMES_HEADER)
    with pytest.raises(DataError, match="empty"):
        prepare("physionet2012", folder, tmp_path / "out", outcomes=tmp_path / "Outcomes-x.txt", progress=False)


def _copy_raw(demo_raw: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "raw"
    shutil.copytree(demo_raw, dst)
    return dst


def _rewrite_csv(path: Path, edit) -> None:
    df = pd.read_csv(path)
    df = edit(df)
    with gzip.open(path, "wt") as fh:
        df.to_csv(fh, index=False)


def test_mimic_missing_table_and_column(demo_raw, demo_meds, tmp_path):
    raw = _copy_raw(demo_raw, tmp_path)
    (raw / "hosp" / "patients.csv.gz").unlink()
    with pytest.raises(DataError, match=r"hosp/patients not found"):
        prepare("mimic-iv", raw, tmp_path / "o", meds=demo_meds, progress=False)
    raw2 = _copy_raw(demo_raw, tmp_path / "b")
    _rewrite_csv(raw2 / "icu" / "icustays.csv.gz", lambda d: d.drop(columns=["intime"]))
    with pytest.raises(DataError, match=r"icustays.csv.gz.*column 'intime'"):
        prepare("mimic-iv", raw2, tmp_path / "o", meds=demo_meds, progress=False)


def test_mimic_bad_values_duplicates_and_order(demo_raw, demo_meds, tmp_path):
    raw = _copy_raw(demo_raw, tmp_path / "a")
    _rewrite_csv(raw / "icu" / "icustays.csv.gz", lambda d: d.assign(intime=d["intime"].where(d.index != 3, "yesterday")))
    with pytest.raises(DataError, match=r"icustays.csv.gz.*column 'intime'.*'yesterday'"):
        prepare("mimic-iv", raw, tmp_path / "o", meds=demo_meds, progress=False)
    raw = _copy_raw(demo_raw, tmp_path / "b")
    _rewrite_csv(raw / "icu" / "icustays.csv.gz", lambda d: pd.concat([d, d.iloc[[0]]]))
    with pytest.raises(DataError, match=r"duplicate stay_id"):
        prepare("mimic-iv", raw, tmp_path / "o", meds=demo_meds, progress=False)
    raw = _copy_raw(demo_raw, tmp_path / "c")
    _rewrite_csv(raw / "icu" / "icustays.csv.gz", lambda d: d.assign(outtime=d["outtime"].where(d.index != 0, "2000-01-01 00:00:00")))
    with pytest.raises(DataError, match=r"outtime.*not after intime"):
        prepare("mimic-iv", raw, tmp_path / "o", meds=demo_meds, progress=False)


def test_mimic_without_chartevents_or_meds_explains(demo_raw, tmp_path):
    with pytest.raises(DataError, match=r"chartevents is missing.*--meds"):
        prepare("mimic-iv", demo_raw, tmp_path / "o", progress=False)


def test_meds_out_of_order_and_missing_column(demo_meds, tmp_path):
    bad = tmp_path / "meds"
    shutil.copytree(demo_meds, bad)
    shard = bad / "data" / "held_out" / "0.parquet"
    df = pd.read_parquet(shard)
    df.iloc[::-1].to_parquet(shard)
    with pytest.raises(DataError, match=r"held_out/0.parquet.*out of order"):
        prepare("meds", bad, tmp_path / "o", progress=False)
    df.drop(columns=["code"]).to_parquet(shard)
    with pytest.raises(DataError, match=r"held_out/0.parquet.*'code'"):
        prepare("meds", bad, tmp_path / "o", progress=False)


def test_mimic_raw_tables_convert_to_meds_events(demo_raw, tmp_path):
    """Full MIMIC-IV has chartevents: build a tiny one and check the raw path end to end."""
    raw = _copy_raw(demo_raw, tmp_path)
    icu = pd.read_csv(raw / "icu" / "icustays.csv.gz", parse_dates=["intime"])
    rows = []
    for r in icu.itertuples():
        for h, hr in ((0.5, 80.0), (1.0, 90.0), (6.0, 100.0)):
            rows.append((r.subject_id, r.hadm_id, r.stay_id, r.intime + pd.Timedelta(hours=h), 220045, str(hr), hr, "bpm"))
    ce = pd.DataFrame(rows, columns=["subject_id", "hadm_id", "stay_id", "charttime", "itemid", "value", "valuenum", "valueuom"])
    with gzip.open(raw / "icu" / "chartevents.csv.gz", "wt") as fh:
        ce.to_csv(fh, index=False)
    data = prepare("mimic-iv", raw, tmp_path / "o", progress=False)
    assert data.icu_grid["stay_id"].nunique() == 140
    first = data.icu_grid.groupby("stay_id").first()
    long_enough = data.static.set_index("stay_id")["los_hours"] > 1.0  # one demo stay lasts 34 minutes
    assert (first.loc[long_enough[long_enough].index, "heart_rate"] == 85.0).all()
    assert (first.loc[long_enough[~long_enough].index, "heart_rate"] == 80.0).all()
    ev = pd.read_parquet(data.events_dir / "data")
    assert (ev["code"] == "LAB//220045//bpm").sum() == len(ce)
    assert ev["code"].str.startswith("DIAGNOSIS//ICD//").any() and ev["code"].str.startswith("GENDER//").any()


def test_splits_are_deterministic_and_disjoint():
    ids = list(range(10_000))
    a, b = assign_splits(ids, seed=3), assign_splits(ids, seed=3)
    pd.testing.assert_frame_equal(a, b)
    assert a["subject_id"].is_unique
    frac = a["split"].value_counts(normalize=True)
    assert abs(frac["train"] - 0.8) < 0.02 and abs(frac["held_out"] - 0.1) < 0.02
    c = assign_splits(ids, seed=4)
    assert (a["split"] != c["split"]).any()
    # Growing the cohort never moves an existing patient.
    grown = assign_splits(ids + list(range(10_000, 12_000)), seed=3).set_index("subject_id").loc[ids, "split"]
    assert (grown.to_numpy() == a["split"].to_numpy()).all()
    with pytest.raises(ValueError, match="fractions"):
        assign_splits(ids, fractions=(0.5, 0.5, 0.5))
