"""`synthehr benchmark intergenehr --quick` on the bundled MIMIC-IV demo: every table's metrics are
written, enforced constraints hold exactly, and a structure-aware model imputes better than one
that knows nothing about relations between features."""

from __future__ import annotations

import json

import pytest

from synthehr.benchmarks import SUITES

REQUIRED = {
    "I": {"mmd", "rmspe", "mape", "corr_diff", "dcr_median", "fit_seconds", "sample_seconds"},
    "II": {"mmd", "rmspe", "mape"},
    "III": {"imputation_mse", "imputation_nll", "reconstruct_ms", "fit_seconds"},
    "IV": {"imputation_mse", "imputation_nll"},
    "V": {"constraint_mae_ph", "constraint_mae_base_excess", "constraint_mae_spo2"},
    "VI": {"constraint_mae_ph", "constraint_mae_base_excess", "constraint_mae_spo2"},
    "VII": {"tstr_auroc", "tstr_accuracy", "tstr_auroc_gap"},
}
MODELS = ["gaussian", "independent_marginals", "vae", "pmvae", "mice", "knn"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, demo_raw):
    import torch

    from synthehr.benchmarks.intergenehr_suite import main

    if not demo_raw.is_dir():
        pytest.skip(f"bundled demo not found at {demo_raw}")
    out = tmp_path_factory.mktemp("intergenehr")
    threads = torch.get_num_threads()
    try:
        rc = main(["--dataset", "mimic-iv-demo", "--quick", "--results", str(out / "results"),
                   "--cache", str(out / "cache"), "--models", ",".join(MODELS)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    doc = json.loads((out / "results" / "intergenehr-mimic-iv-demo.json").read_text())
    md = (out / "results" / "intergenehr-mimic-iv-demo.md").read_text()
    return doc, md


def value(rows, table, model, metric, split):
    hits = [r["value"] for r in rows
            if (r["table"], r["model"], r["metric"], r["split"]) == (table, model, metric, split)]
    assert len(hits) == 1, (table, model, metric, split, hits)
    return hits[0]


def test_suite_is_registered():
    assert SUITES["intergenehr"] == "synthehr.benchmarks.intergenehr_suite"


def test_every_table_has_its_metrics(quick_run):
    doc, md = quick_run
    assert doc["suite"] == "intergenehr" and doc["dataset"] == "mimic-iv-demo"
    rows = doc["rows"]
    assert rows and all(r.get("table") in REQUIRED for r in rows)
    for table, metrics in REQUIRED.items():
        have = {r["metric"] for r in rows if r["table"] == table}
        assert metrics <= have, (table, metrics - have)
    models = {r["model"] for r in rows}
    assert set(MODELS) | {"real"} <= models
    for m in ("gaussian", "vae", "pmvae"):  # density models report an NLL, samplers a latency
        assert value(rows, "III", m, "imputation_nll", "mask50") is not None
        assert value(rows, "III", m, "reconstruct_ms", "latency") > 0
    assert value(rows, "VII", "real", "tstr_auroc", "real") is not None
    settings = {m: n for n in doc["notes"] for m in ("vae", "pmvae") if n.startswith(f"{m} settings:")}
    assert settings and all('"column_weights": null' in n for n in settings.values())  # the grid models: unweighted
    assert any("outcome's log-likelihood weighted" in n for n in doc["notes"])  # Table VII's are weighted
    for m in ("real", "gaussian", "pmvae"):  # Table I averages --fidelity-draws (2 in --quick) draws
        assert value(rows, "I", m, "rmspe_sd", "test") >= 0
    for m in ("gaussian", "pmvae"):  # Tables V/VI average as many constrained samples
        assert value(rows, "V", m, "rmspe_other_sd", "enforced=all") >= 0
        assert value(rows, "V", m, "rmspe_other_unconstrained_sd", "enforced=all") >= 0
    for title in ("Table I", "Table III", "Table V", "Table VII", "Targets"):
        assert title in md
    assert not [n for n in doc.get("notes", []) if "failed" in n], doc["notes"]


def test_mean_fidelity_averages_each_metric_and_reports_its_spread():
    from synthehr.benchmarks.intergenehr_suite import mean_fidelity

    out = mean_fidelity([{"rmspe": 1.0, "mape": 2.0}, {"rmspe": 3.0, "mape": 2.0}])
    assert out == {"rmspe": 2.0, "rmspe_sd": pytest.approx(2**0.5), "mape": 2.0, "mape_sd": 0.0}
    assert mean_fidelity([{"rmspe": 1.5}]) == {"rmspe": 1.5}  # one draw: no spread to report


def test_replaced_share_counts_records_that_differ_on_the_given_features():
    import numpy as np
    import pandas as pd

    from synthehr.benchmarks.intergenehr_suite import replaced_share

    a = pd.DataFrame({"x": [1.0, 2.0, np.nan, 4.0], "y": [0, 1, 1, 0], "ph": [7.1, 7.2, 7.3, 7.4]})
    b = a.assign(ph=a["ph"] + 0.05)  # an equation target recomputed: not a replaced record
    assert replaced_share(b, a, ["x", "y"]) == 0.0  # NaN equals NaN
    b.loc[3, "x"] = 5.0
    assert replaced_share(b, a, ["x", "y"]) == 0.25


def test_enforced_constraints_hold_exactly(quick_run):
    rows = quick_run[0]["rows"]
    checked = 0
    for eq in ("ph", "base_excess", "spo2"):
        metric = f"constraint_mae_{eq}"
        for split in ("enforced=all", f"enforced={eq}"):
            table = "V" if split == "enforced=all" else "VI"
            enforced = [r for r in rows if (r["table"], r["metric"], r["split"]) == (table, metric, split)]
            assert {r["model"] for r in enforced} >= {"gaussian", "vae", "pmvae"}
            for r in enforced:
                assert r["value"] is not None and abs(r["value"]) < 1e-9, r
                checked += 1
        # unconstrained real data does not satisfy the equations exactly
        assert value(rows, "V", "real", metric, "enforced=none") > 1e-6
    assert checked >= 18


def test_structure_beats_independence(quick_run):
    """Conditional Gaussian imputation must beat drawing from the marginals (and MICE must too)."""
    rows = quick_run[0]["rows"]
    indep = value(rows, "III", "independent_marginals", "imputation_mse", "mask50")
    assert value(rows, "III", "gaussian", "imputation_mse", "mask50") < indep
    assert value(rows, "III", "mice", "imputation_mse", "mask50") < indep
    assert value(rows, "IV", "gaussian", "imputation_mse", "salient") < value(
        rows, "IV", "independent_marginals", "imputation_mse", "salient")


# ------------------------------------------------------------------ --reuse-rows (merging an earlier run)
def _doc(dataset="mimic-iv-demo", **settings):
    from synthehr.benchmarks.intergenehr_suite import Settings

    base = Settings(dataset=dataset)
    recorded = {k: (list(v) if isinstance(v, tuple) else v) for k, v in base.__dict__.items() if k != "extra_notes"}
    recorded.update(settings)

    def row(model, metric, value, split, table):
        return {"model": model, "metric": metric, "value": value, "split": split, "seed": 0, "table": table,
                "dataset": dataset}

    rows = [row("real", "rmspe", 2.0, "test", "I"), row("vae", "rmspe", 9.0, "test", "I"),
            row("ctgan", "rmspe", 5.0, "test", "I"), row("mice", "imputation_mse", 0.8, "mask50", "III"),
            row("pmvae", "imputation_mse", 0.9, "mask50", "III"), row("real", "tstr_auroc", 0.8, "real", "VII")]
    return {"suite": "intergenehr", "dataset": dataset, "created": "2026-01-01T00:00:00+00:00",
            "environment": {"versions": {}}, "rows": rows, "settings": recorded,
            "notes": ["ctgan settings: {\"epochs\": 30}", "vae settings: {}", "wall time 10 s for x"]}


def test_merge_takes_every_row_of_the_reused_models_and_none_of_the_refitted():
    from synthehr.benchmarks.intergenehr_suite import (Settings, check_reuse, check_targets, merge_rows,
                                                       reused_notes)

    s = Settings(dataset="mimic-iv-demo", models=("vae", "pmvae"))
    reuse = check_reuse(_doc(), s, "old.json")
    assert reuse.models == ("ctgan", "mice")  # not 'real', not the refitted vae / pmvae
    new = [{"model": "real", "metric": "rmspe", "value": 2.0, "split": "test", "seed": 0, "table": "I"},
           {"model": "pmvae", "metric": "imputation_mse", "value": 0.3, "split": "mask50", "seed": 0, "table": "III"},
           {"model": "vae", "metric": "rmspe", "value": 2.2, "split": "test", "seed": 0, "table": "I"}]
    merged = merge_rows(new, reuse)
    got = {(r["model"], r["metric"]): r["value"] for r in merged}
    assert got == {("real", "rmspe"): 2.0, ("vae", "rmspe"): 2.2, ("ctgan", "rmspe"): 5.0,
                   ("mice", "imputation_mse"): 0.8, ("pmvae", "imputation_mse"): 0.3}
    assert len(merged) == 5 and [r["table"] for r in merged] == ["I", "I", "I", "III", "III"]
    # the cross-model targets see the reused peers and the refitted models together
    targets = check_targets(merged, "mimic-iv-demo")
    assert any(t.startswith("MET: imputation_mse pmvae = 0.3: ≤ 0.5 x mice (0.4)") for t in targets), targets
    notes = reused_notes(reuse)
    assert any("ctgan settings" in n and "old.json" in n for n in notes)
    assert not any("vae settings" in n for n in notes)
    with pytest.raises(ValueError, match="both refitted and reused"):
        merge_rows([*new, {"model": "ctgan", "metric": "rmspe", "value": 1.0, "split": "test", "table": "I"}], reuse)


@pytest.mark.parametrize("change, message", [
    (dict(dataset="physionet2012"), "dataset"),
    (dict(n_eval=500), "n_eval"),
    (dict(seed=1), "seed"),
    (dict(ctgan_epochs=5), "ctgan_epochs"),           # a reused model's own setting
    (dict(notes=["PARTIAL: written after Table I"]), "PARTIAL"),
    (dict(suite="tabular"), "suite"),
])
def test_reuse_is_refused_when_the_earlier_run_differs(change, message):
    from synthehr.benchmarks.intergenehr_suite import Settings, check_reuse

    doc = _doc()
    for k, v in change.items():
        if k in ("dataset", "notes", "suite"):
            doc[k] = v
        else:
            doc["settings"][k] = v
    with pytest.raises(SystemExit, match=message):
        check_reuse(doc, Settings(dataset="mimic-iv-demo", models=("vae",)), "old.json")
    # a refitted model's own settings may differ (vae epochs here): nothing of it is reused
    ok = _doc(epochs=7)
    assert check_reuse(ok, Settings(dataset="mimic-iv-demo", models=("vae", "pmvae")), "old.json").models


def test_reuse_is_refused_when_the_floor_differs():
    from synthehr.benchmarks.intergenehr_suite import Settings, check_floor, check_reuse

    reuse = check_reuse(_doc(), Settings(dataset="mimic-iv-demo", models=("vae",)), "old.json")
    same = [{"model": "real", "metric": "rmspe", "value": 2.0, "split": "test", "table": "I"}]
    assert check_floor(reuse, same, ("I",)) == (1, 0.0)
    with pytest.raises(SystemExit, match="floor"):
        check_floor(reuse, [{**same[0], "value": 2.1}], ("I",))
    with pytest.raises(SystemExit, match="floor"):  # a floor row that is not recomputed is a mismatch too
        check_floor(reuse, same, ("I", "VII"))


def test_quick_run_reusing_the_earlier_rows(quick_run, tmp_path):
    """End to end: refit only the Gaussian, take every other model's rows from the quick run."""
    import torch

    from synthehr.benchmarks.intergenehr_suite import main

    doc, _ = quick_run
    old = tmp_path / "old.json"
    old.write_text(json.dumps(doc))
    cache = tmp_path / "cache"
    threads = torch.get_num_threads()
    try:
        rc = main(["--dataset", "mimic-iv-demo", "--quick", "--results", str(tmp_path / "new"), "--cache", str(cache),
                   "--models", "gaussian", "--reuse-rows", str(old)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    new = json.loads((tmp_path / "new" / "intergenehr-mimic-iv-demo.json").read_text())
    md = (tmp_path / "new" / "intergenehr-mimic-iv-demo.md").read_text()
    assert new["reused"]["models"] == ["independent_marginals", "vae", "pmvae", "mice", "knn"]
    assert new["reused"]["refitted"] == ["gaussian"] and new["reused"]["created"] == doc["created"]
    key = lambda r: (r["table"], r["model"], r["metric"], r["split"])  # noqa: E731
    old_rows = {key(r): r["value"] for r in doc["rows"]}
    new_rows = {key(r): r["value"] for r in new["rows"]}
    assert len(new_rows) == len(new["rows"])  # no duplicated cell
    for k, v in old_rows.items():
        if k[1] not in ("gaussian", "real"):
            assert new_rows[k] == v, k  # reused unchanged
    assert {k for k in new_rows if k[1] != "gaussian"} == {k for k in old_rows if k[1] != "gaussian"}
    assert value(new["rows"], "III", "gaussian", "imputation_nll", "mask50") is not None
    assert value(new["rows"], "VII", "gaussian", "tstr_auroc", "noise") is not None
    assert new["notes"][0].startswith("REUSED ROWS:") and f"{tmp_path.name}/old.json" in new["notes"][0]
    assert str(tmp_path) not in json.dumps(new) + md  # no path of this machine in a file meant to be committed
    assert "Rows of independent_marginals, vae, pmvae, mice, knn are reused unchanged" in md
    assert new["targets"] and not [n for n in new["notes"] if "failed" in n]
    # the merged file can itself be reused: refit knn only; the rows reused twice keep their first origin
    merged = tmp_path / "merged.json"
    merged.write_text(json.dumps(new))
    try:
        rc = main(["--dataset", "mimic-iv-demo", "--quick", "--results", str(tmp_path / "again"), "--cache",
                   str(cache), "--models", "knn", "--reuse-rows", str(merged)])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    again = json.loads((tmp_path / "again" / "intergenehr-mimic-iv-demo.json").read_text())
    assert again["reused"]["models"] == ["gaussian", "independent_marginals", "vae", "pmvae", "mice"]
    assert again["reused"]["rows_created"]["vae"] == doc["created"]
    assert again["reused"]["rows_created"]["gaussian"] == new["created"]
    again_rows = {key(r): r["value"] for r in again["rows"]}
    assert len(again_rows) == len(again["rows"])
    assert all(again_rows[k] == v for k, v in new_rows.items() if k[1] not in ("knn", "real"))
    assert any(n.startswith(f"[reused from {tmp_path.name}/old.json") and n.split("] ", 1)[1].startswith("vae settings")
               for n in again["notes"]), again["notes"]
    # a different evaluation size is refused before anything is fitted
    with pytest.raises(SystemExit, match="n_eval"):
        main(["--dataset", "mimic-iv-demo", "--quick", "--results", str(tmp_path / "bad"), "--cache", str(cache),
              "--models", "gaussian", "--n-eval", "50", "--reuse-rows", str(old)])


def test_reuse_is_refused_when_a_reused_model_was_built_differently():
    """missForest run with max_features 'sqrt' (what an older results file records) is not today's missForest."""
    from synthehr.benchmarks.intergenehr_suite import Settings, check_reuse, check_reused_settings

    s = Settings(dataset="mimic-iv-demo", models=("vae", "pmvae", "ctgan"))
    doc = _doc()
    doc["rows"].append({**doc["rows"][3], "model": "missforest"})
    doc["notes"] += ['mice settings: {"max_iter": 10, "tol": 0.0, "seed": 0}',
                     'missforest settings: {"max_iter": 5, "tol": 0.0, "n_estimators": 30, "max_features": "sqrt", '
                     '"min_samples_leaf": 5, "n_jobs": -1, "seed": 0}']
    reuse = check_reuse(doc, s, "old.json")
    assert reuse.models == ("mice", "missforest")
    with pytest.raises(SystemExit, match="missforest was run with other settings.*max_features"):
        check_reused_settings(reuse, s)
    doc["notes"][-1] = doc["notes"][-1].replace('"sqrt"', "0.5")
    check_reused_settings(check_reuse(doc, s, "old.json"), s)  # today's defaults: accepted


def test_display_path_keeps_machine_paths_out_of_results(tmp_path, monkeypatch):
    from synthehr.benchmarks.results import display_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "benchmarks").mkdir()
    assert display_path(tmp_path / "benchmarks" / "a.json") == "benchmarks/a.json"  # inside the repo: relative
    assert display_path("/elsewhere/runs/old.json") == "runs/old.json"              # outside: last two parts
    assert display_path("old.json") == "old.json"


def test_model_seed_changes_only_the_vae_familys_training_seed():
    from synthehr.benchmarks.intergenehr_suite import Settings, check_reuse, make_model

    s = Settings(dataset="mimic-iv-demo", seed=3, model_seed=7)
    assert make_model("pmvae", s).hyperparameters["seed"] == 7
    assert make_model("vae", Settings(dataset="mimic-iv-demo", seed=3)).hyperparameters["seed"] == 3
    assert list(make_model("vaeac", Settings(dataset="mimic-iv-demo", hidden=(32, 16))).hyperparameters["hidden"]) \
        == [32, 16]
    # a file written before the setting existed ran with the split seed: its torch rows stay reusable ...
    old = _doc()
    del old["settings"]["model_seed"]
    assert "vae" in check_reuse(old, Settings(dataset="mimic-iv-demo", models=("ctgan",)), "old.json").models
    # ... but not into a run that trains them with another seed
    with pytest.raises(SystemExit, match="model_seed"):
        check_reuse(old, Settings(dataset="mimic-iv-demo", models=("ctgan",), model_seed=1), "old.json")
