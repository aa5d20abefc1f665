"""The audit engine: rules (``ruleset.py``) applied to a MEDS event table, vectorised with Polars.

A record is one subject's full event sequence.  ``audit(events)`` returns per-record findings (rule
id, family, severity, the evidence events) and the share of records with at least one finding per rule
family.  Modes: report (default), repair (``repair=True``: apply the repairs the rules define — drop
offending events, drop duplicate copies, set an equation's target to its implied value — then audit
again) and filter (``filter_severity=...``: drop whole records with a finding at or above a severity,
after any repair).

Every check is one small function registered with ``@check("name")``: it receives the audit context
(the events plus derived tables built once and cached: demographics, ICD code groups, lab features,
medication exposure episodes, admissions) and a rule, and returns findings with the columns
``subject_id, rule_id, time, rows, context_rows, detail, repair_value``.  ``rows`` are the offending
events (what a repair drops or changes), ``context_rows`` the events that make them offending (the
sex, the birth, the death, the other drug).  Row numbers index the audited table (``_row``).

Conventions (documented in ``rules/README.md``): age = (event time - MEDS_BIRTH) / 365.25 days; sex
= the first ``GENDER//<F|M>`` code; an eMAR administration exposes the patient for
``ADMIN_WINDOW_HOURS`` after it, a prescription from its START to the next STOP of the same drug name
(``DEFAULT_ORDER_HOURS`` when it has no STOP); admissions pair the k-th admission with the k-th
discharge of the same kind in time order.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import polars as pl

from synthehr.errors import DataError

ADMIN_WINDOW_HOURS = 24.0
DEFAULT_ORDER_HOURS = 24.0
YEAR_US = 365.25 * 24 * 3600 * 1e6
HOUR_US = 3600 * 1e6
REPAIR_ROUNDS = 3
EVIDENCE_CAP = 20  # evidence strings kept per finding in the findings table (rows keep every event)

CORE = ("subject_id", "time", "code", "numeric_value", "text_value")
FINDING_SCHEMA = {
    "subject_id": pl.Int64, "rule_id": pl.Utf8, "time": pl.Datetime("us"), "rows": pl.List(pl.UInt32),
    "context_rows": pl.List(pl.UInt32), "detail": pl.Utf8, "repair_value": pl.Float64,
}

CheckFn = Callable[["AuditContext", Any], pl.DataFrame]
CHECKS: dict[str, CheckFn] = {}


def check(name: str) -> Callable[[CheckFn], CheckFn]:
    """Register a check function under `name` (the `check` column of rules.csv)."""

    def deco(fn: CheckFn) -> CheckFn:
        CHECKS[name] = fn
        return fn

    return deco


def empty_findings() -> pl.DataFrame:
    return pl.DataFrame(schema=FINDING_SCHEMA)


def _finish(df: pl.DataFrame, rule_id: str) -> pl.DataFrame:
    """Give a check's output the finding schema (missing columns filled, types cast)."""
    cols = []
    for name, dtype in FINDING_SCHEMA.items():
        if name == "rule_id":
            cols.append(pl.lit(rule_id, dtype=pl.Utf8).alias("rule_id"))
        elif name in df.columns:
            cols.append(pl.col(name).cast(dtype))
        elif name == "context_rows":
            cols.append(pl.lit([], dtype=pl.List(pl.UInt32)).alias(name))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    return df.select(cols)


# --------------------------------------------------------------------------------------------- input
def to_events(events: Any) -> pl.DataFrame:
    """A Polars event table with the MEDS core columns typed, extra columns kept, and a `_row` index."""
    if isinstance(events, (str, Path)):
        events = read_meds(events)
    if isinstance(events, pd.DataFrame):
        events = pl.from_pandas(events)
    if not isinstance(events, pl.DataFrame):
        raise DataError(f"expected a MEDS folder, a Polars or a pandas DataFrame, got {type(events).__name__}")
    missing = [c for c in ("subject_id", "time", "code") if c not in events.columns]
    if missing:
        raise DataError(f"event table lacks MEDS column(s) {missing}", column=missing[0])
    casts = [pl.col("subject_id").cast(pl.Int64), pl.col("time").cast(pl.Datetime("us")),
             pl.col("code").cast(pl.Utf8)]
    casts.append(pl.col("numeric_value").cast(pl.Float64) if "numeric_value" in events.columns
                 else pl.lit(None, dtype=pl.Float64).alias("numeric_value"))
    casts.append(pl.col("text_value").cast(pl.Utf8) if "text_value" in events.columns
                 else pl.lit(None, dtype=pl.Utf8).alias("text_value"))
    out = events.with_columns(casts)
    if "_row" in out.columns:
        out = out.drop("_row")
    return out.with_row_index("_row")


def read_meds(root: str | Path) -> pl.DataFrame:
    """All shards of a MEDS dataset (data/**/*.parquet) in one table, with `_shard` (relative path)."""
    from synthehr.data.meds_io import meds_data_files

    root = Path(root)
    files = meds_data_files(root)
    frames = []
    for f in files:
        df = pl.read_parquet(f)
        frames.append(df.with_columns(pl.lit(str(f.relative_to(root / "data")), dtype=pl.Utf8).alias("_shard")))
    return pl.concat(frames, how="diagonal_relaxed")


# --------------------------------------------------------------------------------------------- context
@dataclass
class AuditContext:
    """Events plus the derived tables the checks share, each built once on first use."""

    ev: pl.DataFrame
    rules: Any  # RuleSet
    catalogue: Any = None
    _cache: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # one hashing pass over the code strings: every later join and filter on codes uses this u32 id
        # (only the core columns: eager filters and group-bys would otherwise carry every extra column)
        cols = ["_row", *CORE]
        self.ev = self.ev.select(cols + (["cid"] if "cid" in self.ev.columns else []))
        if "cid" not in self.ev.columns:
            self.ev = self.ev.with_columns(cid=pl.col("code").cast(pl.Categorical).to_physical())

    @cached_property
    def timed(self) -> pl.DataFrame:
        """The event columns the checks use (static rows included: joins and filters drop null times)."""
        return self.ev.select("_row", "subject_id", "time", "cid", "code", "numeric_value", "text_value")

    def cids(self, expr: pl.Expr) -> pl.Series:
        """Code ids of the codes matching `expr` (an expression over the code table's columns)."""
        return self.codes.filter(expr)["cid"]

    @cached_property
    def codes(self) -> pl.DataFrame:
        """Unique codes with their `//` parts (most code attributes are computed on these, not on events)."""
        first = self.ev.select(pl.col("cid").arg_unique())["cid"]
        c = self.ev.select("cid", "code")[first].filter(pl.col("code").is_not_null())
        return c.with_columns(parts=pl.col("code").str.split("//")).with_columns(
            p0=pl.col("parts").list.get(0, null_on_oob=True), p1=pl.col("parts").list.get(1, null_on_oob=True),
            p2=pl.col("parts").list.get(2, null_on_oob=True), p3=pl.col("parts").list.get(3, null_on_oob=True))

    @cached_property
    def demographics(self) -> pl.DataFrame:
        """Per subject: sex (F/M), birth and death times and the rows that state them."""
        ev = self.ev
        sex = (ev.filter(pl.col("cid").is_in(self.cids(pl.col("code").str.starts_with("GENDER//")).implode()))
               .group_by("subject_id").agg(pl.col("code").first().str.slice(8).str.to_uppercase().str.slice(0, 1)
                                           .alias("sex"), pl.col("_row").first().alias("sex_row")))
        birth = (ev.filter(pl.col("cid").is_in(self.cids(pl.col("code") == "MEDS_BIRTH").implode())).group_by("subject_id")
                 .agg(pl.col("time").min().alias("birth"), pl.col("_row").first().alias("birth_row")))
        death = (ev.filter(pl.col("cid").is_in(self.cids(pl.col("code") == "MEDS_DEATH").implode())).group_by("subject_id")
                 .agg(pl.col("time").min().alias("death"), pl.col("_row").first().alias("death_row")))
        subj = ev.group_by("subject_id").agg(t_min=pl.col("time").min(), t_max=pl.col("time").max())
        return subj.join(sex, on="subject_id", how="left").join(birth, on="subject_id", how="left") \
                   .join(death, on="subject_id", how="left")

    # ------------------------------------------------------------------ ICD code groups
    @cached_property
    def icd_groups(self) -> pl.DataFrame:
        """(code, code_group) for every ICD diagnosis/procedure code in the data that falls in a group."""
        c = self.codes.filter(pl.col("p0").is_in(["DIAGNOSIS", "PROCEDURE"]) & (pl.col("p1") == "ICD")) \
                      .with_columns(kind=pl.when(pl.col("p0") == "DIAGNOSIS").then(pl.lit("diagnosis"))
                                    .otherwise(pl.lit("procedure")),
                                    icd=pl.col("p3").str.replace_all(".", "", literal=True).str.to_uppercase())
        out = []
        for r in self.rules.icd_ranges.itertuples(index=False):
            n = len(r.start)
            head = pl.col("icd").str.slice(0, n)
            m = c.filter((pl.col("kind") == r.kind) & (pl.col("p2") == r.icd_version)
                         & (head >= r.start) & (head <= r.end))
            out.append(m.select("cid", pl.lit(r.code_group).alias("code_group")))
        if not out:
            return pl.DataFrame(schema={"cid": pl.UInt32, "code_group": pl.Utf8})
        return pl.concat(out).unique()

    @cached_property
    def icd_events(self) -> pl.DataFrame:
        """Events carrying a grouped ICD code: _row, subject_id, time, code, code_group."""
        return self.ev.select("_row", "subject_id", "time", "cid", "code").join(self.icd_groups, on="cid",
                                                                             how="inner")

    # ------------------------------------------------------------------ labs
    def lab_map(self, dataset: str) -> pl.DataFrame:
        """code → feature, multiplier, offset, lo, hi for the LAB codes of the data (continuous features)."""
        key = ("lab_map", dataset)
        if key not in self._cache:
            cat = self.catalogue
            if cat is None:
                from synthehr.data.catalogue import FeatureCatalogue

                cat = self.catalogue = FeatureCatalogue.load()
            m = cat.mapping(dataset)
            kinds = {f.name: f.kind for f in cat.features}
            m = m[(m["feature"].map(kinds) == "continuous") & (m["multiplier"] != 0)]
            mp = pl.from_pandas(m[["code", "feature", "multiplier", "offset", "lo", "hi"]].astype(
                {"code": str, "multiplier": float, "offset": float, "lo": float, "hi": float}))
            c = self.codes
            if dataset == "mimic-iv":
                c = c.filter(pl.col("p0") == "LAB").with_columns(key=pl.col("p1"))
            else:  # a MEDS code maps by its first two parts (LAB//220045//bpm → LAB//220045)
                c = c.with_columns(key=pl.concat_str([pl.col("p0"), pl.col("p1")], separator="//"))
            self._cache[key] = c.select("cid", "code", "key").join(mp.rename({"code": "key"}), on="key", how="inner") \
                                .drop("key")
        return self._cache[key]

    def lab_values(self, dataset: str, features: list[str] | None = None) -> pl.DataFrame:
        """Numeric lab events mapped to catalogue features, value converted to catalogue units (`value`)."""
        key = ("lab_values", dataset)
        if key not in self._cache:
            m = self.lab_map(dataset)
            self._cache[key] = self.timed.join(m.drop("code"), on="cid", how="inner") \
                .filter(pl.col("numeric_value").is_not_null() & pl.col("time").is_not_null()) \
                .with_columns(value=pl.col("numeric_value") * pl.col("multiplier") + pl.col("offset"))
        v = self._cache[key]
        return v if features is None else v.filter(pl.col("feature").is_in(features))

    # ------------------------------------------------------------------ encounters
    def encounters(self, kind: str) -> pl.DataFrame:
        """k-th admission paired with the k-th discharge (time order) per subject, full outer pairing.

        Columns: subject_id, k, adm_time, adm_row, dis_time, dis_row (nulls where one side is missing).
        """
        key = ("enc", kind)
        if key not in self._cache:
            a_code, d_code = f"{kind}_ADMISSION", f"{kind}_DISCHARGE"
            a_ids = self.cids((pl.col("code") == a_code) | pl.col("code").str.starts_with(a_code + "//"))
            d_ids = self.cids((pl.col("code") == d_code) | pl.col("code").str.starts_with(d_code + "//"))
            t = self.timed.select("_row", "subject_id", "time", "cid").filter(
                pl.col("cid").is_in(pl.concat([a_ids, d_ids]).implode()) & pl.col("time").is_not_null())
            adm = t.filter(pl.col("cid").is_in(a_ids.implode())) \
                   .sort("subject_id", "time", "_row") \
                   .with_columns(k=pl.int_range(pl.len()).over("subject_id")) \
                   .select("subject_id", "k", adm_time="time", adm_row="_row")
            dis = t.filter(pl.col("cid").is_in(d_ids.implode())) \
                   .sort("subject_id", "time", "_row") \
                   .with_columns(k=pl.int_range(pl.len()).over("subject_id")) \
                   .select("subject_id", "k", dis_time="time", dis_row="_row")
            self._cache[key] = adm.join(dis, on=["subject_id", "k"], how="full", coalesce=True) \
                                  .sort("subject_id", "k")
        return self._cache[key]

    def admissions(self) -> pl.DataFrame:
        """Well-formed hospital stays: subject_id, adm_id, start, end (discharge at or after admission)."""
        e = self.encounters("HOSPITAL")
        return e.filter(pl.col("adm_time").is_not_null() & pl.col("dis_time").is_not_null()
                        & (pl.col("dis_time") >= pl.col("adm_time"))) \
                .select("subject_id", adm_id="k", start="adm_time", end="dis_time")

    # ------------------------------------------------------------------ medications
    @cached_property
    def drug_codes(self) -> pl.DataFrame:
        """Medication codes → (name, action, given, generic, topical), one row per generic."""
        from synthehr.audit.drugs import normalise_cached, parse_medication_code

        c = self.codes.filter(pl.col("p0") == "MEDICATION").select("cid", "code")
        rows = []
        given = self.rules.given_statuses
        for cid, code in c.iter_rows():
            name, action, status = parse_medication_code(code)
            if not name:
                continue
            generics, topical = normalise_cached(name, self.rules.drugs)
            ok = action != "admin" or (status or "") in given
            for g in generics:
                rows.append((cid, code, name, action, ok, g, topical))
        return pl.DataFrame(rows, schema={"cid": pl.UInt32, "code": pl.Utf8, "name": pl.Utf8, "action": pl.Utf8, "given": pl.Boolean,
                                          "generic": pl.Utf8, "topical": pl.Boolean}, orient="row")

    @cached_property
    def exposures(self) -> pl.DataFrame:
        """Exposure episodes of the generics the drug rules name.

        Columns: subject_id, generic, topical, start, end, rows (the medication events of the episode).
        """
        wanted = set()
        for r in self.rules.interactions.itertuples(index=False):
            wanted |= self.rules.classes[r.class_a] | self.rules.classes[r.class_b]
        for r in self.rules.conditions.itertuples(index=False):
            wanted |= self.rules.classes[r.drug_class]
        dc = self.drug_codes.filter(pl.col("generic").is_in(sorted(wanted)))
        schema = {"subject_id": pl.Int64, "generic": pl.Utf8, "topical": pl.Boolean, "start": pl.Datetime("us"),
                  "end": pl.Datetime("us"), "rows": pl.List(pl.UInt32)}
        if dc.is_empty():
            return pl.DataFrame(schema=schema)
        ev = self.timed.select("_row", "subject_id", "time", "cid").join(dc, on="cid", how="inner") \
                 .filter(pl.col("time").is_not_null())
        win = pl.duration(microseconds=int(ADMIN_WINDOW_HOURS * HOUR_US))
        admin = ev.filter((pl.col("action") == "admin") & pl.col("given")) \
                  .select("subject_id", "generic", "topical", "_row", start="time", end=pl.col("time") + win)
        starts = ev.filter(pl.col("action") == "start").sort("time")
        stops = self.timed.select("subject_id", "time", "cid").join(
            self.drug_codes.filter(pl.col("action") == "stop").select("cid", "name").unique(), on="cid") \
            .select("subject_id", "name", stop="time").sort("stop")
        if starts.height:
            paired = starts.join_asof(stops, left_on="time", right_on="stop", by=["subject_id", "name"], check_sortedness=False,
                                      strategy="forward")
            dflt = pl.duration(microseconds=int(DEFAULT_ORDER_HOURS * HOUR_US))
            orders = paired.select("subject_id", "generic", "topical", "_row", start="time",
                                   end=pl.coalesce(pl.col("stop"), pl.col("time") + dflt))
            spans = pl.concat([admin, orders])
        else:
            spans = admin
        spans = spans.sort("subject_id", "generic", "topical", "start")
        grp = ["subject_id", "generic", "topical"]
        spans = spans.with_columns(
            prev_end=pl.col("end").cum_max().shift(1).over(grp)).with_columns(
            new=(pl.col("prev_end").is_null() | (pl.col("start") > pl.col("prev_end"))).cast(pl.Int32)) \
            .with_columns(ep=pl.col("new").cum_sum().over(grp))
        return spans.group_by(grp + ["ep"]).agg(pl.col("start").min(), pl.col("end").max(),
                                                 pl.col("_row").alias("rows")).drop("ep")

    def class_exposures(self, drug_class: str, include_topical: bool = False) -> pl.DataFrame:
        members = sorted(self.rules.classes[drug_class])
        e = self.exposures.filter(pl.col("generic").is_in(members))
        return e if include_topical else e.filter(~pl.col("topical"))


# --------------------------------------------------------------------------------------------- checks
def _per_subject(df: pl.DataFrame, detail: pl.Expr, context: pl.Expr | None = None) -> pl.DataFrame:
    agg = [pl.col("_row").alias("rows"), pl.col("time").min().alias("time"), detail.alias("detail")]
    if context is not None:
        agg.append(context.alias("context_rows"))
    return df.group_by("subject_id").agg(agg)


@check("events_after_death")
def events_after_death(ctx: AuditContext, rule) -> pl.DataFrame:
    grace = pl.duration(microseconds=int(float(rule.params.get("grace_hours", 24)) * HOUR_US))
    d = ctx.demographics.filter(pl.col("death").is_not_null() & (pl.col("t_max") > pl.col("death") + grace)) \
                        .select("subject_id", "death", "death_row")
    if d.is_empty():
        return empty_findings()
    e = ctx.timed.select("_row", "subject_id", "time").join(d, on="subject_id", how="inner") \
                 .filter(pl.col("time") > pl.col("death") + grace)
    hours = ((pl.col("time").max() - pl.col("death").first()).dt.total_minutes() / 60).round(1)
    return _per_subject(e, pl.format("{} event(s) up to {} h after death", pl.len(), hours),
                        pl.col("death_row").first().cast(pl.UInt32).implode())


@check("event_before_birth")
def event_before_birth(ctx: AuditContext, rule) -> pl.DataFrame:
    b = ctx.demographics.filter(pl.col("birth").is_not_null() & (pl.col("t_min") < pl.col("birth"))) \
                        .select("subject_id", "birth", "birth_row")
    if b.is_empty():
        return empty_findings()
    e = ctx.timed.select("_row", "subject_id", "time").join(b, on="subject_id", how="inner") \
                 .filter(pl.col("time") < pl.col("birth"))
    return _per_subject(e, pl.format("{} event(s) before birth", pl.len()),
                        pl.col("birth_row").first().cast(pl.UInt32).implode())


@check("age_above")
def age_above(ctx: AuditContext, rule) -> pl.DataFrame:
    max_age = float(rule.params.get("max_age", 124))
    limit = pl.duration(microseconds=int(max_age * YEAR_US))
    b = ctx.demographics.filter(pl.col("birth").is_not_null() & (pl.col("t_max") > pl.col("birth") + limit)) \
                        .select("subject_id", "birth", "birth_row")
    if b.is_empty():
        return empty_findings()
    e = ctx.timed.select("_row", "subject_id", "time").join(b, on="subject_id", how="inner") \
                 .with_columns(age=(pl.col("time") - pl.col("birth")).dt.total_microseconds() / YEAR_US) \
                 .filter(pl.col("age") > max_age)
    return _per_subject(e, pl.format("{} event(s) at age above {} (max {})", pl.len(), pl.lit(max_age),
                                     pl.col("age").max().round(1)),
                        pl.col("birth_row").first().cast(pl.UInt32).implode())


def _code_rule_frame(ctx: AuditContext, rule) -> pl.DataFrame:
    row = ctx.rules.code_rules.set_index("rule_id").loc[rule.rule_id]
    ev = ctx.icd_events.filter(pl.col("code_group") == row["code_group"])
    return ev, row


@check("code_group_sex")
def code_group_sex(ctx: AuditContext, rule) -> pl.DataFrame:
    ev, row = _code_rule_frame(ctx, rule)
    d = ctx.demographics.filter(pl.col("sex") == row["sex"]).select("subject_id", "sex", "sex_row")
    e = ev.join(d, on="subject_id", how="inner")
    return e.select("subject_id", "time", rows=pl.concat_list(pl.col("_row")),
                    context_rows=pl.concat_list(pl.col("sex_row")),
                    detail=pl.format("{} in a record with sex {}", pl.col("code"), pl.col("sex")))


@check("code_group_age")
def code_group_age(ctx: AuditContext, rule) -> pl.DataFrame:
    ev, row = _code_rule_frame(ctx, rule)
    lo = float(row["allowed_min_age"]) if row["allowed_min_age"] else -np.inf
    hi = float(row["allowed_max_age"]) if row["allowed_max_age"] else np.inf
    b = ctx.demographics.filter(pl.col("birth").is_not_null()).select("subject_id", "birth", "birth_row")
    e = ev.filter(pl.col("time").is_not_null()).join(b, on="subject_id", how="inner") \
          .with_columns(age=(pl.col("time") - pl.col("birth")).dt.total_microseconds() / YEAR_US) \
          .filter((pl.col("age") < lo) | (pl.col("age") >= hi))
    return e.select("subject_id", "time", rows=pl.concat_list(pl.col("_row")),
                    context_rows=pl.concat_list(pl.col("birth_row")),
                    detail=pl.format("{} at age {} (allowed {}-{})", pl.col("code"), pl.col("age").round(1),
                                     pl.lit(row["allowed_min_age"] or "-"), pl.lit(row["allowed_max_age"] or "-")))


@check("discharge_without_admission")
def discharge_without_admission(ctx: AuditContext, rule) -> pl.DataFrame:
    kind = rule.params.get("kind", "HOSPITAL")
    e = ctx.encounters(kind).filter(pl.col("dis_row").is_not_null() & (
        pl.col("adm_time").is_null() | (pl.col("dis_time") < pl.col("adm_time"))))
    return e.select("subject_id", time="dis_time", rows=pl.concat_list("dis_row"),
                    context_rows=pl.when(pl.col("adm_row").is_null()).then(pl.lit([], dtype=pl.List(pl.UInt32)))
                    .otherwise(pl.concat_list("adm_row")),
                    detail=pl.when(pl.col("adm_time").is_null())
                    .then(pl.format("{} discharge #{} has no admission", pl.lit(kind), pl.col("k") + 1))
                    .otherwise(pl.format("{} discharge {} before its admission {}", pl.lit(kind),
                                         pl.col("dis_time"), pl.col("adm_time"))))


@check("overlapping_admissions")
def overlapping_admissions(ctx: AuditContext, rule) -> pl.DataFrame:
    kind = rule.params.get("kind", "HOSPITAL")
    e = ctx.encounters(kind).with_columns(prev_dis=pl.col("dis_time").shift(1).over("subject_id"),
                                          prev_row=pl.col("dis_row").shift(1).over("subject_id"))
    e = e.filter(pl.col("adm_time").is_not_null() & pl.col("prev_dis").is_not_null()
                 & (pl.col("adm_time") < pl.col("prev_dis")))
    return e.select("subject_id", time="adm_time", rows=pl.concat_list("adm_row"),
                    context_rows=pl.concat_list("prev_row"),
                    detail=pl.format("{} admission {} before the previous discharge {}", pl.lit(kind),
                                     pl.col("adm_time"), pl.col("prev_dis")))


@check("admission_without_discharge")
def admission_without_discharge(ctx: AuditContext, rule) -> pl.DataFrame:
    kind = rule.params.get("kind", "HOSPITAL")
    e = ctx.encounters(kind).filter(pl.col("adm_row").is_not_null() & pl.col("dis_row").is_null())
    return e.select("subject_id", time="adm_time", rows=pl.concat_list("adm_row"),
                    detail=pl.format("{} admission {} is never discharged", pl.lit(kind), pl.col("adm_time")))


@check("impossible_values")
def impossible_values(ctx: AuditContext, rule) -> pl.DataFrame:
    v = ctx.lab_values(rule.params.get("dataset", "mimic-iv"))
    e = v.filter((pl.col("value") < pl.col("lo")) | (pl.col("value") > pl.col("hi")))
    return e.select("subject_id", "time", rows=pl.concat_list(pl.col("_row")),
                    detail=pl.format("{} = {} outside [{}, {}] ({})", pl.col("feature"), pl.col("value").round(3),
                                     pl.col("lo"), pl.col("hi"), pl.col("code")))


@check("equation_residual")
def equation_residual(ctx: AuditContext, rule) -> pl.DataFrame:
    from synthehr.constraints.equations import EQUATIONS

    eq = EQUATIONS[rule.params["equation"]]
    tol = float(rule.params.get("tolerance", 0.1))
    v = ctx.lab_values(rule.params.get("dataset", "mimic-iv"), list(eq.features))
    if v.is_empty():
        return empty_findings()
    g = v.group_by("subject_id", "time", "feature").agg(pl.col("value").mean(), pl.col("_row"))
    wide = g.pivot("feature", index=["subject_id", "time"], values=["value", "_row"])
    need = [f"value_{f}" for f in eq.features] if f"value_{eq.target}" in wide.columns else list(eq.features)
    if not all(c in wide.columns for c in need):
        return empty_findings()
    wide = wide.drop_nulls(need)
    if wide.is_empty():
        return empty_findings()
    table = {f: wide[f"value_{f}"].to_numpy() for f in eq.features}
    implied = np.asarray(eq.predict(table), dtype=float)
    resid = table[eq.target] - implied
    wide = wide.with_columns(pl.Series("implied", implied), pl.Series("resid", resid)) \
               .filter(pl.col("resid").abs() > tol)
    inputs = [f"_row_{f}" for f in eq.inputs]
    return wide.select("subject_id", "time", rows=pl.col(f"_row_{eq.target}"),
                       context_rows=pl.concat_list(inputs), repair_value=pl.col("implied"),
                       detail=pl.format("{}: {} = {} but the equation gives {} (tolerance {})", pl.lit(eq.name),
                                        pl.lit(eq.target), pl.col(f"value_{eq.target}").round(3),
                                        pl.col("implied").round(3), pl.lit(tol)))


@check("duplicate_events")
def duplicate_events(ctx: AuditContext, rule) -> pl.DataFrame:
    excl = rule.params.get("exclude")
    ev = ctx.ev.select("_row", "subject_id", "time", "cid", "numeric_value", "text_value")
    # hash rows first (cheap, on the code id), then exact grouping of the few candidate rows
    e = ev.filter(ev.select("subject_id", "time", "cid").hash_rows(seed=0).is_duplicated())
    if excl and e.height:
        e = e.filter(~pl.col("cid").is_in(ctx.cids(pl.col("code").str.contains(excl)).implode()))
    keys = ["subject_id", "time", "cid", "numeric_value", "text_value"]
    e = e.filter(e.select(keys).hash_rows(seed=0).is_duplicated())
    if e.is_empty():
        return empty_findings()
    g = e.group_by(keys).agg(pl.col("_row").sort()).filter(pl.col("_row").list.len() > 1)
    if g.is_empty():
        return empty_findings()
    g = g.join(ctx.codes.select("cid", "code"), on="cid", how="left")
    return g.select("subject_id", "time", rows=pl.col("_row").list.slice(1),
                    context_rows=pl.col("_row").list.slice(0, 1),
                    detail=pl.format("{} recorded {} times", pl.col("code"), pl.col("_row").list.len()))


@check("drug_drug")
def drug_drug(ctx: AuditContext, rule) -> pl.DataFrame:
    row = ctx.rules.interactions.set_index("rule_id").loc[rule.rule_id]
    a = ctx.class_exposures(row["class_a"]).select("subject_id", ga="generic", sa="start", ea="end", ra="rows")
    b = ctx.class_exposures(row["class_b"]).select("subject_id", gb="generic", sb="start", eb="end", rb="rows")
    if a.is_empty() or b.is_empty():
        return empty_findings()
    j = a.join(b, on="subject_id", how="inner").filter(
        (pl.col("ga") != pl.col("gb")) & (pl.col("sa") <= pl.col("eb")) & (pl.col("sb") <= pl.col("ea")))
    if j.is_empty():
        return empty_findings()
    j = j.group_by("subject_id", "ga", "gb").agg(
        time=pl.max_horizontal("sa", "sb").min(), rows=pl.concat_list("ra", "rb").list.explode(keep_nulls=False, empty_as_null=False).unique().sort(),
        n=pl.len())
    return j.select("subject_id", "time", "rows",
                    detail=pl.format("{} with {} (overlapping exposure, {} episode pair(s))", pl.col("ga"),
                                     pl.col("gb"), pl.col("n")))


@check("drug_condition")
def drug_condition(ctx: AuditContext, rule) -> pl.DataFrame:
    row = ctx.rules.conditions.set_index("rule_id").loc[rule.rule_id]
    x = ctx.class_exposures(row["drug_class"], row["include_topical"] == "1") \
           .select("subject_id", "generic", "start", "end", "rows")
    dx = ctx.icd_events.filter(pl.col("code_group") == row["code_group"]) \
            .select("subject_id", dx_time="time", dx_row="_row", dx_code="code")
    if x.is_empty() or dx.is_empty():
        return empty_findings()
    if row["scope"] == "admission":
        adm = ctx.admissions()
        xa = x.join(adm, on="subject_id").filter((pl.col("start") <= pl.col("end_right"))
                                                 & (pl.col("end") >= pl.col("start_right")))
        da = dx.join(adm, on="subject_id").filter((pl.col("dx_time") >= pl.col("start"))
                                                  & (pl.col("dx_time") <= pl.col("end")))
        j = xa.select("subject_id", "adm_id", "generic", "start", "rows").join(
            da.select("subject_id", "adm_id", "dx_row", "dx_code"), on=["subject_id", "adm_id"])
    else:
        j = x.select("subject_id", "generic", "start", "rows").join(dx, on="subject_id")
    if j.is_empty():
        return empty_findings()
    j = j.group_by("subject_id", "generic").agg(
        time=pl.col("start").min(), rows=pl.col("rows").list.explode(keep_nulls=False, empty_as_null=False).unique().sort(),
        context_rows=pl.col("dx_row").unique().sort().cast(pl.UInt32), dx=pl.col("dx_code").first())
    return j.select("subject_id", "time", "rows", "context_rows",
                    detail=pl.format("{} with {} ({})", pl.col("generic"), pl.lit(row["code_group"]), pl.col("dx")))


# --------------------------------------------------------------------------------------------- engine
@dataclass
class AuditResult:
    """Findings on the input, per-record flags and rates; plus the audited data when repairing/filtering."""

    findings: pl.DataFrame            # one row per finding (see FINDING_SCHEMA + family, severity, level)
    records: pl.DataFrame             # subject_id, one boolean column per family, max_level
    rates: dict[str, float]           # family → share of records with >= 1 finding ("any" included)
    n_records: int
    n_events: int
    seconds: float
    rule_table: pd.DataFrame
    events: pl.DataFrame | None = None          # audited events (repaired and/or filtered), when asked
    findings_after: pl.DataFrame | None = None  # findings on the repaired data (before filtering)
    rates_after: dict[str, float] | None = None  # rates on the audited (kept) records
    kept_subjects: list[int] | None = None
    repairs: dict[str, int] = field(default_factory=dict)  # rule id → events dropped or changed
    meta: dict = field(default_factory=dict)

    @property
    def records_per_second(self) -> float:
        return self.n_records / self.seconds if self.seconds > 0 else float("nan")


def run_checks(events: pl.DataFrame, rules, catalogue=None) -> pl.DataFrame:
    """Every rule on `events` (a table from to_events); findings with family, severity and level."""
    ctx = AuditContext(events, rules, catalogue)
    out = []
    for rule in rules.rules.values():
        fn = CHECKS[rule.check]
        res = fn(ctx, rule)
        if res is not None and res.height:
            out.append(_finish(res, rule.rule_id))
    f = pl.concat(out) if out else empty_findings()
    meta = pl.DataFrame({"rule_id": list(rules.rules), "family": [r.family for r in rules.rules.values()],
                         "severity": [r.severity for r in rules.rules.values()],
                         "level": [r.level for r in rules.rules.values()]},
                        schema={"rule_id": pl.Utf8, "family": pl.Utf8, "severity": pl.Utf8, "level": pl.Int8})
    return f.join(meta, on="rule_id", how="left").sort("subject_id", "rule_id", "time", nulls_last=True)


def record_flags(findings: pl.DataFrame, subjects: pl.Series, families) -> pl.DataFrame:
    """One row per subject: a boolean per family (>= 1 finding) and the highest severity level (-1: none)."""
    base = pl.DataFrame({"subject_id": subjects.unique().sort()})
    if findings.is_empty():
        flags = base.with_columns([pl.lit(False).alias(f) for f in families] + [pl.lit(-1, dtype=pl.Int8)
                                                                                 .alias("max_level")])
        return flags
    agg = findings.group_by("subject_id").agg(
        [(pl.col("family") == f).any().alias(f) for f in families] + [pl.col("level").max().alias("max_level")])
    return base.join(agg, on="subject_id", how="left").with_columns(
        [pl.col(f).fill_null(False) for f in families] + [pl.col("max_level").fill_null(-1).cast(pl.Int8)])


def family_rates(flags: pl.DataFrame, families) -> dict[str, float]:
    n = flags.height
    out = {f: float(flags[f].sum() / n) if n else float("nan") for f in families}
    out["any"] = float((flags["max_level"] >= 0).sum() / n) if n else float("nan")
    return out


def apply_repairs(events: pl.DataFrame, findings: pl.DataFrame, rules, catalogue=None
                  ) -> tuple[pl.DataFrame, dict[str, int]]:
    """The events with every well-defined repair applied; counts of events dropped/changed per rule."""
    repair_of = {rid: r.repair for rid, r in rules.rules.items()}
    f = findings.with_columns(repair=pl.col("rule_id").replace_strict(repair_of, default="none"))
    counts: dict[str, int] = {}
    drop = f.filter(pl.col("repair").is_in(["drop_events", "drop_duplicates"]))
    drop_rows = drop.select(pl.col("rows").explode()).drop_nulls().unique()
    for rid, n in drop.group_by("rule_id").agg(pl.col("rows").list.len().sum()).iter_rows():
        counts[rid] = int(n)
    out = events.join(drop_rows.rename({"rows": "_row"}), on="_row", how="anti") if drop_rows.height else events
    sets = f.filter((pl.col("repair") == "set_target") & pl.col("repair_value").is_not_null())
    if sets.height:
        rows = sets.select("rule_id", "repair_value", "rows").explode("rows").rename({"rows": "_row"}) \
                   .join(drop_rows.rename({"rows": "_row"}), on="_row", how="anti") \
                   .unique("_row", keep="first")
        ctx = AuditContext(events, rules, catalogue)
        lm = pl.concat([ctx.lab_map(rules.rules[r].params.get("dataset", "mimic-iv"))
                        for r in rows["rule_id"].unique().to_list()]).unique("code").drop("cid")
        rows = rows.join(events.select("_row", "code"), on="_row").join(lm.select("code", "multiplier", "offset"),
                                                                        on="code", how="left")
        rows = rows.with_columns(new=(pl.col("repair_value") - pl.col("offset").fill_null(0))
                                 / pl.col("multiplier").fill_null(1))
        for rid, n in rows.group_by("rule_id").len().iter_rows():
            counts[rid] = counts.get(rid, 0) + int(n)
        out = out.join(rows.select("_row", "new"), on="_row", how="left").with_columns(
            numeric_value=pl.coalesce(pl.col("new"), pl.col("numeric_value"))).drop("new")
    return out, counts


def audit(events: Any, rules=None, *, repair: bool = False, filter_severity: str | None = None,
          catalogue=None, families: list[str] | None = None) -> AuditResult:
    """Audit a MEDS event table (Polars/pandas DataFrame or MEDS folder).

    repair: apply the rules' repairs and audit the repaired data again.  filter_severity: drop records
    with a finding at or above this severity (info < warning < error < critical), after any repair.
    families: audit only these rule families.  The returned `events` (when repairing or filtering) keep
    every input column, without `_row`.
    """
    from synthehr.audit.ruleset import FAMILIES, SEVERITY_LEVEL, load_rules

    rules = rules if rules is not None else load_rules()
    if families:
        rules = rules.select(families=families)
    if filter_severity is not None and filter_severity not in SEVERITY_LEVEL:
        raise DataError(f"unknown severity {filter_severity!r}; choose one of {list(SEVERITY_LEVEL)}")
    fams = [f for f in FAMILIES if any(r.family == f for r in rules.rules.values())]
    t0 = _time.perf_counter()
    ev = to_events(events)
    findings = run_checks(ev, rules, catalogue)
    flags = record_flags(findings, ev["subject_id"], fams)
    seconds = _time.perf_counter() - t0
    res = AuditResult(findings=findings, records=flags, rates=family_rates(flags, fams), n_records=flags.height,
                      n_events=ev.height, seconds=seconds, rule_table=rules.table())
    if not repair and filter_severity is None:
        return res
    out, after_findings = ev, findings
    if repair:
        # repairs can interact (setting pH to Henderson-Hasselbalch moves the base-excess equation), so
        # repair and re-audit until nothing repairable is left, at most REPAIR_ROUNDS times
        for _ in range(REPAIR_ROUNDS):
            repaired, counts = apply_repairs(out, after_findings, rules, catalogue)
            if not counts:
                break
            for k, v in counts.items():
                res.repairs[k] = res.repairs.get(k, 0) + v
            out = repaired.drop("_row").with_row_index("_row")
            after_findings = run_checks(out, rules, catalogue)
    after_flags = record_flags(after_findings, out["subject_id"], fams)
    if filter_severity is not None:
        keep = after_flags.filter(pl.col("max_level") < SEVERITY_LEVEL[filter_severity])["subject_id"]
    else:
        keep = after_flags["subject_id"]
    res.kept_subjects = keep.to_list()
    out = out.filter(pl.col("subject_id").is_in(keep.implode()))
    kept_flags = after_flags.filter(pl.col("subject_id").is_in(keep.implode()))
    res.findings_after = after_findings
    res.rates_after = family_rates(kept_flags, fams)
    res.events = out.drop("_row")
    res.meta = {"filter_severity": filter_severity, "repair": repair,
                "records_in": flags.height, "records_kept": kept_flags.height}
    return res


def evidence_table(findings: pl.DataFrame, events: pl.DataFrame, cap: int = EVIDENCE_CAP) -> pl.DataFrame:
    """Findings with readable evidence: `evidence` = up to `cap` "time code [= value]" strings of the
    offending then the context events, and `n_evidence_events` = every event involved."""
    if findings.is_empty():
        return findings.with_columns(evidence=pl.lit([], dtype=pl.List(pl.Utf8)),
                                     n_evidence_events=pl.lit(0, dtype=pl.UInt32))
    ev = to_events(events) if "_row" not in events.columns else events
    f = findings.with_row_index("_finding").with_columns(
        all_rows=pl.concat_list("rows", "context_rows"))
    ex = f.select("_finding", pl.col("all_rows").list.head(cap)).explode("all_rows").drop_nulls()
    txt = ex.join(ev.select("_row", "time", "code", "numeric_value"), left_on="all_rows", right_on="_row",
                  how="left").with_columns(s=pl.format("{} {}{}", pl.col("time").cast(pl.Utf8).fill_null("static"),
                                                        pl.col("code"),
                                                        pl.when(pl.col("numeric_value").is_not_null())
                                                        .then(pl.format(" = {}", pl.col("numeric_value").round(4)))
                                                        .otherwise(pl.lit(""))))
    agg = txt.group_by("_finding", maintain_order=True).agg(evidence=pl.col("s"))
    return f.join(agg, on="_finding", how="left").with_columns(
        n_evidence_events=pl.col("all_rows").list.len().cast(pl.UInt32)).drop("_finding", "all_rows")

