"""The split-protocol check: by stay nothing is shared, by row most test rows have their stay in training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from synthehr.benchmarks import SUITES
from synthehr.benchmarks.imputation_split import shared_stays, split_rows


def test_registered():
    assert SUITES["imputation-split"] == "synthehr.benchmarks.imputation_split"


def test_split_by_stay_keeps_every_stay_on_one_side_and_by_row_does_not():
    grid = pd.DataFrame({"stay_id": np.repeat(np.arange(200), 12)})
    by_stay = split_rows(grid, "stays", 0.1, seed=0)
    assert by_stay.sum() == 20 * 12 and shared_stays(grid, by_stay) == 0.0
    by_row = split_rows(grid, "rows", 0.1, seed=0)
    assert 0.05 < by_row.mean() < 0.15 and shared_stays(grid, by_row) > 0.9
    with pytest.raises(ValueError, match="unknown split"):
        split_rows(grid, "patients", 0.1, seed=0)


def test_suite_on_the_demo(tmp_path, demo_raw):
    from synthehr.benchmarks.imputation_split import main

    if not demo_raw.is_dir():
        pytest.skip(f"bundled demo not found at {demo_raw}")
    assert main(["--dataset", "mimic-iv-demo", "--models", "mice,knn", "--n-eval", "50",
                 "--results", str(tmp_path / "r"), "--cache", str(tmp_path / "cache")]) == 0
    doc = json.loads((tmp_path / "r" / "imputation-split-mimic-iv-demo.json").read_text())
    got = {(r["model"], r["metric"], r["split"]): r["value"] for r in doc["rows"]}
    assert got[("data", "test_rows_with_stay_in_training", "stays")] == 0.0
    assert got[("data", "test_rows_with_stay_in_training", "rows")] > 0.5
    for split in ("stays", "rows"):
        for m in ("mice", "knn"):
            assert 0 < got[(m, "imputation_mse", split)] < 10


def test_a_model_that_cannot_impute_is_refused():
    from synthehr.benchmarks.imputation_split import main

    with pytest.raises(SystemExit, match="cannot impute"):
        main(["--models", "ctgan"])
