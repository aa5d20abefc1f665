"""Event-level fidelity for MEDS-like event tables (one row per event: subject_id, time, code).

Source: "From Statistical Fidelity to Clinical Consistency" (2026): per-code event probabilities,
mean bias and R2 between real and synthetic.  Tables may be pandas or polars.  Times may be
datetimes or numbers (read as seconds); rows with a missing time (static events) count for code
probabilities and sequence lengths but not for inter-event gaps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from synthehr.evaluation._common import TableLike, r2_identity, to_pandas


def code_probabilities(events: TableLike, subject_col: str = "subject_id", code_col: str = "code") -> pd.Series:
    """P(code) = (subjects with the code at least once) / (all subjects in the table), per code."""
    df = to_pandas(events)
    n_subjects = df[subject_col].nunique()
    return df.drop_duplicates([subject_col, code_col]).groupby(code_col).size() / n_subjects


def event_probability_bias_r2(
    real_events: TableLike,
    synth_events: TableLike,
    subject_col: str = "subject_id",
    code_col: str = "code",
) -> dict[str, float]:
    """Bias and R2 of per-code probabilities over the union of codes (a code absent from one side has P = 0).

    mean_bias = mean_c (p_syn_c - p_real_c); mean_abs_bias = mean_c |p_syn_c - p_real_c|;
    r2 = 1 - sum (p_syn - p_real)^2 / sum (p_real - mean p_real)^2 (identity line);
    pearson_r2 = squared Pearson correlation of the two probability vectors.
    """
    p_real = code_probabilities(real_events, subject_col, code_col)
    p_syn = code_probabilities(synth_events, subject_col, code_col)
    codes = p_real.index.union(p_syn.index)
    a, b = p_real.reindex(codes, fill_value=0.0).to_numpy(), p_syn.reindex(codes, fill_value=0.0).to_numpy()
    pearson = np.corrcoef(a, b)[0, 1] if codes.size > 1 and a.std() > 0 and b.std() > 0 else np.nan
    return {
        "mean_bias": float(np.mean(b - a)),
        "mean_abs_bias": float(np.mean(np.abs(b - a))),
        "r2": r2_identity(a, b),
        "pearson_r2": float(pearson**2),
        "n_codes": int(codes.size),
        "n_codes_only_real": int(p_real.index.difference(p_syn.index).size),
        "n_codes_only_synthetic": int(p_syn.index.difference(p_real.index).size),
    }


def sequence_lengths(events: TableLike, subject_col: str = "subject_id") -> np.ndarray:
    """Number of events per subject."""
    return to_pandas(events).groupby(subject_col).size().to_numpy()


def inter_event_seconds(events: TableLike, subject_col: str = "subject_id", time_col: str = "time") -> np.ndarray:
    """Gaps in seconds between consecutive timed events of each subject (same-time events give 0)."""
    df = to_pandas(events)[[subject_col, time_col]].dropna()
    t = df[time_col]
    seconds = (t - t.min()).dt.total_seconds() if pd.api.types.is_datetime64_any_dtype(t) else t.astype(float)
    df = df.assign(_seconds=seconds).sort_values([subject_col, "_seconds"])
    subjects = df[subject_col].to_numpy()
    return np.diff(df["_seconds"].to_numpy())[subjects[1:] == subjects[:-1]]


def _compare(real: np.ndarray, synthetic: np.ndarray) -> dict[str, float]:
    """Mean and median of each side (NaN when empty) and the two-sample KS statistic."""
    out: dict[str, float] = {}
    for side, x in (("real", real), ("synthetic", synthetic)):
        out[f"{side}_mean"] = float(np.mean(x)) if x.size else float("nan")
        out[f"{side}_median"] = float(np.median(x)) if x.size else float("nan")
    out["ks"] = float(ks_2samp(real, synthetic).statistic) if real.size and synthetic.size else float("nan")
    return out


def sequence_length_comparison(
    real_events: TableLike, synth_events: TableLike, subject_col: str = "subject_id"
) -> dict[str, float]:
    """Events per subject: mean/median on each side and the two-sample KS statistic."""
    return _compare(sequence_lengths(real_events, subject_col), sequence_lengths(synth_events, subject_col))


def inter_event_time_comparison(
    real_events: TableLike, synth_events: TableLike, subject_col: str = "subject_id", time_col: str = "time"
) -> dict[str, float]:
    """Inter-event gaps: means/medians in seconds and the KS statistic of log(1 + seconds).

    KS is invariant under a strictly monotone transform, so it is computed once on the seconds: the
    value is identical to the KS on log seconds.
    """
    gaps = [inter_event_seconds(t, subject_col, time_col) for t in (real_events, synth_events)]
    return _compare(*gaps)


def event_summary(
    real_events: TableLike,
    synth_events: TableLike,
    subject_col: str = "subject_id",
    time_col: str = "time",
    code_col: str = "code",
) -> dict[str, Any]:
    """All event-level comparisons, nested: code_probability, sequence_length, inter_event_time."""
    real, synth = to_pandas(real_events), to_pandas(synth_events)
    return {
        "code_probability": event_probability_bias_r2(real, synth, subject_col, code_col),
        "sequence_length": sequence_length_comparison(real, synth, subject_col),
        "inter_event_time": inter_event_time_comparison(real, synth, subject_col, time_col),
    }
