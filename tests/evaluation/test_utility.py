import numpy as np
import pandas as pd
import pytest

from synthehr.evaluation import last_bins_layout, run_tstr, tstr


def labelled(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.normal(size=(n, 4)), columns=list("abcd"))
    y = (x["a"] + x["b"] + 0.3 * rng.normal(size=n) > 0).astype(int).to_numpy()
    return x, y


TRAIN, TEST, SYNTH = labelled(400, 1), labelled(400, 2), labelled(400, 3)


def test_faithful_synthetic_data_is_useful_and_shuffled_labels_are_not():
    good = tstr(SYNTH, TRAIN, TEST, models=("random_forest", "mlp"), seed=0)
    x, y = SYNTH
    shuffled = tstr((x, np.random.default_rng(0).permutation(y)), None, TEST, models=("random_forest",), seed=0)
    for model in ("random_forest", "mlp"):
        assert good[model]["tstr"]["auroc"] > 0.9
        assert good[model]["gap"]["auroc"] == pytest.approx(good[model]["trtr"]["auroc"] - good[model]["tstr"]["auroc"])
    assert shuffled["random_forest"]["tstr"]["auroc"] == pytest.approx(0.5, abs=0.1)
    assert "trtr" not in shuffled["random_forest"]


def test_single_class_synthetic_set_reports_nan_and_warning():
    x, y = SYNTH
    result = tstr((x, np.zeros_like(y)), TRAIN, TEST, models=("random_forest",))["random_forest"]
    assert np.isnan(result["tstr"]["auroc"]) and np.isnan(result["tstr"]["aupr"])
    assert "single class" in result["tstr"]["warning"] or "1 class" in result["tstr"]["warning"]
    assert result["tstr"]["accuracy"] == pytest.approx(np.mean(TEST[1] == 0))
    assert result["trtr"]["auroc"] > 0.9


def test_run_tstr_keeps_scores_for_roc_curves():
    res = run_tstr(SYNTH, TRAIN, TEST, models=("random_forest",))
    assert res.scores["random_forest"]["tstr"].shape == (400,)
    assert res.positive_label == 1


def test_last_bins_layout_pads_short_stays_with_their_first_bin():
    grid = pd.DataFrame(
        {
            "stay_id": ["A"] * 8 + ["B"] * 3,
            "bin": list(range(8)) + [0, 1, 2],
            "v": [float(b) for b in range(8)] + [10.0, np.nan, 12.0],
            "w": 1.0,
            "died": [0] * 8 + [1] * 3,
        }
    ).sample(frac=1, random_state=0)  # row order must not matter
    wide = last_bins_layout(grid, feature_cols=["v", "w"], label_col="died", n_bins=6)
    assert list(wide.columns[:4]) == ["v__t0", "w__t0", "v__t1", "w__t1"]
    assert list(wide.columns)[-1] == "died"
    np.testing.assert_array_equal(wide.loc["A", [f"v__t{k}" for k in range(6)]], [2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(wide.loc["B", [f"v__t{k}" for k in range(6)]], [10, 10, 10, 10, np.nan, 12])
    assert wide.loc["B", "died"] == 1 and wide.shape == (2, 13)
