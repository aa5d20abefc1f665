"""The tabular benchmark harness on the bundled demo: long-format rows, and a comparison that can fail."""

from __future__ import annotations

import json

from synthehr.benchmarks.tabular import run_tabular_benchmark


def test_tabular_suite_on_demo(tmp_path):
    j, m = run_tabular_benchmark("mimic-iv-demo", ["gaussian", "independent_marginals", "no_such_model"],
                                 out_dir=tmp_path, cache=tmp_path / "cache", max_train_rows=800, max_test_rows=300)
    doc = json.loads(j.read_text())
    assert doc["suite"] == "tabular" and {"cpu", "torch", "versions"} <= set(doc["environment"])
    rows = {(r["model"], r["metric"]): r["value"] for r in doc["rows"]}
    for model in ("real", "gaussian", "independent_marginals"):
        for metric in ("rmspe", "correlation_difference", "mia_auc", "tstr_auroc"):
            assert (model, metric) in rows, (model, metric)
    assert rows[("gaussian", "fit_seconds")] >= 0
    # Independent marginals destroy correlations; the Gaussian keeps them.
    assert rows[("gaussian", "correlation_difference")] < rows[("independent_marginals", "correlation_difference")]
    assert any("no_such_model failed" in n for n in doc["notes"])  # a failing model is recorded, not fatal
    assert m.read_text().startswith("# tabular")
