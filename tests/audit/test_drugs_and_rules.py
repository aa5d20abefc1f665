"""Drug-name normalisation (golden table) and the rule tables as data: validation, overrides, new rules."""

from __future__ import annotations

import shutil
from importlib import resources

import polars as pl
import pytest

from synthehr.audit import CHECKS, audit, check, load_rules
from synthehr.audit.drugs import normalise_drug_name, parse_medication_code
from synthehr.audit.ruleset import FAMILIES, SEVERITIES
from synthehr.errors import ValidationErrors
from tests.audit.helpers import T0, ev, frame, person


@pytest.fixture(scope="module")
def rules():
    return load_rules()


@pytest.mark.parametrize("raw, generics, topical", [
    ("Warfarin", ("warfarin",), False),
    ("Coumadin", ("warfarin",), False),
    ("HYDROmorphone (Dilaudid)", ("hydromorphone",), False),
    ("Metoprolol Succinate XL", ("metoprolol",), False),
    ("Sulfameth/Trimethoprim DS", ("sulfamethoxazole", "trimethoprim"), False),
    ("Stribild", ("cobicistat", "elvitegravir", "emtricitabine", "tenofovir"), False),
    ("OxyCODONE--Acetaminophen (5mg-325mg)", ("acetaminophen", "oxycodone"), False),
    ("Potassium Chloride", ("potassium chloride",), False),
    ("Heparin Flush (10 units/ml)", ("heparin",), False),
    ("Albuterol 0.083% Neb Soln", ("albuterol",), False),
    ("Dorzolamide 2%/Timolol 0.5% Ophth.", ("dorzolamide", "timolol"), True),
    ("Escitalopram Oxalate", ("escitalopram",), False),
    ("MetFORMIN XR (Glucophage XR)", ("metformin",), False),
    ("TraMADOL (Ultram)", ("tramadol",), False),
    ("Furosemide-Heart Failure", ("furosemide",), False),
    ("UNK", (), False),
])
def test_normalise_drug_name(rules, raw, generics, topical):
    got, top = normalise_drug_name(raw, rules.drugs)
    assert set(generics) <= set(got) and (not generics or got[0] in generics)
    assert top is topical


@pytest.mark.parametrize("code, expected", [
    ("MEDICATION//START//Enalapril Maleate", ("Enalapril Maleate", "start", None)),
    ("MEDICATION//STOP//Baclofen", ("Baclofen", "stop", None)),
    ("MEDICATION//Heparin//Not Given", ("Heparin", "admin", "Not Given")),
    ("MEDICATION//Aspirin", ("Aspirin", "admin", None)),
    ("MEDICATION//NDC//00904224461", ("NDC:00904224461", "admin", None)),
])
def test_parse_medication_code(code, expected):
    assert parse_medication_code(code) == expected


def test_every_rule_has_metadata(rules):
    t = rules.table()
    assert t["rule_id"].is_unique and len(t) >= 40
    assert set(t["family"]) == set(FAMILIES)
    assert set(t["severity"]) <= set(SEVERITIES)
    assert (t["source"].str.len() > 10).all() and (t["rationale"].str.len() > 5).all()
    readme = resources.files("synthehr.audit").joinpath("rules", "README.md").read_text()
    missing = [r for r in t["rule_id"] if r not in readme]
    assert not missing, f"rules/README.md does not document {missing}"


def test_invalid_tables_report_every_problem(tmp_path):
    (tmp_path / "drug_interactions.csv").write_text(
        "rule_id,class_a,class_b,severity,rationale,source\n"
        "X1,warfarin,nsaid,fatal,bleeding,a source\n"
        "X1,warfarin,nsaid,error,,\n")
    with pytest.raises(ValidationErrors) as e:
        load_rules(tmp_path)
    msgs = "\n".join(e.value.problems)
    assert "severity 'fatal'" in msgs and "duplicate rule_id 'X1'" in msgs and "needs a rationale" in msgs


def test_new_rule_is_a_row_in_a_table(tmp_path):
    src = resources.files("synthehr.audit").joinpath("rules", "drug_interactions.csv").read_text()
    (tmp_path / "drug_interactions.csv").write_text(
        src.rstrip("\n") + '\nDDI900,heparin,aspirin,warning,"Bleeding (example rule)","test"\n')
    rows = person(1) + [ev(1, "MEDICATION//Heparin//Administered", T0),
                        ev(1, "MEDICATION//Aspirin EC//Administered", T0)]
    r = audit(frame(rows), load_rules(tmp_path), families=["drug_drug"])
    assert r.findings["rule_id"].to_list() == ["DDI900"]


def test_new_rule_is_one_small_function(tmp_path):
    @check("potassium_above")
    def potassium_above(ctx, rule):
        limit = float(rule.params["limit"])
        e = ctx.timed.filter(pl.col("code").str.starts_with("LAB//50971//") & (pl.col("numeric_value") > limit))
        return e.select("subject_id", "time", rows=pl.concat_list("_row"), detail=pl.lit("potassium high"))

    try:
        src = resources.files("synthehr.audit").joinpath("rules", "rules.csv").read_text()
        (tmp_path / "rules.csv").write_text(
            src.rstrip("\n") + '\nVAL900,values,potassium_above,warning,none,limit=7,"Example","test"\n')
        rows = person(1) + [ev(1, "LAB//50971//mEq/L", T0, 8.0)] + person(2) + [ev(2, "LAB//50971//mEq/L", T0, 4.0)]
        r = audit(frame(rows), load_rules(tmp_path), families=["values"])
        assert r.findings.filter(pl.col("rule_id") == "VAL900")["subject_id"].to_list() == [1]
    finally:
        CHECKS.pop("potassium_above", None)


def test_ndc_codes_resolve_with_a_user_table(tmp_path):
    for name in ("drug_interactions.csv",):
        shutil.copy(resources.files("synthehr.audit").joinpath("rules", name), tmp_path / name)
    (tmp_path / "drug_ndc.csv").write_text("ndc,generic\n00056-0172-70,warfarin\n11111111111,ibuprofen\n")
    rows = person(1) + [ev(1, "MEDICATION//NDC//00056017270", T0), ev(1, "MEDICATION//NDC//11111111111", T0)]
    r = audit(frame(rows), load_rules(tmp_path), families=["drug_drug"])
    assert r.findings["rule_id"].to_list() == ["DDI101"]
