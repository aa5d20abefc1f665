import json
import re

import numpy as np
import pandas as pd

from synthehr.constraints import base_excess_from_hco3_ph, henderson_hasselbalch_ph
from synthehr.evaluation import evaluate_tables, flatten_metrics


def cohort(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"hco3": rng.normal(24, 3, n), "paco2": rng.normal(40, 5, n), "age": rng.normal(60, 12, n)})
    df["ph"] = henderson_hasselbalch_ph(df["hco3"], df["paco2"]) + rng.normal(0, 0.02, n)
    df["base_excess"] = base_excess_from_hco3_ph(df["hco3"], df["ph"])
    df["died"] = ((df["age"] - 60) / 12 + rng.normal(0, 0.7, n) > 0.5).astype(int)
    return df


def test_evaluate_tables_writes_json_and_self_contained_report(tmp_path):
    train, test, synth = cohort(200, 1), cohort(150, 2), cohort(200, 3)
    metrics = evaluate_tables(test, synth, train, label="died", out_dir=tmp_path, seed=0, models=("random_forest",))

    assert {"meta", "fidelity", "privacy", "constraints", "utility"} <= set(metrics)
    assert "died" not in metrics["meta"]["features"]
    assert metrics["constraints"]["synthetic"]["base_excess"]["mae"] < 1e-9
    assert metrics["constraints"]["real_test"]["henderson_hasselbalch"]["mae"] > 0.005
    assert "severinghaus" not in metrics["constraints"]["synthetic"]
    assert metrics["utility"]["random_forest"]["tstr"]["auroc"] > 0.7
    assert "died" in metrics["privacy"]["attribute_inference"]

    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["privacy"]["membership"]["auc"] == metrics["privacy"]["membership"]["auc"]

    page = (tmp_path / "report.html").read_text()
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[a-z]+:""", page)
    assert page.count('<img alt="') == 5 and '<img alt="marginal histograms" src="data:image/png;base64,' in page


def test_flatten_metrics_rows():
    nested = {
        "meta": {"seed": 0},
        "fidelity": {"synthetic": {"ks_max": np.float64(0.2)}, "train": {"ks_max": 0.1}},
        "utility": {"mlp": {"gap": {"auroc": float("nan")}}},
        "x": {"names": ["a", "b"]},
    }
    rows = flatten_metrics(nested)
    assert rows == [
        {"metric": "meta.seed", "value": 0, "split": "meta"},
        {"metric": "fidelity.ks_max", "value": 0.2, "split": "synthetic"},
        {"metric": "fidelity.ks_max", "value": 0.1, "split": "train"},
        {"metric": "utility.mlp.auroc", "value": None, "split": "gap"},
        {"metric": "x.names", "value": "a, b", "split": "synthetic"},
    ]
    assert type(rows[1]["value"]) is float
