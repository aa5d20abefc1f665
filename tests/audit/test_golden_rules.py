"""Golden examples per rule family: a hand-made record that must fire a rule, and its twin that must not."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest

from synthehr.audit import audit, load_rules
from tests.audit.helpers import T0, ev, frame, hours, person, rule_hits, stay


@pytest.fixture(scope="module")
def rules():
    return load_rules()


def subjects_hit(result, rule_id):
    return sorted(rule_hits(result, rule_id)["subject_id"].unique().to_list())


# ------------------------------------------------------------------------------------------- sex
def test_sex_specific_codes(rules):
    dx_o80 = "DIAGNOSIS//ICD//10//O80"          # encounter for full-term uncomplicated delivery
    dx_185 = "DIAGNOSIS//ICD//9//185"           # malignant neoplasm of prostate
    px_cs = "PROCEDURE//ICD//10//10D00Z1"       # low cervical caesarean section
    px_9_prost = "PROCEDURE//ICD//9//605"       # radical prostatectomy
    rows = (person(1, "M") + [ev(1, dx_o80, T0)]
            + person(2, "F") + [ev(2, dx_o80, T0)]
            + person(3, "F") + [ev(3, dx_185, T0), ev(3, px_9_prost, T0)]
            + person(4, "M") + [ev(4, dx_185, T0)]
            + person(5, "M") + [ev(5, px_cs, T0)]
            + person(6, "M") + [ev(6, "DIAGNOSIS//ICD//9//6140", T0)])  # female pelvic inflammatory disease
    r = audit(frame(rows), rules, families=["sex"])
    assert subjects_hit(r, "SEX001") == [1]
    assert subjects_hit(r, "SEX002") == [5]
    assert subjects_hit(r, "SEX003") == [6]
    assert subjects_hit(r, "SEX005") == [3]
    assert subjects_hit(r, "SEX006") == [3]
    assert r.rates["sex"] == pytest.approx(4 / 6)
    f = rule_hits(r, "SEX001").row(0, named=True)
    assert f["severity"] == "error" and f["family"] == "sex" and len(f["rows"]) == 1 and len(f["context_rows"]) == 1


# ------------------------------------------------------------------------------------------- age
def test_age_specific_codes_and_implausible_ages(rules):
    rows = (person(1, "F", age=40) + [ev(1, "DIAGNOSIS//ICD//10//P0730", T0)]     # preterm newborn code at 40
            + person(2, "F", age=0.1) + [ev(2, "DIAGNOSIS//ICD//10//P0730", T0)]  # ... at 5 weeks: fine
            + person(3, "F", age=5) + [ev(3, "DIAGNOSIS//ICD//10//O80", T0)]      # delivery at 5 years
            + person(4, "F", age=30) + [ev(4, "DIAGNOSIS//ICD//10//O80", T0)]     # delivery at 30: fine
            + person(5, "M", age=50) + [ev(5, "LAB//220045//bpm", T0 - timedelta(days=365.25 * 51), 80.0)]
            + person(6, "M", age=130) + [ev(6, "LAB//220045//bpm", T0, 80.0)])
    r = audit(frame(rows), rules, families=["age"])
    assert subjects_hit(r, "AGE001") == [1]
    assert rule_hits(r, "AGE001")["severity"].to_list() == ["warning"]
    assert subjects_hit(r, "AGE003") == [3]
    assert subjects_hit(r, "AGE010") == [5]
    assert subjects_hit(r, "AGE011") == [6]


# ------------------------------------------------------------------------------------------- temporal
def test_events_after_death_with_grace(rules):
    death = T0 + timedelta(days=2)
    rows = (person(1, death=death) + stay(1, T0, 1) + [ev(1, "LAB//220045//bpm", death + hours(30), 80.0)]
            + person(2, death=death) + stay(2, T0, 1) + [ev(2, "INFUSION_END//220949", death + hours(10))])
    r = audit(frame(rows), rules, families=["temporal"])
    assert subjects_hit(r, "TMP001") == [1]          # 10 h of post-mortem charting is within the grace
    assert rule_hits(r, "TMP001")["severity"].to_list() == ["critical"]


def test_admission_order(rules):
    a, d = "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", "HOSPITAL_DISCHARGE//HOME"
    rows = (person(1) + [ev(1, a, T0 + hours(10)), ev(1, d, T0)]                        # discharge first
            + person(2) + [ev(2, a, T0), ev(2, a, T0 + hours(24)), ev(2, d, T0 + hours(48)),
                           ev(2, d, T0 + hours(72))]                                   # overlapping stays
            + person(3) + [ev(3, a, T0), ev(3, d, T0 + hours(24)), ev(3, a, T0 + hours(24)),
                           ev(3, d, T0 + hours(48))]                                   # back-to-back: fine
            + person(4) + [ev(4, a, T0)]                                              # never discharged
            + person(5) + [ev(5, "ICU_ADMISSION//MICU", T0 + hours(5)), ev(5, "ICU_DISCHARGE//MICU", T0)])
    r = audit(frame(rows), rules, families=["temporal"])
    assert subjects_hit(r, "TMP002") == [1]
    assert subjects_hit(r, "TMP003") == [2]
    assert subjects_hit(r, "TMP004") == [4]
    assert subjects_hit(r, "TMP005") == [5]
    assert 3 not in r.findings["subject_id"].to_list()


# ------------------------------------------------------------------------------------------- values
def test_values_impossible_for_life_use_the_catalogue(rules):
    rows = (person(1) + [ev(1, "LAB//220045//bpm", T0, 350.0)]        # heart rate 350
            + person(2) + [ev(2, "LAB//220045//bpm", T0, 80.0)]
            + person(3) + [ev(3, "LAB//223761//°F", T0, 98.6)]         # 37 °C after conversion: fine
            + person(4) + [ev(4, "LAB//223761//°F", T0, 150.0)]        # 65.6 °C
            + person(5) + [ev(5, "LAB//999999//x", T0, 1e9)])          # not in the catalogue: not judged
    r = audit(frame(rows), rules, families=["values"])
    assert subjects_hit(r, "VAL001") == [1, 4]
    assert "temperature" in rule_hits(r, "VAL001").filter(pl.col("subject_id") == 4)["detail"][0]


# ------------------------------------------------------------------------------------------- equations
def test_henderson_hasselbalch_and_repair(rules):
    def gas(s, ph, paco2=40.0, hco3=24.0):
        return [ev(s, "LAB//50820//units", T0, ph), ev(s, "LAB//50818//mm Hg", T0, paco2),
                ev(s, "LAB//50882//mEq/L", T0, hco3)]

    rows = person(1) + gas(1, 7.40) + person(2) + gas(2, 7.00) + person(3) + [ev(3, "LAB//50820//units", T0, 7.0)]
    r = audit(frame(rows), rules, families=["equations"], repair=True)
    assert subjects_hit(r, "EQN001") == [2]
    assert r.repairs == {"EQN001": 1}
    fixed = r.events.filter((pl.col("subject_id") == 2) & (pl.col("code") == "LAB//50820//units"))
    assert fixed["numeric_value"][0] == pytest.approx(6.1 + __import__("math").log10(24 / (0.03 * 40)), abs=1e-6)
    assert r.rates_after["equations"] == 0.0


# ------------------------------------------------------------------------------------------- duplicates
def test_duplicates_and_repair(rules):
    lab = "LAB//50912//mg/dL"
    med = "MEDICATION//Insulin//Administered"
    rows = (person(1) + [ev(1, lab, T0, 1.0), ev(1, lab, T0, 1.0), ev(1, lab, T0, 1.0)]
            + person(2) + [ev(2, lab, T0, 1.0), ev(2, lab, T0, 1.1)]    # different values: not a duplicate
            + person(3) + [ev(3, med, T0), ev(3, med, T0)])              # concurrent orders: excluded
    r = audit(frame(rows), rules, families=["duplicates"], repair=True)
    assert subjects_hit(r, "DUP001") == [1]
    assert rule_hits(r, "DUP001")["rows"][0].len() == 2            # two extra copies
    assert r.repairs == {"DUP001": 2}
    assert r.events.filter(pl.col("subject_id") == 1)["code"].to_list().count(lab) == 1


# ------------------------------------------------------------------------------------------- drugs
def test_drug_drug_interactions(rules):
    given = "//Administered"
    rows = (person(1) + [ev(1, "MEDICATION//Warfarin" + given, T0), ev(1, "MEDICATION//Ibuprofen" + given,
                                                                       T0 + hours(6))]
            + person(2) + [ev(2, "MEDICATION//Warfarin" + given, T0), ev(2, "MEDICATION//Ibuprofen" + given,
                                                                       T0 + hours(24 * 5))]  # 5 days apart
            + person(3) + [ev(3, "MEDICATION//START//Simvastatin", T0), ev(3, "MEDICATION//STOP//Simvastatin",
                                                                            T0 + hours(24 * 10)),
                           ev(3, "MEDICATION//START//Clarithromycin", T0 + hours(24 * 4))]   # inside the order
            + person(4) + [ev(4, "MEDICATION//Warfarin" + given, T0),
                           ev(4, "MEDICATION//Ibuprofen//Not Given", T0 + hours(2))]         # not given
            + person(5) + [ev(5, "MEDICATION//Coumadin" + given, T0),
                           ev(5, "MEDICATION//Toradol" + given, T0 + hours(1))])             # brand names
    r = audit(frame(rows), rules, families=["drug_drug"])
    assert subjects_hit(r, "DDI101") == [1, 5]
    assert subjects_hit(r, "DDI010") == [3]
    assert "simvastatin with clarithromycin" in rule_hits(r, "DDI010")["detail"][0]


def test_drug_condition_contraindications(rules):
    a, d = "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", "HOSPITAL_DISCHARGE//HOME"
    esrd = "DIAGNOSIS//ICD//10//N186"
    rows = (person(1) + [ev(1, a, T0), ev(1, "MEDICATION//MetFORMIN (Glucophage)//Administered", T0 + hours(5)),
                         ev(1, d, T0 + hours(72)), ev(1, esrd, T0 + hours(72))]
            + person(2) + [ev(2, a, T0), ev(2, "MEDICATION//MetFORMIN (Glucophage)//Administered", T0 + hours(5)),
                           ev(2, d, T0 + hours(72)),
                           ev(2, a, T0 + hours(24 * 400)), ev(2, d, T0 + hours(24 * 405)),
                           ev(2, esrd, T0 + hours(24 * 405))]                     # ESRD a year later: fine
            + person(3) + [ev(3, "DIAGNOSIS//ICD//9//49390", T0),
                           ev(3, "MEDICATION//START//Propranolol", T0 + hours(24 * 30))])  # asthma: record scope
    r = audit(frame(rows), rules, families=["drug_condition"])
    assert subjects_hit(r, "DC002") == [1]
    assert subjects_hit(r, "DC001") == [3]
    f = rule_hits(r, "DC002").row(0, named=True)
    assert len(f["rows"]) == 1 and len(f["context_rows"]) == 1   # the drug event; the ESRD code as context


# ------------------------------------------------------------------------------------------- modes
def test_filter_drops_records_at_or_above_severity(rules):
    rows = (person(1, "M") + [ev(1, "DIAGNOSIS//ICD//10//O80", T0)]          # error
            + person(2, "F", age=40) + [ev(2, "DIAGNOSIS//ICD//10//P0730", T0)]  # warning
            + person(3, "F") + [ev(3, "LAB//220045//bpm", T0, 80.0)])        # clean
    err = audit(frame(rows), rules, filter_severity="error")
    assert sorted(err.kept_subjects) == [2, 3]
    warn = audit(frame(rows), rules, filter_severity="warning")
    assert warn.kept_subjects == [3]
    assert warn.rates_after["any"] == 0.0 and warn.events["subject_id"].unique().to_list() == [3]
    assert warn.meta == {"filter_severity": "warning", "repair": False, "records_in": 3, "records_kept": 1}


def test_repair_then_filter_keeps_repairable_records(rules):
    rows = person(1) + [ev(1, "LAB//220045//bpm", T0, 350.0), ev(1, "LAB//220045//bpm", T0 + hours(1), 80.0)]
    r = audit(frame(rows), rules, repair=True, filter_severity="warning")
    assert r.kept_subjects == [1] and r.repairs == {"VAL001": 1}
    assert r.events.filter(pl.col("code") == "LAB//220045//bpm")["numeric_value"].to_list() == [80.0]


def test_report_on_clean_record_is_empty(rules):
    rows = person(1, "F", age=60) + stay(1) + [ev(1, "LAB//220045//bpm", T0 + hours(2), 80.0),
                                               ev(1, "DIAGNOSIS//ICD//10//I10", T0 + timedelta(days=5))]
    r = audit(frame(rows), rules)
    assert r.findings.is_empty() and r.rates["any"] == 0.0 and r.n_records == 1
