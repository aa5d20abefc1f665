"""The trajectory suite end to end on the demo with a tiny model: every metric the issue names is written
in the long format, the real-vs-real floor sits beside the R2, and the generated records pass the audit."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_trajectory_suite_writes_the_issue_metrics(tmp_path):
    from synthehr.benchmarks.trajectory_suite import main

    out = tmp_path / "results"
    assert main(["--dataset", "mimic-iv-demo", "--d-model", "16", "--n-layers", "1", "--n-heads", "2",
                 "--context", "32", "--epochs", "0.02", "--n-synthetic", "6", "--max-len", "400",
                 "--batch-size", "6", "--audit-throughput-records", "200", "--work", str(tmp_path / "w"),
                 "--temperature", "auto", "--temperature-grid", "0.8", "--calibration-records", "3",
                 "--out", str(out)]) == 0
    rows = json.loads((out / "trajectory-mimic-iv-demo.json").read_text())["rows"]
    got = {(r["model"], r["metric"], r["split"]) for r in rows}
    for metric in ("event_prob_r2", "event_prob_r2_floor", "event_prob_mean_bias"):
        assert ("trajectory", metric, "held_out") in got and ("trajectory", metric, "train") in got
    for metric in ("structural_validity", "mia_auc", "patients_per_minute", "peak_rss_mb", "first_icu_active_hours_median"):
        assert any(m == "trajectory" and k == metric for m, k, _ in got), metric
    assert ("real", "event_prob_r2", "held_out") in got
    value = {(r["model"], r["metric"], r["split"]): r["value"] for r in rows}
    assert value[("trajectory", "structural_validity", "")] == 1.0
    assert value[("trajectory", "mia_auc_ci_low", "")] <= value[("trajectory", "mia_auc", "")] \
        <= value[("trajectory", "mia_auc_ci_high", "")]
    audit = json.loads((out / "audit-mimic-iv-demo.json").read_text())["rows"]
    models = {r["model"] for r in audit}
    assert {"trajectory", "real"} <= models and "reference-shuffle-baseline" not in models
    assert (out / "trajectory-mimic-iv-demo.md").read_text().count("event_prob_r2") >= 2
    # --temperature auto: both temperatures scored on the training patients, the better one used
    calib = {k[2]: v for k, v in value.items() if k[1] == "calibration_event_prob_r2"}
    assert set(calib) == {"train T=0.8", "train T=1"}
    best = max(calib, key=lambda k: (round(calib[k], 6), k == "train T=1"))
    assert value[("trajectory", "sampling_temperature", "")] == float(best.split("=")[1])


@pytest.mark.parametrize("bad", ["0", "-1", "hot"])
def test_trajectory_suite_refuses_a_bad_temperature(bad):
    from synthehr.benchmarks.trajectory_suite import main

    with pytest.raises(SystemExit):
        main(["--temperature", bad])
    with pytest.raises(SystemExit):
        main(["--temperature-grid", f"0.9,{bad}"])


@pytest.mark.slow
def test_scale_benchmark_reports_cost_rows_per_size(tmp_path):
    """--scale on a tiny MIMIC-shaped corpus: one row set per size, measured in a fresh process each,
    with the total and the anonymous peak memory."""
    from synthehr.benchmarks.trajectory_suite import main

    out = tmp_path / "results"
    assert main(["--scale", "--sizes", "100,200", "--shard-size", "100", "--n-codes", "300", "--scale-steps", "2",
                 "--scale-generate", "4", "--max-len", "128", "--d-model", "16", "--n-layers", "1", "--n-heads", "2",
                 "--context", "32", "--batch-rows", "2", "--batch-size", "4", "--work", str(tmp_path / "w"),
                 "--out", str(out)]) == 0
    rows = json.loads((out / "trajectory-mimic-iv-shaped-scale.json").read_text())["rows"]
    value = {(r["metric"], r["split"]): r["value"] for r in rows}
    for n in ("100", "200"):
        assert value[("structural_validity", n)] == 1.0
        assert value[("patients_per_minute", n)] > 0
        assert 0 < value[("peak_anon_rss_mb", n)] <= value[("peak_rss_mb", n)] + 1
