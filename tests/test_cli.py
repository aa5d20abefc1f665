"""The CLI end to end on the bundled demo: prepare → train → generate → evaluate, and its errors."""

from __future__ import annotations

import json

import pandas as pd

from synthehr.cli import main


def test_cli_pipeline_on_demo(tmp_path, demo_raw, demo_meds, capsys):
    prepared, model = tmp_path / "prepared", tmp_path / "model"
    assert main(["prepare", "--source", "mimic-iv", "--path", str(demo_raw), "--meds", str(demo_meds),
                 "--out", str(prepared), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "140 stays" in out and "dropped measurements" in out
    assert main(["train", "--model", "gaussian", "--data", str(prepared), "--out", str(model)]) == 0
    synth = tmp_path / "synthetic.parquet"
    assert main(["generate", "--model", str(model), "-n", "300", "--condition", "ph=7.1",
                 "--condition", "paco2=62", "--out", str(synth)]) == 0
    df = pd.read_parquet(synth)
    assert len(df) == 300 and (df["ph"] == 7.1).all() and (df["paco2"] == 62).all()
    # Conditioning moved the correlated feature: HCO3 given acidosis differs from its marginal.
    free = tmp_path / "free.parquet"
    assert main(["generate", "--model", str(model), "-n", "300", "--out", str(free)]) == 0
    assert abs(df["hco3"].mean() - pd.read_parquet(free)["hco3"].mean()) > 0.5
    # a trajectory-only sampling option on a table model is refused, not ignored
    assert main(["generate", "--model", str(model), "-n", "3", "--temperature", "auto", "--out", str(free)]) == 2
    assert "trajectory models" in capsys.readouterr().err
    assert main(["evaluate", "--synthetic", str(free), "--data", str(prepared), "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["meta"]["n_synthetic"] == 300
    assert (tmp_path / "ev" / "report.html").is_file()


def test_cli_errors_are_clear(tmp_path, capsys):
    code = main(["prepare", "--source", "physionet2012", "--path", str(tmp_path / "missing.tar.gz"),
                 "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2
    assert "missing.tar.gz" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nope"), "-n", "3", "--out", str(tmp_path / "x.csv")]) == 2
    assert "no such model folder" in capsys.readouterr().err
