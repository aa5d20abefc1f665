"""Preparation on the real bundled MIMIC-IV demo and the shared PhysioNet 2012 set-a."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import polars as pl

from synthehr.data import load_prepared, prepare
from synthehr.data.icu_grid import LABEL, MASK_PREFIX


def test_demo_has_140_stays_with_labels(prepared_demo):
    grid, static = prepared_demo.icu_grid, prepared_demo.static
    assert grid["stay_id"].nunique() == 140
    assert len(static) == 140 and static["stay_id"].is_unique
    # 15 of 275 admissions end in death; the ICU stays of those admissions carry the label.
    assert set(static[LABEL].unique()) == {0, 1}
    assert 15 <= static[LABEL].sum() <= 25
    feats = prepared_demo.features
    assert not grid[feats].isna().any().any(), "every gap must be filled"
    for f in ("ph", "paco2", "pao2", "hco3", "pf_ratio", "spo2", "hemoglobin", "lactate_dehydrogenase",
              "bilirubin_total", "base_excess", "sao2", "platelets", "creatinine"):
        assert f in feats, f"salient feature {f} missing from the MIMIC-IV demo grid"
    assert grid.groupby("stay_id")["bin"].apply(lambda b: (np.diff(b) == 1).all()).all()


def test_demo_label_matches_admissions_table(prepared_demo, demo_raw):
    icu = pd.read_csv(demo_raw / "icu" / "icustays.csv.gz")
    adm = pd.read_csv(demo_raw / "hosp" / "admissions.csv.gz")
    truth = icu.merge(adm, on="hadm_id")[["stay_id", "hospital_expire_flag"]]
    got = prepared_demo.static.merge(truth, on="stay_id")
    assert len(got) == 140
    assert (got[LABEL] == got["hospital_expire_flag"]).all()


def test_meds_source_agrees_with_mimic_source(prepared_demo, demo_meds, tmp_path):
    via_meds = prepare("meds", demo_meds, tmp_path, progress=False)
    a = prepared_demo.static.set_index("stay_id")[LABEL].sort_index()
    b = via_meds.static.set_index("stay_id")[LABEL].sort_index()
    assert a.index.equals(b.index) and (a == b).all()
    cols = ["stay_id", "bin"] + prepared_demo.features
    pd.testing.assert_frame_equal(prepared_demo.icu_grid[cols].reset_index(drop=True),
                                  via_meds.icu_grid[cols].reset_index(drop=True))


def test_demo_bin_median_matches_raw_events(prepared_demo, demo_meds):
    """Recompute one stay's heart-rate medians straight from the MEDS events."""
    static = prepared_demo.static
    stay = static.iloc[0]
    ev = pl.read_parquet(demo_meds / "data" / "*" / "0.parquet").filter(
        (pl.col("subject_id") == int(stay["subject_id"])) & pl.col("code").str.starts_with("LAB//220045//")
    ).to_pandas()
    key = pl.read_parquet(demo_meds / "data" / "*" / "0.parquet").filter(
        (pl.col("subject_id") == int(stay["subject_id"])) & pl.col("code").str.starts_with("ICU_ADMISSION")).to_pandas()
    intime = key.loc[key["icustay_id"] == stay["stay_id"], "time"].iloc[0]
    hours = (ev["time"] - intime).dt.total_seconds() / 3600
    ev = ev[(hours >= 0) & (hours <= stay["los_hours"])].assign(bin=lambda d: np.minimum(
        ((d["time"] - intime).dt.total_seconds() / 3600 // 4).astype(int), int(np.ceil(stay["los_hours"] / 4)) - 1))
    expected = ev.groupby("bin")["numeric_value"].median()
    g = prepared_demo.icu_grid
    g = g[(g["stay_id"] == stay["stay_id"]) & g[MASK_PREFIX + "heart_rate"]].set_index("bin")["heart_rate"]
    assert len(expected) > 0
    np.testing.assert_allclose(g.sort_index().to_numpy(), expected.sort_index().to_numpy(), rtol=1e-5)


def test_demo_outputs_on_disk(prepared_demo):
    root = prepared_demo.root
    for name in ("icu_grid.parquet", "static.parquet", "dataset.json", "preparation_report.json",
                 "feature_catalogue.csv", "events/metadata/codes.parquet", "events/metadata/subject_splits.parquet"):
        assert (root / name).is_file(), name
    report = json.loads((root / "preparation_report.json").read_text())
    assert report["outputs"]["icu_grid"]["stays"] == 140
    assert report["outputs"]["events"]["events"] == 916166  # every demo event is kept
    again = load_prepared(root)
    assert again.features == prepared_demo.features


def test_events_are_meds_and_splits_are_patient_level(prepared_demo):
    ev = pl.read_parquet(prepared_demo.events_dir / "data" / "*" / "0.parquet", include_file_paths="path")
    assert {"subject_id", "time", "code", "numeric_value", "text_value"} <= set(ev.columns)
    per_subject = ev.with_columns(pl.col("path").str.extract(r"data/([a-z_]+)/")).group_by("subject_id").agg(
        pl.col("path").n_unique())
    assert per_subject["path"].max() == 1, "a patient appears in two splits"
    grid_splits = prepared_demo.icu_grid.groupby("subject_id")["split"].nunique()
    assert grid_splits.max() == 1


def test_physionet_set_a_yields_4000_stays(physionet_dir, tmp_path):
    data = prepare("physionet2012", physionet_dir / "set-a.tar.gz", tmp_path, progress=False)
    assert data.icu_grid["stay_id"].nunique() == 4000
    assert len(data.icu_grid) == 4000 * 12  # 48 h in 4-hour bins
    assert int(data.static[LABEL].sum()) == 554  # Outcomes-a.txt
    absent = set(data.info["absent_features"])
    assert {"hemoglobin", "lactate_dehydrogenase", "spo2", "base_excess"} <= absent
    assert "ph" in data.features and "pf_ratio" in data.features
    assert (tmp_path / "icu_grid.parquet").is_file() and (tmp_path / "static.parquet").is_file()
    report = json.loads((tmp_path / "preparation_report.json").read_text())
    assert report["rows_read"]["observation_rows"] == 1_757_980
