"""Scenario builder: clinician criteria → synthetic records that meet them, a fidelity summary, exports.

Criteria are comparisons joined by AND, written as text ("ph < 7.2 and paco2 > 60; pao2/fio2 < 100")
or as {"feature", "op", "value"} objects. "pao2/fio2" (any spelling of P/F) means the pf_ratio feature
when the model has one; any other "a/b" is the ratio of two features.

Records are drawn from the model and kept when they meet every criterion (rejection sampling), so
they follow the model's own distribution restricted to the criteria. A fixed seed makes a run
repeatable, which is what lets a saved scenario be re-run and its flagged records be left out.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from synthehr.app.workbench import LoadedModel, record_keys

OPS = {"<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
       "==": np.isclose, "=": np.isclose, "!=": lambda a, b: ~np.isclose(a, b)}
RATIO_ALIASES = {("pao2", "fio2"): "pf_ratio"}
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_CRITERION = re.compile(rf"^\s*(?P<a>{_NAME})\s*(?:/\s*(?P<b>{_NAME})\s*)?(?P<op><=|>=|==|!=|<|>|=)\s*"
                        r"(?P<v>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
_SPLIT = re.compile(r"\s*(?:;|,|\n|\band\b|&&?)\s*", re.IGNORECASE)
BATCH = 20000
MAX_DRAWS = 200000
MIN_REAL_FOR_FIDELITY = 5
SEQ_BATCH = 5000


class CriteriaError(ValueError):
    """A criterion cannot be understood; `field` names the offending item (e.g. "criteria[1]")."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


@dataclass(frozen=True)
class Criterion:
    feature: str          # a feature name, or "a/b" for a ratio
    op: str
    value: float

    def text(self) -> str:
        return f"{self.feature} {self.op} {self.value:g}"

    def to_json(self) -> dict:
        return {"feature": self.feature, "op": self.op, "value": self.value}

    def column(self, df: pd.DataFrame) -> np.ndarray:
        if "/" in self.feature:
            a, b = self.feature.split("/")
            num, den = df[a].to_numpy(dtype=float), df[b].to_numpy(dtype=float)
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.where(den != 0, num / den, np.nan)
        return df[self.feature].to_numpy(dtype=float)

    def mask(self, df: pd.DataFrame) -> np.ndarray:
        col = self.column(df)
        with np.errstate(invalid="ignore"):
            return np.asarray(OPS[self.op](col, self.value)) & np.isfinite(col)


def split_criteria_text(text: str) -> list[str]:
    return [p for p in _SPLIT.split(text.strip()) if p]


def parse_criterion(item: Any, names: list[str], field: str) -> Criterion:
    """One criterion from text ("ph < 7.2") or a dict; feature names checked against `names`."""
    if isinstance(item, str):
        m = _CRITERION.match(item)
        if not m:
            raise CriteriaError(field, f"cannot read {item!r}: write FEATURE OP NUMBER, e.g. 'ph < 7.2' "
                                       f"(OP one of {', '.join(k for k in OPS if k != '=')})")
        a, b, op, value = m["a"].lower(), (m["b"] or "").lower(), m["op"], float(m["v"])
    elif isinstance(item, dict):
        feature = str(item.get("feature", "")).strip().lower().replace(" ", "")
        op = str(item.get("op", ""))
        a, _, b = feature.partition("/")
        try:
            value = float(item.get("value"))
        except (TypeError, ValueError):
            raise CriteriaError(field + ".value", f"value must be a number, got {item.get('value')!r}") from None
        if op not in OPS:
            raise CriteriaError(field + ".op", f"op must be one of {sorted(OPS)}, got {op!r}")
    else:
        raise CriteriaError(field, "a criterion is a string like 'ph < 7.2' or {feature, op, value}")
    if not np.isfinite(value):
        raise CriteriaError(field, "the value must be a finite number")
    if b:
        alias = RATIO_ALIASES.get((a, b))
        if alias and alias in names:
            feature = alias
        else:
            for f in (a, b):
                if f not in names:
                    raise CriteriaError(field, f"unknown feature {f!r}; this model knows {names}")
            feature = f"{a}/{b}"
    else:
        if a not in names:
            raise CriteriaError(field, f"unknown feature {a!r}; this model knows {names}")
        feature = a
    return Criterion(feature, "==" if op == "=" else op, value)


def parse_criteria(items: list[Any] | str, names: list[str], field: str = "criteria") -> list[Criterion]:
    """Text (several criteria joined by and/;/,) or a list of strings/dicts → criteria (AND-ed)."""
    if isinstance(items, str):
        items = split_criteria_text(items)
    out: list[Criterion] = []
    for i, item in enumerate(items):
        if isinstance(item, str) and len(split_criteria_text(item)) > 1:
            out += [parse_criterion(p, names, f"{field}[{i}]") for p in split_criteria_text(item)]
        else:
            out.append(parse_criterion(item, names, f"{field}[{i}]"))
    if not out:
        raise CriteriaError(field, "give at least one criterion, e.g. 'ph < 7.2'")
    return out


def matches(criteria: list[Criterion], df: pd.DataFrame) -> np.ndarray:
    m = np.ones(len(df), dtype=bool)
    for c in criteria:
        m &= c.mask(df)
    return m


# ---------------------------------------------------------------------- generation
@dataclass
class ScenarioResult:
    model_id: str
    criteria: list[Criterion]
    unit: str
    n: int
    seed: int
    table: pd.DataFrame        # record_key + features, in generation order
    drawn: int
    fidelity: dict
    methods: dict | None = None  # records per method: {"rejection": k, "sequential": m}

    @property
    def complete(self) -> bool:
        return len(self.table) >= self.n

    def summary(self, excluded: int = 0, preview_rows: int = 20) -> dict:
        first = ["record_key"] + [c for c in dict.fromkeys(f for cr in self.criteria for f in cr.feature.split("/"))
                                  if c in self.table.columns]
        preview = self.table.head(preview_rows)
        preview = preview[first + [c for c in preview.columns if c not in first]]
        methods = self.methods or {"rejection": len(self.table)}
        return {
            "model": self.model_id, "criteria": [c.to_json() for c in self.criteria],
            "criteria_text": " and ".join(c.text() for c in self.criteria),
            "unit": self.unit, "n_requested": self.n, "n_generated": len(self.table), "seed": self.seed,
            "complete": self.complete, "drawn": self.drawn,
            "acceptance_rate": len(self.table) / self.drawn if self.drawn else None,
            "flagged_excluded": excluded,
            "columns": list(preview.columns),
            "preview": json.loads(preview.to_json(orient="records")),
            "fidelity": self.fidelity,
            "methods": methods,
            "warning": (f"only {len(self.table)} of {self.n} records met the criteria; the criteria are very rare "
                        "under this model" if not self.complete else
                        f"{methods.get('sequential', 0)} of {len(self.table)} records were too rare for exact "
                        f"rejection sampling ({self.drawn:,} draws) and were drawn criterion by criterion "
                        "(approximate)" if methods.get("sequential") else None),
        }


def generate(lm: LoadedModel, criteria: list[Criterion], n: int, seed: int, unit: str = "rows",
             real: pd.DataFrame | None = None, max_draws: int = MAX_DRAWS) -> ScenarioResult:
    """Draw from the model until n records meet every criterion (exact: the model's distribution
    restricted to the criteria). When the criteria are too rare for max_draws, the rest is filled by
    `sequential_fill` (approximate; the result says how many records came from each method)."""
    if unit == "stays":
        return _generate_stays(lm, criteria, n, seed, real, max_draws)
    kept: list[np.ndarray] = []
    found, drawn, k = 0, 0, 0
    while found < n and drawn < max_draws:
        size = min(max(BATCH, 4 * n), max_draws - drawn)
        x = lm.sample(size, seed=seed * 1000 + k)
        k += 1
        drawn += size
        m = matches(criteria, pd.DataFrame(x, columns=lm.names))
        kept.append(x[m])
        found += int(m.sum())
        if found + found / drawn * (max_draws - drawn) < n:
            break  # at this acceptance rate the budget cannot suffice: go criterion by criterion
    x = np.concatenate(kept)[:n] if kept else np.empty((0, len(lm.names)))
    n_exact = len(x)
    if n_exact < n:
        x = np.concatenate([x, sequential_fill(lm, criteria, n - n_exact, seed)])
    table = lm.frame(x)
    table.insert(0, "record_key", record_keys(lm.id, x, lm.names))
    result = ScenarioResult(lm.id, criteria, unit, n, seed, table, drawn,
                            fidelity_against_real(lm, criteria, table, real))
    result.methods = {"rejection": n_exact, "sequential": len(x) - n_exact}
    return result


def sequential_fill(lm: LoadedModel, criteria: list[Criterion], n: int, seed: int, tries: int = 20) -> np.ndarray:
    """Records for criteria too rare for rejection sampling: each criterion feature in turn is drawn
    from the model given the ones before it, redrawn until it meets its criteria (up to `tries`
    times), then the rest of the record is drawn given all of them; rows that still miss a criterion
    (ratio criteria included) are dropped. Approximate: it over-represents combinations the model
    finds unlikely, compared with the exact restriction."""
    names = lm.names
    feats = list(dict.fromkeys(c.feature for c in criteria if "/" not in c.feature))
    m = int(1.25 * n) + 10
    x = np.full((m, len(names)), np.nan)
    alive = np.ones(m, dtype=bool)
    if not feats:
        return np.empty((0, len(names)))

    def single(feat: str, df: pd.DataFrame) -> np.ndarray:
        ok = np.ones(len(df), dtype=bool)
        for c in criteria:
            if c.feature == feat:
                ok &= c.mask(df)
        return ok

    # rarest criterion first, its values drawn from the model's marginal (plain sampling, fast)
    pilot = pd.DataFrame(lm.sample(BATCH, seed=(seed * 7919 + 1) % (2**32)), columns=names)
    feats.sort(key=lambda f: single(f, pilot).mean())
    j0 = names.index(feats[0])
    hits = [pilot[feats[0]].to_numpy()[single(feats[0], pilot)]]
    got, k = len(hits[0]), 0
    while got < m and k < 25:
        k += 1
        d = pd.DataFrame(lm.sample(BATCH, seed=(seed * 7919 + 1 + k) % (2**32)), columns=names)
        hits.append(d[feats[0]].to_numpy()[single(feats[0], d)])
        got += len(hits[-1])
    first_values = np.concatenate(hits)[:m]
    alive[len(first_values):] = False
    x[: len(first_values), j0] = first_values
    for step, feat in enumerate(feats[1:], start=1):
        j = names.index(feat)
        crits = [c for c in criteria if c.feature == feat]
        pending = np.flatnonzero(alive)
        for attempt in range(tries):
            if not len(pending):
                break
            # several candidates per pending row in one call; each row takes its first that qualifies
            reps = int(max(1, min(1000, SEQ_BATCH // len(pending))))
            y = lm.impute(np.repeat(x[pending], reps, axis=0),
                          seed=(seed * 7919 + step * 1009 + attempt) % (2**32))
            ok = np.ones(len(y), dtype=bool)
            col = pd.DataFrame({feat: y[:, j]})
            for c in crits:
                ok &= c.mask(col)
            ok = ok.reshape(len(pending), reps)
            hit = ok.any(axis=1)
            first = ok.argmax(axis=1)
            x[pending[hit], j] = y.reshape(len(pending), reps, -1)[hit, first[hit], j]
            pending = pending[~hit]
        alive[pending] = False
    rows = np.flatnonzero(alive)
    if not len(rows):
        return np.empty((0, len(names)))
    y = lm.impute(x[rows], seed=(seed * 7919 + 999_983) % (2**32))
    y = y[matches(criteria, pd.DataFrame(y, columns=names))]
    return y[:n]


def _generate_stays(lm, criteria, n, seed, real, max_draws) -> ScenarioResult:
    """Whole stays need a sequence model exposing sample_stays(n, seed) → rows with stay_id and bin."""
    sampler = getattr(lm.model, "sample_stays", None)
    if sampler is None:
        raise CriteriaError("unit", f"model {lm.id!r} ({lm.model_type}) generates single time points; "
                                    "unit 'stays' needs a sequence model (one with sample_stays); use unit 'rows'")
    chosen: list[pd.DataFrame] = []
    found, drawn, k = 0, 0, 0
    while found < n and drawn < max_draws:
        stays = sampler(max(4 * n, 100), seed=seed * 1000 + k)
        k += 1
        drawn += int(stays["stay_id"].nunique())
        hit = stays.loc[matches(criteria, stays), "stay_id"].unique()
        sel = stays[stays["stay_id"].isin(hit[: n - found])].copy()
        sel["stay_id"] = sel["stay_id"].astype(str) + f"-{k}"
        chosen.append(sel)
        found += min(len(hit), n - found)
    table = pd.concat(chosen, ignore_index=True) if chosen else pd.DataFrame(columns=["stay_id", "bin", *lm.names])
    x = table[lm.names].to_numpy(dtype=float)
    table.insert(0, "record_key", record_keys(lm.id, x, lm.names))
    result = ScenarioResult(lm.id, criteria, "stays", n, seed, table, drawn,
                            fidelity_against_real(lm, criteria, table, real))
    return result


def fidelity_against_real(lm: LoadedModel, criteria: list[Criterion], synthetic: pd.DataFrame,
                          real: pd.DataFrame | None) -> dict:
    """Short summary against the real rows meeting the same criteria (aggregates only, never rows)."""
    if real is None:
        return {"available": False, "reason": "the server was started without real data (--data)"}
    names = [n for n in lm.names if n in real.columns]
    real_match = real.loc[matches(criteria, real), names].apply(pd.to_numeric, errors="coerce")
    out: dict[str, Any] = {"available": True, "n_real_matching": int(len(real_match)),
                           "n_real_total": int(len(real)), "n_synthetic": int(len(synthetic))}
    if len(real_match) < MIN_REAL_FOR_FIDELITY or len(synthetic) < MIN_REAL_FOR_FIDELITY:
        out.update(available=False, reason=f"too few records to compare ({len(real_match)} real rows match the "
                                           f"criteria, {len(synthetic)} synthetic; need {MIN_REAL_FOR_FIDELITY})")
        return out
    from synthehr.evaluation.fidelity import correlation_difference, per_feature_fidelity

    syn = synthetic[names].apply(pd.to_numeric, errors="coerce").astype(float)
    ref = real[names].apply(pd.to_numeric, errors="coerce")
    per = per_feature_fidelity(real_match.astype(float), syn, standardize_with=ref)
    per = per.replace([np.inf, -np.inf], np.nan)
    crit_feats = {c.feature for c in criteria if c.feature in names}
    order = per["std_mean_bias"].abs().sort_values(ascending=False).index.tolist()
    shown = list(dict.fromkeys([f for f in names if f in crit_feats] + order[:8]))
    corr = correlation_difference(real_match.astype(float), syn)
    out.update({
        "ks_mean": _num(per["ks"].mean()),
        "wasserstein_mean": _num(per["wasserstein"].mean()),
        "std_mean_bias_mean_abs": _num(per["std_mean_bias"].abs().mean()),
        "corr_mean_abs_diff": _num(corr["mean_abs"]),
        "features": [{"feature": f, "mean_real": _num(per.at[f, "mean_real"]),
                      "mean_synthetic": _num(per.at[f, "mean_synthetic"]),
                      "std_mean_bias": _num(per.at[f, "std_mean_bias"]), "ks": _num(per.at[f, "ks"])}
                     for f in shown],
    })
    return out


def _num(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


# ---------------------------------------------------------------------- export
MEDIA_TYPES = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet", "meds": "application/zip"}
EXTENSIONS = {"csv": "csv", "parquet": "parquet", "meds": "meds.zip"}
MEDS_EPOCH = datetime(2100, 1, 1)
BIN_HOURS = 4.0


def export_bytes(table: pd.DataFrame, fmt: str, features: list[str], bin_hours: float = BIN_HOURS) -> bytes:
    """The records as CSV, Parquet or a zipped MEDS dataset (data/held_out/0.parquet + metadata/)."""
    if fmt == "csv":
        return table.to_csv(index=False).encode()
    if fmt == "parquet":
        buf = io.BytesIO()
        table.to_parquet(buf, index=False)
        return buf.getvalue()
    if fmt == "meds":
        return _meds_zip(table, features, bin_hours)
    raise ValueError(f"unknown format {fmt!r}")


def meds_events(table: pd.DataFrame, features: list[str], bin_hours: float = BIN_HOURS) -> pd.DataFrame:
    """Long MEDS events: one per (record, feature); subject_id = synthetic id, time = epoch + bin × bin_hours."""
    t = table.reset_index(drop=True)
    if "stay_id" in t.columns:
        subject = pd.factorize(t["stay_id"])[0] + 1
        bins = pd.to_numeric(t.get("bin", 0), errors="coerce").fillna(0).to_numpy()
    else:
        subject = np.arange(1, len(t) + 1)
        bins = np.zeros(len(t))
    times = [MEDS_EPOCH + timedelta(hours=float(b) * bin_hours) for b in bins]
    frames = []
    for f in features:
        if f not in t.columns:
            continue
        v = pd.to_numeric(t[f], errors="coerce").to_numpy(dtype=float)
        frames.append(pd.DataFrame({"subject_id": subject.astype("int64"), "time": times,
                                    "code": f"SYNTHEHR//{f}", "numeric_value": v.astype("float32")}))
    ev = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["subject_id", "time", "code", "numeric_value"])
    ev = ev[np.isfinite(ev["numeric_value"].astype(float))]
    ev["time"] = pd.to_datetime(ev["time"]).astype("datetime64[us]")
    ev["text_value"] = pd.Series([None] * len(ev), dtype="object")
    return ev.sort_values(["subject_id", "time", "code"], kind="stable").reset_index(drop=True)


def _meds_zip(table: pd.DataFrame, features: list[str], bin_hours: float) -> bytes:
    ev = meds_events(table, features, bin_hours)
    codes = pd.DataFrame({"code": sorted(ev["code"].unique()), "description": None})
    codes["parent_codes"] = [[] for _ in range(len(codes))]
    splits = pd.DataFrame({"subject_id": sorted(ev["subject_id"].unique()), "split": "held_out"})
    meta = {"dataset_name": "synthehr-synthetic", "dataset_version": "scenario-export", "etl_name": "synthehr",
            "meds_version": "0.3.3"}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, df in (("data/held_out/0.parquet", ev), ("metadata/codes.parquet", codes),
                         ("metadata/subject_splits.parquet", splits)):
            b = io.BytesIO()
            df.to_parquet(b, index=False)
            z.writestr(name, b.getvalue())
        z.writestr("metadata/dataset.json", json.dumps(meta, indent=2))
    return buf.getvalue()
