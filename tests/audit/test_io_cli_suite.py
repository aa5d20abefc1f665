"""audit_meds output layout, the `synthehr audit` command, the benchmark suite and the real demo rates."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from synthehr.audit import audit, audit_meds
from tests.audit.helpers import T0, ev, frame, hours, person, stay, write_meds


def tiny_meds(tmp_path):
    rows = (person(1, "M") + stay(1) + [ev(1, "DIAGNOSIS//ICD//10//O80", T0 + hours(120))]
            + person(2, "F") + stay(2) + [ev(2, "LAB//220045//bpm", T0 + hours(1), 80.0),
                                           ev(2, "LAB//220045//bpm", T0 + hours(1), 80.0)]
            + person(3, "F") + stay(3) + [ev(3, "LAB//220045//bpm", T0 + hours(2), 70.0)])
    return write_meds(frame(rows), tmp_path / "in")


def test_audit_meds_writes_meds_and_findings(tmp_path):
    src = tiny_meds(tmp_path)
    res = audit_meds(src, tmp_path / "out", filter_severity="error", repair=True)
    out = tmp_path / "out"
    data = pl.read_parquet(out / "data" / "train" / "0.parquet")
    # repair first: the male's delivery code is dropped (SEX001 repair), the duplicate is removed
    assert sorted(data["subject_id"].unique().to_list()) == [1, 2, 3]
    assert "DIAGNOSIS//ICD//10//O80" not in data["code"].to_list()
    assert data.filter(pl.col("subject_id") == 2)["code"].to_list().count("LAB//220045//bpm") == 1
    assert res.repairs == {"SEX001": 1, "DUP001": 1}
    # filter only: the male record goes
    audit_meds(src, tmp_path / "out2", filter_severity="error")
    data2 = pl.read_parquet(tmp_path / "out2" / "data" / "train" / "0.parquet")
    assert sorted(data2["subject_id"].unique().to_list()) == [2, 3]
    assert set(data.columns) == {"subject_id", "time", "code", "numeric_value", "text_value"}
    assert pl.read_parquet(tmp_path / "out2" / "metadata" / "subject_splits.parquet")["subject_id"].to_list() == [2, 3]
    f = pl.read_parquet(out / "audit" / "findings.parquet")
    assert set(f["rule_id"]) == {"SEX001", "DUP001"} and f["evidence"].list.len().min() >= 1
    summary = json.loads((out / "audit" / "summary.json").read_text())
    assert summary["records"] == 3 and summary["records_kept"] == 3 and summary["rates"]["sex"] == pytest.approx(1 / 3)
    assert (out / "audit" / "findings.csv").is_file() and (out / "audit" / "report.html").stat().st_size > 1000
    assert res.n_records == 3


def test_audit_meds_refuses_to_overwrite_its_input(tmp_path):
    from synthehr.errors import DataError

    src = tiny_meds(tmp_path)
    with pytest.raises(DataError):
        audit_meds(src, src / "out")


def test_cli_audit(tmp_path, capsys, monkeypatch):
    from synthehr.cli import main

    monkeypatch.delenv("SYNTHEHR_LLM_URL", raising=False)
    src = tiny_meds(tmp_path)
    assert main(["audit", "--input", str(src), "--out", str(tmp_path / "o"), "--filter", "warning"]) == 0
    out = capsys.readouterr().out
    assert "audited 3 records" in out and "kept 1 of 3 records" in out
    assert (tmp_path / "o" / "audit" / "findings.parquet").is_file()


def test_reference_sampler_and_suite_main(tmp_path, demo_meds):
    from synthehr.audit.engine import read_meds
    from synthehr.benchmarks.audit_suite import cohens_d_binary, main, reference_trajectories

    train = read_meds(demo_meds).filter(pl.col("_shard").str.starts_with("train/")).drop("_shard")
    small = train.filter(pl.col("subject_id").is_in(train["subject_id"].unique().sort().head(6).implode()))
    a = reference_trajectories(small, 5, seed=1, mix=0.3)
    b = reference_trajectories(small, 5, seed=1, mix=0.3)
    assert a.equals(b) and a["subject_id"].n_unique() == 5
    assert a.filter(pl.col("code").str.starts_with("GENDER//")).height == 5   # one sex per synthetic record
    assert cohens_d_binary(np.zeros(5), np.zeros(5)) == 0.0
    assert cohens_d_binary(np.array([1, 1, 0, 0]), np.array([0, 0, 0, 1])) > 0

    meds = write_meds(small, tmp_path / "real", split="held_out")
    out = tmp_path / "results"
    assert main(["--meds", str(meds), "--n-synthetic", "6", "--throughput-records", "12", "--chunk-records", "6",
                 "--out-dir", str(out), "--dataset", "tiny"]) == 0
    doc = json.loads((out / "audit-tiny.json").read_text())
    metrics = {(r["metric"], r["split"]) for r in doc["rows"]}
    for split in ("real", "real_all", "synthetic_before", "synthetic_after"):
        assert ("inconsistency_rate_temporal", split) in metrics
    assert ("cohens_d_before_audit_sex", "real") in metrics and ("cohens_d_after_audit_values", "real") in metrics
    assert ("records_per_second", "throughput") in metrics
    assert (out / "audit-tiny.png").is_file() and "By rule family" in (out / "audit-tiny.md").read_text()


def test_real_demo_rates(demo_meds):
    r = audit(demo_meds)
    assert r.n_records == 100
    # structural families never fire on the real demo; the others stay low
    assert r.rates["sex"] == r.rates["age"] == r.rates["temporal"] == 0.0
    assert r.rates["values"] < 0.25 and r.rates["duplicates"] < 0.15 and r.rates["drug_drug"] < 0.1
