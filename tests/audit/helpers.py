"""Tiny hand-made MEDS tables for the audit's golden examples."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

T0 = datetime(2150, 1, 1, 8, 0)


def ev(subject: int, code: str, time: datetime | None = None, value: float | None = None,
       text: str | None = None) -> dict:
    return {"subject_id": subject, "time": time, "code": code, "numeric_value": value, "text_value": text}


def person(subject: int, sex: str = "M", age: float = 50.0, death: datetime | None = None) -> list[dict]:
    """Static sex row, birth `age` years before T0, optional death."""
    rows = [ev(subject, f"GENDER//{sex}"), ev(subject, "MEDS_BIRTH", T0 - timedelta(days=365.25 * age))]
    if death is not None:
        rows.append(ev(subject, "MEDS_DEATH", death))
    return rows


def stay(subject: int, start: datetime = T0, days: float = 5.0) -> list[dict]:
    return [ev(subject, "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", start),
            ev(subject, "HOSPITAL_DISCHARGE//HOME", start + timedelta(days=days))]


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"subject_id": pl.Int64, "time": pl.Datetime("us"), "code": pl.Utf8,
                                      "numeric_value": pl.Float64, "text_value": pl.Utf8})


def hours(h: float) -> timedelta:
    return timedelta(hours=h)


def write_meds(df: pl.DataFrame, root, split: str = "train"):
    """Write `df` as a one-shard MEDS dataset (sorted by subject, time) with minimal metadata."""
    from pathlib import Path

    root = Path(root)
    (root / "data" / split).mkdir(parents=True, exist_ok=True)
    df.sort("subject_id", "time", nulls_last=False).write_parquet(root / "data" / split / "0.parquet")
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"subject_id": df["subject_id"].unique().sort(), "split": split}).write_parquet(
        root / "metadata" / "subject_splits.parquet")
    return root


def rule_hits(result, rule_id: str) -> pl.DataFrame:
    return result.findings.filter(pl.col("rule_id") == rule_id)
