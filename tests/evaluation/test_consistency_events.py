import numpy as np
import pandas as pd
import polars as pl
import pytest

from synthehr.evaluation import (
    code_probabilities,
    cohens_d,
    event_probability_bias_r2,
    event_summary,
    per_record_rate_comparison,
)


def test_cohens_d_known_samples_and_sign():
    a, b = [1, 2, 3, 4, 5], [3, 4, 5, 6, 7]  # means 3 and 5, both variances 2.5
    assert cohens_d(a, b) == pytest.approx(-2 / np.sqrt(2.5))
    assert cohens_d(b, a) == pytest.approx(2 / np.sqrt(2.5))
    assert np.isnan(cohens_d([1.0], b))


def test_per_record_rate_comparison():
    real = pd.DataFrame({"subject_id": [1, 1, 2, 2], "flag": [True, False, False, False]})
    synth = pd.DataFrame({"subject_id": [7, 7, 8, 8], "flag": [True, True, True, False]})
    out = per_record_rate_comparison(real, synth)
    assert out["real_mean_rate"] == pytest.approx(0.25)
    assert out["synthetic_mean_rate"] == pytest.approx(0.75)
    assert out["synthetic_any_share"] == 1.0 and out["real_any_share"] == 0.5
    assert out["cohens_d"] > 0


REAL = pd.DataFrame(
    {
        "subject_id": [1, 1, 1, 2],
        "time": pd.to_datetime(["2020-01-01 00:00", "2020-01-01 01:00", "2020-01-01 03:00", "2020-01-02 00:00"]),
        "code": ["A", "B", "A", "A"],
    }
)
SYNTH = pd.DataFrame(
    {
        "subject_id": ["a", "b", "c", "d", "d"],
        "time": pd.to_datetime(["2020-01-01 00:00"] * 4 + ["2020-01-01 00:30"]),
        "code": ["A", "A", "A", "C", "C"],
    }
)


def test_event_probability_bias_r2_by_hand():
    assert code_probabilities(REAL).to_dict() == {"A": 1.0, "B": 0.5}
    out = event_probability_bias_r2(REAL, pl.from_pandas(SYNTH))  # polars accepted
    # union {A, B, C}: real (1, .5, 0), synthetic (.75, 0, .25)
    assert out["mean_bias"] == pytest.approx((-0.25 - 0.5 + 0.25) / 3)
    assert out["r2"] == pytest.approx(1 - (0.0625 + 0.25 + 0.0625) / 0.5)
    assert out["n_codes"] == 3 and out["n_codes_only_real"] == 1 and out["n_codes_only_synthetic"] == 1


def test_event_summary_lengths_and_gaps():
    out = event_summary(REAL, SYNTH)
    assert out["sequence_length"]["real_mean"] == pytest.approx(2.0)
    assert out["sequence_length"]["synthetic_median"] == 1.0
    assert out["inter_event_time"]["real_median"] == pytest.approx(5400.0)  # gaps 3600 s and 7200 s
    assert out["inter_event_time"]["synthetic_mean"] == pytest.approx(1800.0)
    assert out["inter_event_time"]["ks"] == 1.0
