"""API tests of the clinician web app (FastAPI TestClient, in process, on the bundled demo)."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx`")

MODEL = "gaussian"


def _patient(client, data_real=True):
    pats = client.get("/api/patients", params={"model": MODEL}).json()
    pid = pats["patients"][0]["id"]
    return client.get(f"/api/patients/{pid}", params={"model": MODEL, "bin": 0}).json()


def _recon(client, **kw):
    body = {"model": MODEL, "values": {}, "fixed": [], "n_samples": 20, "seed": 0}
    body.update(kw)
    return client.post("/api/reconstruct", json=body)


def _column(feats: dict, name: str, key: str):
    return feats[key][feats["names"].index(name)]


# ------------------------------------------------------------------------- info, patients
def test_info_models_features_and_ranges(client):
    info = client.get("/api/info").json()
    assert [m["id"] for m in info["models"]] == [MODEL]
    assert info["real_data"] is True and info["dataset"] == "mimic-iv"
    assert {e["name"] for e in info["equations"]} == {"henderson_hasselbalch", "base_excess", "severinghaus"}
    m = client.get(f"/api/models/{MODEL}").json()
    ph = next(f for f in m["features"] if f["name"] == "ph")
    assert (ph["lower"], ph["upper"]) == (6.5, 8.0)  # the feature catalogue's plausible range
    assert ph["slider_min"] == 6.5 and ph["slider_max"] == 8.0 and ph["salient"] is True
    assert m["reference"] == "training data"
    assert set(m["equations"]) == {"henderson_hasselbalch", "base_excess", "severinghaus"}


def test_real_patients_only_with_real_data(make_client, prepared_demo):
    real = make_client(data=True)
    pats = real.get("/api/patients", params={"model": MODEL}).json()
    assert pats["real"] is True
    assert {p["id"] for p in pats["patients"]} == {str(s) for s in prepared_demo.icu_grid["stay_id"].unique()}
    first = pats["patients"][0]
    rec = real.get(f"/api/patients/{first['id']}", params={"model": MODEL, "bin": 1}).json()
    row = prepared_demo.icu_grid[(prepared_demo.icu_grid["stay_id"] == int(first["id"]))].sort_values("bin").iloc[1]
    assert rec["values"]["heart_rate"] == pytest.approx(row["heart_rate"], rel=1e-5)
    assert rec["observed"]["heart_rate"] == bool(row["observed__heart_rate"])
    assert real.get(f"/api/patients/{first['id']}", params={"model": MODEL, "bin": 10_000}).status_code == 422

    synthetic_only = make_client(data=False)
    pats = synthetic_only.get("/api/patients", params={"model": MODEL}).json()
    assert pats["real"] is False and pats["patients"][0]["id"] == "S001"
    assert synthetic_only.get(f"/api/patients/{first['id']}", params={"model": MODEL}).status_code == 404
    rec = synthetic_only.get("/api/patients/S001", params={"model": MODEL}).json()
    assert rec["real"] is False and rec["observed"] is None
    info = synthetic_only.get("/api/info").json()
    assert info["real_data"] is False and info["dataset"] is None
    # no real aggregate either: scenario fidelity says why
    out = synthetic_only.post("/api/scenarios/run", json={"model": MODEL, "criteria": "ph < 7.35", "n": 5}).json()
    assert out["fidelity"]["available"] is False and "--data" in out["fidelity"]["reason"]


# ------------------------------------------------------------------------- reconstruct
def test_reconstruct_equals_model_conditioning_and_keeps_fixed_values(client, demo_model_dir):
    from synthehr.models.base import load_model

    rec = _patient(client)
    values = dict(rec["values"])
    values["ph"], values["paco2"] = 7.12, 68.0
    r = _recon(client, values=values, fixed=["ph", "paco2"], n_samples=30, seed=5)
    assert r.status_code == 200, r.text
    out = r.json()
    f = out["features"]
    assert _column(f, "ph", "mean") == 7.12 and _column(f, "ph", "sd") == 0.0 and _column(f, "ph", "fixed") is True
    assert _column(f, "hco3", "fixed") is False and _column(f, "hco3", "sd") > 0
    assert _column(f, "hco3", "q05") <= _column(f, "hco3", "mean") <= _column(f, "hco3", "q95")
    # the fast path is the model's own conditional: same draws as model.condition with the same seed
    expected = load_model(demo_model_dir).condition({"ph": 7.12, "paco2": 68.0}, n=30, seed=5)
    for name in ("hco3", "base_excess", "pao2", "heart_rate"):
        assert _column(f, name, "mean") == pytest.approx(expected[name].mean(), rel=1e-4, abs=1e-6)
    # standardized values: z of the original is (x - mean) / std of the training data
    m = client.get(f"/api/models/{MODEL}").json()
    ph = next(x for x in m["features"] if x["name"] == "ph")
    assert _column(f, "ph", "original_z") == pytest.approx((7.12 - ph["mean"]) / ph["std"], rel=1e-2)
    # deterministic for a seed, different for another
    assert _recon(client, values=values, fixed=["ph", "paco2"], n_samples=30, seed=5).json()["features"] == f
    assert _recon(client, values=values, fixed=["ph", "paco2"], n_samples=30, seed=6).json()["features"] != f


def test_reconstruct_conditioning_moves_correlated_features(client):
    rec = _patient(client)
    low = dict(rec["values"], ph=7.05, paco2=75.0)
    high = dict(rec["values"], ph=7.55, paco2=28.0)
    a = _recon(client, values=low, fixed=["ph", "paco2"], n_samples=100).json()["features"]
    b = _recon(client, values=high, fixed=["ph", "paco2"], n_samples=100).json()["features"]
    assert _column(a, "base_excess", "mean") != pytest.approx(_column(b, "base_excess", "mean"), abs=0.5)


@pytest.mark.parametrize("body,field", [
    ({"n_samples": 1}, "n_samples"),
    ({"n_samples": 10_000}, "n_samples"),
    ({"values": {"ph": "acidic"}}, "values.ph"),
    ({"values": {"ph": 9.5}}, "values.ph"),
    ({"values": {"mechanical_ventilation": 0.5}}, "values.mechanical_ventilation"),
    ({"values": {"not_a_feature": 1}}, "values.not_a_feature"),
    ({"values": {"ph": 7.3}, "fixed": ["hco3"]}, "fixed[0]"),
    ({"fixed": ["nope"]}, "fixed[0]"),
    ({"model": "../../etc"}, "model"),
    ({"model": "x" * 300}, "model"),
    ({"seed": -1}, "seed"),
    ({"constraints": ["made_up"]}, "constraints[0]"),
    ({"surprise": 1}, "surprise"),
])
def test_reconstruct_rejects_bad_input_naming_the_field(client, body, field):
    r = _recon(client, **body)
    assert r.status_code == 422, r.text
    assert r.json()["message"].startswith(field + ":"), r.json()


def test_reconstruct_rejects_non_json_and_nan(client):
    r = client.post("/api/reconstruct", content=b'{"model": "gaussian", "values": {"ph": NaN}}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["message"].startswith("values.ph:")
    r = client.post("/api/reconstruct", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["message"].startswith("body:")
    r = client.post("/api/reconstruct", data={"model": "gaussian"})
    assert r.status_code == 415


def test_constraint_checks_and_exact_enforcement(client):
    rec = _patient(client)
    values = dict(rec["values"], ph=7.25, paco2=55.0)
    out = _recon(client, values=values, fixed=["ph", "paco2"], n_samples=40,
                 constraints=["henderson_hasselbalch"]).json()
    checks = {c["name"]: c for c in out["constraints"]}
    assert set(checks) == {"henderson_hasselbalch", "base_excess", "severinghaus"}
    assert checks["henderson_hasselbalch"]["selected"] and not checks["severinghaus"]["selected"]
    hh = checks["henderson_hasselbalch"]
    assert 0.0 <= hh["reconstructed_fraction_holding"] <= 1.0 and hh["reconstructed_mae"] > 0
    assert out["enforcement"] == "off"
    info = client.get("/api/info").json()
    enforced = _recon(client, values=values, fixed=["ph", "paco2"], n_samples=40, enforce=True,
                      constraints=["henderson_hasselbalch"]).json()
    if info["enforcement_available"]:
        assert enforced["enforcement"] == "exact"
        hh = {c["name"]: c for c in enforced["constraints"]}["henderson_hasselbalch"]
        assert hh["reconstructed_fraction_holding"] == 1.0 and hh["reconstructed_mae"] < 1e-6
        f = enforced["features"]
        implied = 0.03 * 55.0 * 10 ** (7.25 - 6.1)
        assert _column(f, "hco3", "mean") == pytest.approx(implied, rel=1e-4)
    else:
        assert enforced["enforcement"] == "unavailable"


# ------------------------------------------------------------------------- security
def test_token_authentication(make_client):
    c = make_client(token="s3cret-token")
    assert c.get("/api/health").status_code == 200
    assert c.get("/").status_code == 200  # the page itself is public; it holds no data
    r = c.get("/api/info")
    assert r.status_code == 401 and "Authorization" in r.json()["message"]
    assert c.get("/api/info", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/api/info", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
    assert c.get("/api/info", headers={"X-Synthehr-Token": "s3cret-token"}).status_code == 200
    assert c.get("/api/info").status_code == 401


def test_host_header_and_security_headers(client):
    assert client.get("/api/info", headers={"host": "evil.example"}).status_code == 400  # DNS rebinding
    r = client.get("/")
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"


def test_assets_are_local_and_no_paths_are_accepted(client):
    from synthehr.app.server import STATIC

    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), name
        assert "cdn" not in text.lower(), name
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/static/../server.py").status_code == 404
    assert client.get("/static/%2e%2e/server.py").status_code == 404
    assert client.get("/api/models/..%2Fgaussian").status_code in (404, 422)
    assert client.get("/api/patients/..%2F..%2Fetc", params={"model": MODEL}).status_code in (404, 422)


def test_server_binds_localhost_by_default():
    from synthehr.cli import build_parser

    args = build_parser().parse_args(["serve", "--model", "m"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.token is None and args.data is None
    assert args.workers == 1


# ------------------------------------------------------------------------- scenarios
def test_scenario_criteria_fidelity_and_exports(client):
    spec = {"model": MODEL, "criteria": "ph < 7.3 and paco2 > 50", "n": 40, "seed": 3}
    out = client.post("/api/scenarios/run", json=spec).json()
    assert out["n_generated"] == 40 and out["complete"] and out["methods"] == {"rejection": 40, "sequential": 0}
    prev = pd.DataFrame(out["preview"])
    assert (prev["ph"] < 7.3).all() and (prev["paco2"] > 50).all()
    assert out["columns"][:3] == ["record_key", "ph", "paco2"]
    fd = out["fidelity"]
    assert fd["available"] and fd["n_real_matching"] > 5 and 0 <= fd["ks_mean"] <= 1
    assert {f["feature"] for f in fd["features"]} >= {"ph", "paco2"}
    # same spec + seed → same records (re-runnable); the result is identical
    again = client.post("/api/scenarios/run", json=spec).json()
    assert again["preview"] == out["preview"]

    csv_r = client.post("/api/scenarios/export", json={**spec, "format": "csv"})
    assert csv_r.status_code == 200 and csv_r.headers["content-type"].startswith("text/csv")
    df = pd.read_csv(io.StringIO(csv_r.text))
    assert len(df) == 40 and (df["ph"] < 7.3).all()
    pq = client.post("/api/scenarios/export", json={**spec, "format": "parquet"})
    assert pd.read_parquet(io.BytesIO(pq.content)).shape == df.shape
    meds = client.post("/api/scenarios/export", json={**spec, "format": "meds"})
    z = zipfile.ZipFile(io.BytesIO(meds.content))
    assert {"data/held_out/0.parquet", "metadata/codes.parquet", "metadata/dataset.json",
            "metadata/subject_splits.parquet"} <= set(z.namelist())
    ev = pd.read_parquet(io.BytesIO(z.read("data/held_out/0.parquet")))
    assert list(ev.columns) == ["subject_id", "time", "code", "numeric_value", "text_value"]
    assert ev["subject_id"].nunique() == 40 and "SYNTHEHR//ph" in set(ev["code"])
    assert ev["time"].dtype == "datetime64[us]" and ev["subject_id"].dtype == "int64"
    assert json.loads(z.read("metadata/dataset.json"))["meds_version"]


def test_scenario_criteria_forms_and_errors(client):
    run = lambda **kw: client.post("/api/scenarios/run", json={"model": MODEL, "n": 5, **kw})  # noqa: E731
    ok = run(criteria=[{"feature": "ph", "op": "<", "value": 7.3}, "paco2 > 45"])
    assert ok.status_code == 200 and len(ok.json()["criteria"]) == 2
    pf = run(criteria="PaO2/FiO2 < 150").json()
    assert pf["criteria"] == [{"feature": "pf_ratio", "op": "<", "value": 150.0}]  # P/F is the pf_ratio feature
    ratio = run(criteria="hco3/paco2 > 0.7").json()
    assert ratio["criteria"][0]["feature"] == "hco3/paco2"
    for criteria, field in (("ph << 7", "criteria[0]"), ("ph < 7.3 and wat > 1", "criteria[1]"),
                            ([{"feature": "ph", "op": "~", "value": 1}], "criteria[0].op"), (42, "criteria"), ("", "criteria")):
        r = run(criteria=criteria)
        assert r.status_code == 422 and r.json()["message"].startswith(field), (criteria, r.json())
    r = run(criteria="ph < 7.3", unit="stays")
    assert r.status_code == 422 and r.json()["message"].startswith("unit:")
    r = client.post("/api/scenarios/run", json={"model": MODEL, "criteria": "ph < 7.3", "n": 10**6})
    assert r.status_code == 422 and r.json()["message"].startswith("n:")


def test_rare_scenario_is_filled_criterion_by_criterion(client):
    out = client.post("/api/scenarios/run", json={
        "model": MODEL, "criteria": "ph < 7.2 and paco2 > 60 and pao2/fio2 < 100", "n": 20}).json()
    assert out["n_generated"] == 20
    assert out["methods"]["sequential"] > 0 and "approximate" in out["warning"]
    prev = pd.DataFrame(out["preview"])
    assert (prev["ph"] < 7.2).all() and (prev["paco2"] > 60).all() and (prev["pf_ratio"] < 100).all()


def test_saved_scenario_rerun_and_flagged_records_left_out(client):
    spec = {"model": MODEL, "criteria": "ph < 7.3 and paco2 > 50", "n": 12, "seed": 1}
    saved = client.post("/api/scenarios/run", json={**spec, "save": True, "name": "acidosis",
                                                    "created_by": "dr a"}).json()
    sid = saved["scenario_id"]
    assert sid and saved["flagged_excluded"] == 0
    listed = client.get("/api/scenarios").json()["scenarios"]
    assert listed[0]["id"] == sid and listed[0]["name"] == "acidosis" and listed[0]["run_count"] == 1
    assert client.post("/api/review/enqueue", json={"scenario_id": sid, "n": 12}).json()["added"] == 12
    rec = client.get("/api/review/next", params={"reviewer": "dr a"}).json()["record"]
    assert rec["origin"] == f"scenario {sid}"
    r = client.post(f"/api/review/{rec['id']}/decision",
                    json={"reviewer": "dr a", "decision": "flag", "reason": "pH and PaCO2 do not fit"})
    assert r.status_code == 200
    rerun = client.post(f"/api/scenarios/{sid}/run").json()
    assert rerun["flagged_excluded"] == 1 and rerun["n_exportable"] == 11 and rerun["n_generated"] == 12
    assert rec["record_key"] not in {p["record_key"] for p in rerun["preview"]}
    assert client.get("/api/scenarios").json()["scenarios"][0]["run_count"] == 2
    exported = client.get(f"/api/scenarios/{sid}/export", params={"format": "csv"})
    assert exported.headers["x-synthehr-excluded-flagged"] == "1"
    df = pd.read_csv(io.StringIO(exported.text))
    assert len(df) == 11 and rec["record_key"] not in set(df["record_key"])
    assert client.get("/api/scenarios/999/export").status_code == 404
    assert client.get(f"/api/scenarios/{sid}/export", params={"format": "xlsx"}).status_code == 422


# ------------------------------------------------------------------------- review + rules
def test_review_queue_decisions_history_and_agreement(client):
    assert client.post("/api/review/enqueue", json={"model": MODEL, "n": 6, "seed": 2}).json()["added"] == 6
    assert client.post("/api/review/enqueue", json={"model": MODEL, "n": 6, "seed": 2}).json()["already_queued"] == 6
    decisions = {"alice": ["accept", "flag", "accept", "flag"], "bob": ["accept", "flag", "flag", "flag"]}
    for who, seq in decisions.items():
        for d in seq:
            rec = client.get("/api/review/next", params={"reviewer": who}).json()["record"]
            assert rec["findings"] is not None and "z" in rec and rec["suggested_pattern"]
            r = client.post(f"/api/review/{rec['id']}/decision",
                            json={"reviewer": who, "decision": d, "reason": "implausible" if d == "flag" else ""})
            assert r.status_code == 200
    stats = client.get("/api/review/stats").json()
    assert stats["n_records"] == 6 and stats["n_reviewed"] == 4 and stats["n_reviews"] == 8
    assert stats["n_multi_reviewed"] == 4 and stats["percent_agreement"] == pytest.approx(0.75)
    pair = stats["pairs"][0]
    assert pair["reviewers"] == ["alice", "bob"] and pair["n_common"] == 4
    # Cohen: po = .75, pe = .5*.25 + .5*.75 = .5 → kappa .5
    assert pair["cohen_kappa"] == pytest.approx(0.5)
    hist = client.get("/api/review/history", params={"reviewer": "alice"}).json()["reviews"]
    assert len(hist) == 4 and {h["decision"] for h in hist} == {"accept", "flag"}
    assert all(h["reviewer"] == "alice" and h["created_at"] for h in hist)
    # a later decision replaces the earlier one; counters follow
    first = hist[-1]
    client.post(f"/api/review/{first['record_id']}/decision", json={"reviewer": "alice", "decision": "flag",
                                                                    "reason": "changed my mind"})
    rec = client.get(f"/api/review/records/{first['record_id']}", params={"reviewer": "alice"}).json()["record"]
    assert rec["my_review"]["decision"] == "flag" and rec["n_reviews"] == 2 and rec["n_flags"] == 1


def test_review_validation(client):
    client.post("/api/review/enqueue", json={"model": MODEL, "n": 2})
    rec = client.get("/api/review/next", params={"reviewer": "carol"}).json()["record"]
    r = client.post(f"/api/review/{rec['id']}/decision", json={"reviewer": "carol", "decision": "flag"})
    assert r.status_code == 422 and r.json()["message"].startswith("reason:")
    r = client.post(f"/api/review/{rec['id']}/decision", json={"reviewer": "carol", "decision": "maybe"})
    assert r.status_code == 422 and r.json()["message"].startswith("decision:")
    r = client.post(f"/api/review/{rec['id']}/decision", json={"reviewer": "<script>", "decision": "accept"})
    assert r.status_code == 422 and r.json()["message"].startswith("reviewer:")
    assert client.post("/api/review/9999/decision", json={"reviewer": "carol", "decision": "accept"}).status_code == 404
    r = client.post("/api/review/enqueue", json={"model": MODEL, "scenario_id": 1})
    assert r.status_code == 422 and r.json()["message"].startswith("model:")
    r = client.post("/api/review/enqueue", json={"model": MODEL, "n": 100_000})
    assert r.status_code == 422 and r.json()["message"].startswith("n:")
    assert client.get("/api/review/next", params={"reviewer": ""}).status_code == 422


def test_flag_promoted_to_audit_rule_file(client):
    from synthehr.app.review import load_user_rules

    client.post("/api/review/enqueue", json={"model": MODEL, "n": 5, "seed": 9})
    rec = client.get("/api/review/next", params={"reviewer": "dana"}).json()["record"]
    accept = client.post(f"/api/review/{rec['id']}/decision",
                         json={"reviewer": "dana", "decision": "accept"}).json()["review"]
    r = client.post("/api/rules", json={"review_id": accept["id"], "pattern": "ph < 7", "rationale": "x",
                                        "created_by": "dana"})
    assert r.status_code == 422 and r.json()["message"].startswith("review_id:")
    flag = client.post(f"/api/review/{rec['id']}/decision",
                       json={"reviewer": "dana", "decision": "flag", "reason": "pattern is implausible"}).json()["review"]
    r = client.post("/api/rules", json={"review_id": flag["id"], "pattern": "ph <> 7", "rationale": "x",
                                        "created_by": "dana"})
    assert r.status_code == 422 and r.json()["message"].startswith("pattern")
    r = client.post("/api/rules", json={"review_id": flag["id"], "pattern": rec["suggested_pattern"],
                                        "severity": "error", "rationale": "implausible combination",
                                        "created_by": "dana"})
    assert r.status_code == 200, r.text
    rule = r.json()["rule"]
    assert rule["id"] == "CLIN0001" and rule["source"] == f"clinician feedback {flag['id']}"
    assert rule["match_rate_in_queue"] > 0  # the suggested pattern includes the flagged record itself
    path = client.settings.user_rules_path
    rows = list(csv.DictReader(path.open()))
    assert rows[0]["rule_id"] == "CLIN0001" and rows[0]["severity"] == "error"
    assert rows[0]["source"] == f"clinician feedback {flag['id']}" and rows[0]["pattern"] == rule["pattern"]
    assert rows[0]["family"] == "clinician" and rows[0]["params"] == f"pattern={rule['pattern']}"
    rules = load_user_rules(path)
    assert len(rules) == 1 and rules[0].id == "CLIN0001"
    table = pd.DataFrame([rec["values"]])
    assert rules[0].matches(table).tolist() == [True]
    assert client.get("/api/rules").json()["rules"][0]["pattern"] == rule["pattern"]
    # the rule now shows up among the findings of matching new records
    client.post("/api/review/enqueue", json={"model": MODEL, "n": 200, "seed": 10})
    stats_rules = [f["rule"] for r_ in _all_records(client) for f in r_["findings"]]
    values = pd.DataFrame([r_["values"] for r_ in _all_records(client)])
    if rules[0].matches(values).sum() > 1:
        assert "CLIN0001" in stats_rules


def _all_records(client):
    out, i = [], 1
    while True:
        r = client.get(f"/api/review/records/{i}")
        if r.status_code == 404:
            return out
        out.append(r.json()["record"])
        i += 1


def test_store_is_migrated_to_head_and_matches_models(client):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from synthehr.app.store import Base, current_revision

    engine = client.app.state.synthehr.engine
    assert current_revision(engine) == "0001_initial"
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert client.settings.db_url.endswith("userdata/feedback.sqlite3")


def test_feedback_survives_a_server_restart(make_client, tmp_path):
    db = f"sqlite:///{tmp_path / 'fb.sqlite3'}"
    a = make_client(db_url=db)
    a.post("/api/review/enqueue", json={"model": MODEL, "n": 3})
    rec = a.get("/api/review/next", params={"reviewer": "erin"}).json()["record"]
    a.post(f"/api/review/{rec['id']}/decision", json={"reviewer": "erin", "decision": "flag", "reason": "odd"})
    b = make_client(db_url=db)  # a new app on the same database (migrations are a no-op)
    hist = b.get("/api/review/history", params={"reviewer": "erin"}).json()["reviews"]
    assert [(h["record_id"], h["decision"], h["reason"]) for h in hist] == [(rec["id"], "flag", "odd")]


def test_agreement_statistics_helpers():
    from synthehr.app.review import cohen_kappa, fleiss_kappa

    assert cohen_kappa(["accept", "flag"], ["accept", "flag"]) == pytest.approx(1.0)
    assert cohen_kappa(["accept"] * 4, ["accept"] * 4) is None  # chance agreement is 1
    # Fleiss on a textbook-sized toy: 3 items × 3 raters
    items = [["flag", "flag", "flag"], ["accept", "accept", "flag"], ["accept", "accept", "accept"]]
    p_i = [1.0, 1 / 3, 1.0]
    p_flag = 4 / 9
    pe = p_flag**2 + (1 - p_flag) ** 2
    assert fleiss_kappa(items) == pytest.approx((np.mean(p_i) - pe) / (1 - pe))


def test_fast_draws_equal_model_impute(demo_model_dir):
    from synthehr.app.workbench import open_model

    lm = open_model(demo_model_dir, "g")
    x = np.full((7, len(lm.names)), np.nan)
    x[:, lm.names.index("ph")] = 7.2
    x[:, lm.names.index("mechanical_ventilation")] = 1
    got = lm.impute(x, seed=11)
    table = pd.DataFrame(x, columns=lm.names)
    want = lm.model.impute(table, seed=11)[lm.names].to_numpy(dtype=float)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(lm.sample(9, seed=4), lm.model.sample(9, seed=4)[lm.names].to_numpy(dtype=float))


def test_records_from_any_generator_can_be_imported_for_review(client):
    records = [{"ph": 6.95, "hco3": 40.0, "paco2": 30.0, "heart_rate": 90.0}, {"ph": 7.4, "hco3": 24.0, "paco2": 40.0}]
    r = client.post("/api/review/import", json={"model": MODEL, "source": "sdv-ctgan run 3", "records": records})
    assert r.status_code == 200 and r.json() == {"added": 2, "already_queued": 0}
    nxt = client.get("/api/review/next", params={"reviewer": "fay"}).json()
    rec = nxt["record"]
    assert nxt["remaining"] == 2
    assert rec["source"] == "import:sdv-ctgan run 3" and rec["model_type"] == "imported"
    assert rec["values"]["ph"] == 6.95 and rec["values"]["sbp"] is None
    assert any(f["rule"] == "constraint:henderson_hasselbalch" for f in rec["findings"])  # 6.95 vs 7.75 implied
    assert rec["z"]["ph"] < -3 and rec["suggested_pattern"]
    bad = client.post("/api/review/import", json={"model": MODEL, "source": "x", "records": [{"nope": 1}]})
    assert bad.status_code == 422 and bad.json()["message"].startswith("records[0].nope:")
    label = client.post("/api/review/import", json={"model": MODEL, "source": "../etc/passwd", "records": records})
    assert label.status_code == 200  # a label, never opened as a path
    bad = client.post("/api/review/import", json={"model": MODEL, "source": "x", "records": [{"ph": "high"}]})
    assert bad.status_code == 422 and bad.json()["message"].startswith("records[0].ph:")
