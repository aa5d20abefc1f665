"""Deterministic patient-level splits: a subject's split depends only on (seed, subject_id)."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

SPLITS = ("train", "tuning", "held_out")


def assign_splits(subject_ids, seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> pd.DataFrame:
    """Hash each subject id with the seed into [0, 1) and cut at the cumulative fractions.

    Hashing (not shuffling) keeps a subject's split stable when the cohort grows, so a patient
    never moves between train and held-out as data are added.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    ids = pd.unique(pd.Series(subject_ids))
    u = np.array([
        int.from_bytes(hashlib.sha256(f"{seed}:{sid}".encode()).digest()[:8], "big") / 2**64 for sid in ids
    ])
    cuts = np.cumsum(fractions)
    idx = np.searchsorted(cuts[:2], u, side="right")
    return pd.DataFrame({"subject_id": ids, "split": np.array(SPLITS)[idx]})
