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
    for title in ("Table I", "Table III", "Table V", "Table VII", "Targets"):
        assert title in md
    assert not [n for n in doc.get("notes", []) if "failed" in n], doc["notes"]


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
