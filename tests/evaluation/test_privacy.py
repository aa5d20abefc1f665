import numpy as np
import pandas as pd
import pytest

from synthehr.evaluation import (
    attribute_inference,
    closest_record_distances,
    dcr_summary,
    membership_inference,
    nndr_summary,
)


def population(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4))
    return pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2] * 5 + 100, "d": x[:, 0] + 0.3 * x[:, 3]})


TRAIN, HOLDOUT, FRESH = population(300, 1), population(300, 2), population(300, 3)


def test_copied_training_rows_are_detected():
    result = membership_inference(TRAIN, HOLDOUT, TRAIN.copy(), seed=0)
    assert result["auc"] > 0.9
    assert result["accuracy"] > 0.9 and result["f1"] > 0.9
    assert result["member_distance_median"] == 0.0


def test_fresh_sample_gives_chance_level_attack():
    result = membership_inference(TRAIN, HOLDOUT, FRESH, seed=0)
    assert result["auc"] == pytest.approx(0.5, abs=0.1)
    assert result["n_members"] == result["n_nonmembers"] == 300
    assert result["auc_ci_low"] < 0.5 < result["auc_ci_high"]  # no leakage: the interval holds 0.5


def test_auc_interval_is_wide_for_a_small_cohort_and_excludes_chance_for_copies():
    small = membership_inference(TRAIN.iloc[:20], HOLDOUT.iloc[:20], FRESH, seed=0)
    assert small["auc_null_sd"] == pytest.approx(np.sqrt(41 / 4800))
    assert small["auc_ci_high"] - small["auc_ci_low"] > 0.25
    copies = membership_inference(TRAIN, HOLDOUT, TRAIN.copy(), seed=0)
    assert copies["auc_ci_low"] > 0.9


def test_equal_counts_subsampled_with_seed():
    a = membership_inference(TRAIN, HOLDOUT.iloc[:100], FRESH, seed=5)
    assert a["n_members"] == 100 and a == membership_inference(TRAIN, HOLDOUT.iloc[:100], FRESH, seed=5)


def test_dcr_and_nndr_flag_copies():
    copies = closest_record_distances(TRAIN, HOLDOUT, TRAIN.copy())
    fresh = closest_record_distances(TRAIN, HOLDOUT, FRESH)
    assert dcr_summary(copies)["synthetic"]["exact_copy_share"] == 1.0
    assert nndr_summary(copies)["synthetic"]["median"] == 0.0
    dcr = dcr_summary(fresh)
    assert dcr["synthetic"]["median"] == pytest.approx(dcr["holdout"]["median"], rel=0.25)
    assert 0 < nndr_summary(fresh)["holdout"]["median"] < 1


def test_attribute_inference_advantage_only_for_leaky_data():
    leaky = attribute_inference(TRAIN, HOLDOUT, TRAIN.copy(), ["c"], k=1)["c"]
    fair = attribute_inference(TRAIN, HOLDOUT, FRESH, ["c"], k=1)["c"]
    assert leaky["kind"] == "regression"
    assert leaky["synthetic"]["error"] == 0.0 and leaky["advantage"] > 0.5
    assert abs(fair["advantage"]) < 0.2


def test_attribute_inference_classification():
    tr = TRAIN.assign(flag=(TRAIN["a"] > 0).astype(int))
    ho = HOLDOUT.assign(flag=(HOLDOUT["a"] > 0).astype(int))
    result = attribute_inference(tr, ho, tr.copy(), ["flag"])["flag"]
    assert result["kind"] == "classification"
    assert result["synthetic"]["error"] < 0.2
