"""Source readers: each turns one raw format into a `SourceExtract` that `synthehr.prepare` consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class SourceExtract:
    """What every source hands to the shared preparation pipeline.

    stays: one row per ICU stay with stay_id, subject_id, los_hours, in_hospital_mortality and any
        static columns the source knows (age, sex, race, admission_type, icu_type, ...).
    measurements_sql: a DuckDB SELECT yielding stay_id, offset_hours, code, value.
    mapping_dataset: which rows of the catalogue's source table map this source's codes.
    events_sql: a DuckDB SELECT yielding MEDS columns (subject_id, time, code, numeric_value, text_value).
    """

    name: str
    stays: pd.DataFrame
    measurements_sql: str
    mapping_dataset: str
    events_sql: str
    codes_metadata: pd.DataFrame | None = None
    max_hours: float | None = None
    inputs: dict[str, str] = field(default_factory=dict)
    mapping: pd.DataFrame | None = None  # overrides the catalogue mapping (MEDS datasets with a code map)


SOURCES = ("mimic-iv", "meds", "physionet2012")
