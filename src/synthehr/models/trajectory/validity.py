"""Structural validity of MEDS records, checked on the events themselves (independent of the tokens).

A record (one subject's rows, in file order) is valid when:
  * static rows (null time) come first; at most one GENDER//x row and at most one MEDS_BIRTH, which
    precedes every other timed row;
  * times never decrease;
  * hospital stays alternate HOSPITAL_ADMISSION → HOSPITAL_DISCHARGE and end closed; ICU stays likewise,
    and (when `icu_in_hospital`) lie inside a hospital stay;
  * nothing follows MEDS_DEATH; only MEDS_DEATH follows HOSPITAL_DISCHARGE//DIED; no stay is open at death;
  * numeric values only on codes that take values (when `value_codes` is given);
  * sex-specific codes (ICD structure, see vocab.sex_restriction) only for that sex.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from synthehr.models.trajectory.vocab import (BIRTH_CODE, DEATH_CODE, HOSP_DIED_CODE, Cat, code_category,
                                              sex_restriction)


def check_records(events, value_codes: set[str] | None = None, icu_in_hospital: bool = True) -> pl.DataFrame:
    """One row per subject: subject_id, valid, reason (first problem found, '' when valid)."""
    from synthehr.models.trajectory.tokenizer import normalize_events

    ev = normalize_events(events).with_row_index("row")
    problems: dict[int, str] = {}

    def flag(df: pl.DataFrame, reason: str) -> None:
        for s in df["subject_id"].unique().to_list():
            problems.setdefault(int(s), reason)

    ev = ev.with_columns(pl.col("time").is_not_null().cum_sum().over("subject_id").alias("_timed_before"))
    flag(ev.filter(pl.col("time").is_null() & (pl.col("_timed_before") > 0)), "static row after timed rows")
    flag(ev.filter(pl.col("code").str.starts_with("GENDER//")).group_by("subject_id").len().filter(pl.col("len") > 1),
         "more than one sex row")
    births = ev.filter(pl.col("code") == BIRTH_CODE)
    flag(births.group_by("subject_id").len().filter(pl.col("len") > 1), "more than one MEDS_BIRTH")
    first_other = ev.filter(pl.col("time").is_not_null() & (pl.col("code") != BIRTH_CODE)) \
        .group_by("subject_id").agg(pl.col("time").min().alias("t"))
    flag(births.join(first_other, on="subject_id").filter(pl.col("time") > pl.col("t")), "MEDS_BIRTH after events")
    timed = ev.filter(pl.col("time").is_not_null())
    flag(timed.filter(pl.col("time") < pl.col("time").shift(1).over("subject_id")), "time goes backwards")
    if value_codes is not None:
        flag(ev.filter(pl.col("numeric_value").is_not_null() & ~pl.col("code").is_in(sorted(value_codes))),
             "numeric value on a code that takes none")
    sex = ev.filter(pl.col("code").str.starts_with("GENDER//")).group_by("subject_id") \
        .agg(pl.col("code").first().str.slice(8).alias("sex"))
    codes = ev.select("code").unique()
    rules = codes.with_columns(pl.Series("rule", [sex_restriction(c) for c in codes["code"].to_list()], dtype=pl.Int8))
    sx = ev.join(rules.filter(pl.col("rule") > 0), on="code").join(sex, on="subject_id", how="left")
    flag(sx.filter(((pl.col("rule") == 1) & (pl.col("sex") != "F").fill_null(True))
                   | ((pl.col("rule") == 2) & (pl.col("sex") != "M").fill_null(True))), "sex-specific code of the other sex")

    # stays and death: walk the structural rows (and the row after a death) of each subject
    cats = codes.with_columns(pl.Series("cat", [int(code_category(c)) for c in codes["code"].to_list()], dtype=pl.Int8))
    ev = ev.join(cats, on="code", how="left").sort("row")
    died_at = ev.filter(pl.col("code").is_in([DEATH_CODE, HOSP_DIED_CODE])).group_by("subject_id") \
        .agg(pl.col("row").min().alias("_died"))
    ev = ev.join(died_at, on="subject_id", how="left").sort("row")
    after = ev.filter(pl.col("_died").is_not_null() & (pl.col("row") > pl.col("_died")))
    first_death = ev.filter(pl.col("code") == DEATH_CODE).group_by("subject_id").agg(pl.col("row").min().alias("_d"))
    after = after.join(first_death, on="subject_id", how="left")
    flag(after.filter((pl.col("code") != DEATH_CODE) | (pl.col("row") > pl.col("_d"))), "event after death")
    st = ev.filter(pl.col("cat") >= int(Cat.HOSP_OPEN)).select("subject_id", "cat")
    sids = st["subject_id"].to_list()
    cs = st["cat"].to_list()
    state: dict[int, list[int]] = {}
    for s, c in zip(sids, cs):
        if s in problems:
            continue
        h, i = state.get(s, [0, 0])
        bad = None
        if c == Cat.HOSP_OPEN:
            bad = "admission while admitted" if h else None
            h = 1
        elif c in (Cat.HOSP_CLOSE, Cat.HOSP_DIED):
            bad = "discharge without admission" if not h else (
                "hospital discharge with the ICU stay open" if i and (icu_in_hospital or c == Cat.HOSP_DIED) else None)
            h = 0
        elif c == Cat.ICU_OPEN:
            bad = "ICU admission while in ICU" if i else ("ICU admission outside a hospital stay"
                                                          if icu_in_hospital and not h else None)
            i = 1
        elif c == Cat.ICU_CLOSE:
            bad = "ICU discharge without ICU admission" if not i else None
            i = 0
        elif c == Cat.DEATH:
            bad = "death with a stay open" if (h or i) else None
        if bad:
            problems[int(s)] = bad
        state[s] = [h, i]
    for s, (h, i) in state.items():
        if (h or i) and int(s) not in problems:
            problems[int(s)] = "stay not closed at the end of the record"
    subjects = ev["subject_id"].unique(maintain_order=True).to_list()
    return pl.DataFrame({"subject_id": np.asarray(subjects, np.int64),
                         "valid": [int(s) not in problems for s in subjects],
                         "reason": [problems.get(int(s), "") for s in subjects]})


def validity_rate(events, **kw) -> float:
    r = check_records(events, **kw)
    return float(r["valid"].mean()) if r.height else float("nan")
