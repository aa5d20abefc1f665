"""Review queue: synthetic records shown one at a time; clinicians accept or flag them with a reason.

Feedback is used:
* `flagged_keys` — records any reviewer flagged are left out of every export;
* `promote_rule` — a flagged pattern becomes an audit rule, stored in the database and written to the
  user rule file (`<user data dir>/audit_rules_user.csv`), readable with `load_user_rules()`.

User rule file columns follow synthehr/audit/rules/rules.csv (rule_id, family, check, severity, repair,
params, rationale, source) plus pattern, created_by, created_at: family "clinician", check "grid_pattern",
repair "none", params "pattern=<pattern>" (the audit's key=value form), source "clinician feedback <review id>". `pattern` is a conjunction of comparisons on
ICU-grid features in the scenario-criteria grammar ("ph < 6.9 and hco3 > 45").
"""

from __future__ import annotations

import csv
import io
import itertools
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from synthehr.app.scenarios import Criterion, CriteriaError, matches, parse_criteria
from synthehr.app.settings import USER_RULES_FILE, user_data_dir
from synthehr.app.store import AuditRule, Review, ReviewRecord, iso, utcnow
from synthehr.app.workbench import TOLERANCES, DEFAULT_TOLERANCE, LoadedModel, applicable_equations, record_keys

DECISIONS = ("accept", "flag")
SEVERITIES = ("warning", "error", "critical")  # as in synthehr/audit/rules
RULE_COLUMNS = ["rule_id", "family", "check", "severity", "repair", "params", "rationale", "source", "pattern",
                "created_by", "created_at"]


# ---------------------------------------------------------------------- user rules (documented reader)
@dataclass(frozen=True)
class UserRule:
    """One clinician-promoted audit rule. `criteria` is the parsed pattern (AND of comparisons)."""

    rule_id: str
    severity: str
    rationale: str
    source: str
    pattern: str
    family: str = "clinician"
    check: str = "grid_pattern"
    repair: str = "none"
    params: str = ""
    created_by: str = ""
    created_at: str = ""

    @property
    def id(self) -> str:
        return self.rule_id

    def criteria(self, names: list[str]) -> list[Criterion]:
        return parse_criteria(self.pattern, names, field=f"rule {self.id}")

    def matches(self, table: pd.DataFrame) -> np.ndarray:
        """Boolean mask of the rows of `table` (feature columns) the rule flags."""
        return matches(self.criteria([str(c) for c in table.columns]), table)


def load_user_rules(path: str | Path | None = None) -> list[UserRule]:
    """Read the clinician-promoted audit rules (default: `<user data dir>/audit_rules_user.csv`).

    Returns [] when the file does not exist. Each row becomes a `UserRule`; use `rule.matches(df)`
    to apply one to a table of synthetic records.
    """
    p = Path(path) if path else user_data_dir() / USER_RULES_FILE
    if not p.is_file():
        return []
    with open(p, newline="") as f:
        return [UserRule(**{k: (row.get(k) or "") for k in RULE_COLUMNS}) for row in csv.DictReader(f)]


def write_user_rules(rules: Iterable[AuditRule], path: Path) -> Path:
    """Write every promoted rule to the CSV atomically (temp file + rename: never a half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=RULE_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rules:
        w.writerow({"rule_id": r.rule_id, "family": "clinician", "check": "grid_pattern", "severity": r.severity,
                    "repair": "none", "params": f"pattern={r.pattern}", "rationale": r.rationale,
                    "source": f"clinician feedback {r.review_id}" if r.review_id else "clinician feedback",
                    "pattern": r.pattern, "created_by": r.created_by,
                    "created_at": iso(r.created_at) or ""})
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".rules-", suffix=".csv")
    with os.fdopen(fd, "w", newline="") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------- findings
def findings_for(lm: LoadedModel, x: np.ndarray, rules: list[UserRule] | None = None) -> list[list[dict]]:
    """Audit findings per record: equations that do not hold, values pinned at a plausible-range bound,
    clinician rules that match, and the synthehr.audit findings when that module is installed."""
    names = lm.names
    out: list[list[dict]] = [[] for _ in range(len(x))]
    for name, eq in applicable_equations(names).items():
        tol = TOLERANCES.get(name, DEFAULT_TOLERANCE)
        tab = {f: x[:, names.index(f)] for f in eq.features}
        implied = np.asarray(eq.predict(tab), dtype=float)
        res = x[:, names.index(eq.target)] - implied
        for i in np.flatnonzero(np.isfinite(res) & (np.abs(res) > tol)):
            out[i].append({"rule": f"constraint:{name}", "severity": "warning", "source": "physiological equation",
                           "message": f"{eq.target} {x[i, names.index(eq.target)]:.4g} but {implied[i]:.4g} implied "
                                      f"by {', '.join(eq.inputs)} (|diff| {abs(res[i]):.3g} > {tol:g})"})
    for j, f in enumerate(lm.features):
        if f.kind != "continuous":
            continue
        for bound, label in ((f.lower, "minimum"), (f.upper, "maximum")):
            if bound is None:
                continue
            for i in np.flatnonzero(np.isclose(x[:, j], bound)):
                out[i].append({"rule": "plausible_range", "severity": "info", "source": "feature catalogue",
                               "message": f"{f.name} at the plausible {label} {bound:g} (clipped)"})
    if rules:
        df = pd.DataFrame(x, columns=names)
        for rule in rules:
            try:
                m = rule.matches(df)
            except CriteriaError:
                continue  # a rule about features this model lacks
            for i in np.flatnonzero(m):
                out[i].append({"rule": rule.id, "severity": rule.severity, "source": rule.source,
                               "message": rule.rationale or rule.pattern})
    extra = _audit_module_findings(lm, x)
    if extra is not None:
        for i, items in enumerate(extra):
            out[i] += items
    return out


def _audit_module_findings(lm: LoadedModel, x: np.ndarray) -> list[list[dict]] | None:
    """Findings from synthehr.audit when it exists and exposes `audit_records(df) -> per-row findings`."""
    try:
        import synthehr.audit as audit  # noqa: F401
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("synthehr"):
            return None
        raise
    fn = getattr(audit, "audit_records", None)
    if fn is None:
        return None
    try:
        res = fn(pd.DataFrame(x, columns=lm.names))
    except Exception as e:  # an audit problem must not block review
        return [[{"rule": "audit", "severity": "info", "source": "synthehr.audit",
                  "message": f"audit failed: {e}"}] for _ in range(len(x))]
    if isinstance(res, pd.DataFrame) and {"row", "rule", "severity", "message"} <= set(res.columns):
        grouped: list[list[dict]] = [[] for _ in range(len(x))]
        for r in res.itertuples(index=False):
            grouped[int(r.row)].append({"rule": str(r.rule), "severity": str(r.severity), "source": "synthehr.audit",
                                        "message": str(r.message)})
        return grouped
    return None


# ---------------------------------------------------------------------- queue
def enqueue(session: Session, lm: LoadedModel, x: np.ndarray, origin: str,
            rules: list[UserRule] | None = None, source: str | None = None, model_type: str | None = None) -> dict:
    """Add records (rows of x, schema order of lm) to the queue with their findings; records already
    queued (same key) are skipped. `source` defaults to the model id (records from elsewhere name theirs)."""
    source = source or lm.id
    keys = record_keys(source, x, lm.names)
    existing = set(session.scalars(select(ReviewRecord.record_key).where(ReviewRecord.record_key.in_(keys))))
    found = findings_for(lm, x, rules)
    added, seen = 0, set(existing)
    for key, row, fnd in zip(keys, x, found):
        if key in seen:
            continue
        seen.add(key)
        values = {n: (None if not np.isfinite(v) else float(v)) for n, v in zip(lm.names, row.tolist())}
        session.add(ReviewRecord(record_key=key, source=source[:200], model_type=(model_type or lm.model_type)[:64],
                                 origin=origin[:200],
                                 record_values=values, findings=fnd, created_at=utcnow(), n_reviews=0, n_flags=0))
        added += 1
    session.commit()
    return {"added": added, "already_queued": len(keys) - added}


def record_json(rec: ReviewRecord, lm: LoadedModel | None = None, reviewer: str | None = None) -> dict:
    out = {"id": rec.id, "record_key": rec.record_key, "source": rec.source, "model_type": rec.model_type,
           "origin": rec.origin, "values": rec.record_values, "findings": rec.findings,
           "created_at": iso(rec.created_at), "n_reviews": rec.n_reviews, "n_flags": rec.n_flags}
    if lm is not None:
        z = {}
        for f in lm.features:
            v = rec.record_values.get(f.name)
            z[f.name] = None if v is None else (v - f.mean) / f.std
        out["z"] = z
        out["suggested_pattern"] = suggest_pattern(rec.record_values, z)
    if reviewer:
        mine = [r for r in rec.reviews if r.reviewer == reviewer]
        out["my_review"] = review_json(mine[0]) if mine else None
    return out


def suggest_pattern(values: dict, z: dict, k: int = 2) -> str:
    """A starting pattern for rule promotion: the k most extreme features, bounded at this record's value."""
    ranked = sorted(((abs(v), n) for n, v in z.items() if v is not None and np.isfinite(v)), reverse=True)[:k]
    parts = []
    for _, name in ranked:
        up = z[name] > 0
        parts.append(f"{name} {'>=' if up else '<='} {_round_outward(values[name], down=up):g}")
    return " and ".join(parts)


def _round_outward(v: float, down: bool, digits: int = 4) -> float:
    """v to `digits` significant digits, rounded so that the bound still includes v."""
    if v == 0 or not np.isfinite(v):
        return float(v)
    d = digits - 1 - int(np.floor(np.log10(abs(v))))
    scale = 10.0 ** d
    r = (np.floor(v * scale) if down else np.ceil(v * scale)) / scale
    return float(f"{r:.{digits + 2}g}")


def review_json(r: Review) -> dict:
    return {"id": r.id, "record_id": r.record_id, "reviewer": r.reviewer, "decision": r.decision,
            "reason": r.reason, "created_at": iso(r.created_at)}


def next_record(session: Session, reviewer: str, source: str | None = None) -> ReviewRecord | None:
    """The oldest queued record this reviewer has not reviewed yet (all reviewers see the same order,
    so their decisions overlap and agreement can be measured)."""
    done = select(Review.record_id).where(Review.reviewer == reviewer)
    q = select(ReviewRecord).where(ReviewRecord.id.not_in(done))
    if source:
        q = q.where(ReviewRecord.source == source)
    return session.scalars(q.order_by(ReviewRecord.id).limit(1)).first()


def remaining(session: Session, reviewer: str, source: str | None = None) -> int:
    """How many queued records this reviewer has not reviewed yet."""
    done = select(Review.record_id).where(Review.reviewer == reviewer)
    q = select(func.count(ReviewRecord.id)).where(ReviewRecord.id.not_in(done))
    if source:
        q = q.where(ReviewRecord.source == source)
    return int(session.scalar(q) or 0)


def submit(session: Session, record_id: int, reviewer: str, decision: str, reason: str) -> Review:
    """Store one decision (replacing this reviewer's earlier one) and the record's counters, in one transaction."""
    rec = session.get(ReviewRecord, record_id)
    if rec is None:
        raise LookupError(f"no queued record with id {record_id}")
    prev = session.scalars(select(Review).where(Review.record_id == record_id,
                                                Review.reviewer == reviewer)).first()
    now = utcnow()
    if prev is None:
        review = Review(record_id=record_id, reviewer=reviewer, decision=decision, reason=reason, created_at=now)
        session.add(review)
        # SQL-side increments: concurrent decisions on one record never lose a count
        rec.n_reviews = ReviewRecord.n_reviews + 1
        rec.n_flags = ReviewRecord.n_flags + int(decision == "flag")
    else:
        delta = int(decision == "flag") - int(prev.decision == "flag")
        if delta:
            rec.n_flags = ReviewRecord.n_flags + delta
        prev.decision, prev.reason, prev.created_at = decision, reason, now
        review = prev
    session.commit()
    return review


def history(session: Session, reviewer: str, limit: int = 20) -> list[dict]:
    q = select(Review).where(Review.reviewer == reviewer).order_by(Review.created_at.desc(), Review.id.desc())
    return [review_json(r) for r in session.scalars(q.limit(limit))]


def flagged_keys(session: Session) -> set[str]:
    return set(session.scalars(select(ReviewRecord.record_key).where(ReviewRecord.n_flags > 0)))


# ---------------------------------------------------------------------- agreement
def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters over the same items (None when chance agreement is 1)."""
    n = len(a)
    if n == 0:
        return None
    po = sum(x == y for x, y in zip(a, b)) / n
    pe = sum((a.count(c) / n) * (b.count(c) / n) for c in DECISIONS)
    return None if pe >= 1 else (po - pe) / (1 - pe)


def fleiss_kappa(items: list[list[str]]) -> float | None:
    """Fleiss' kappa for items rated by ≥2 raters each (rater counts may differ: per-item agreement
    uses that item's count, category shares pool every rating)."""
    items = [it for it in items if len(it) >= 2]
    if not items:
        return None
    p_items, totals = [], defaultdict(int)
    for it in items:
        m = len(it)
        counts = [it.count(c) for c in DECISIONS]
        p_items.append((sum(c * c for c in counts) - m) / (m * (m - 1)))
        for c, k in zip(DECISIONS, counts):
            totals[c] += k
    n_ratings = sum(totals.values())
    pe = sum((totals[c] / n_ratings) ** 2 for c in DECISIONS)
    pbar = float(np.mean(p_items))
    return None if pe >= 1 else (pbar - pe) / (1 - pe)


def agreement_stats(session: Session) -> dict:
    n_records = session.scalar(select(func.count(ReviewRecord.id))) or 0
    reviews = session.execute(select(Review.record_id, Review.reviewer, Review.decision)).all()
    by_record: dict[int, dict[str, str]] = defaultdict(dict)
    per_reviewer: dict[str, dict[str, int]] = defaultdict(lambda: {"accept": 0, "flag": 0})
    for rid, who, dec in reviews:
        by_record[rid][who] = dec
        per_reviewer[who][dec] += 1
    multi = [d for d in by_record.values() if len(d) >= 2]
    pair_agree = [sum(x == y for x, y in itertools.combinations(d.values(), 2)) / (len(d) * (len(d) - 1) / 2)
                  for d in multi]
    pairs = []
    for a, b in itertools.combinations(sorted(per_reviewer), 2):
        common = [d for d in by_record.values() if a in d and b in d]
        if not common:
            continue
        da, db = [d[a] for d in common], [d[b] for d in common]
        pairs.append({"reviewers": [a, b], "n_common": len(common),
                      "agreement": sum(x == y for x, y in zip(da, db)) / len(common),
                      "cohen_kappa": cohen_kappa(da, db)})
    return {
        "n_records": int(n_records), "n_reviewed": len(by_record), "n_reviews": len(reviews),
        "n_flagged_records": sum(1 for d in by_record.values() if "flag" in d.values()),
        "reviewers": [{"reviewer": k, **v} for k, v in sorted(per_reviewer.items())],
        "n_multi_reviewed": len(multi),
        "percent_agreement": float(np.mean(pair_agree)) if pair_agree else None,
        "fleiss_kappa": fleiss_kappa([list(d.values()) for d in multi]),
        "pairs": pairs,
    }


# ---------------------------------------------------------------------- promotion
def promote_rule(session: Session, review_id: int | None, pattern: str, severity: str, rationale: str,
                 created_by: str, names: list[str], rules_path: Path) -> AuditRule:
    """Store a flagged pattern as an audit rule and rewrite the user rule file from the database."""
    crit = parse_criteria(pattern, names, field="pattern")
    canonical = " and ".join(c.text() for c in crit)
    rows = session.execute(select(ReviewRecord.record_values)).scalars().all()
    rate = None
    if rows:
        df = pd.DataFrame(list(rows)).reindex(columns=names).apply(pd.to_numeric, errors="coerce")
        rate = float(matches(crit, df).mean())
    rule = AuditRule(rule_id=f"pending-{utcnow().timestamp()}", review_id=review_id, pattern=canonical,
                     severity=severity, rationale=rationale, created_by=created_by, created_at=utcnow(),
                     match_rate=rate)
    session.add(rule)
    session.flush()
    rule.rule_id = f"CLIN{rule.id:04d}"
    session.commit()
    write_user_rules(session.scalars(select(AuditRule).order_by(AuditRule.id)).all(), rules_path)
    return rule


def rule_json(r: AuditRule) -> dict:
    return {"id": r.rule_id, "review_id": r.review_id, "pattern": r.pattern, "severity": r.severity,
            "rationale": r.rationale, "created_by": r.created_by, "created_at": iso(r.created_at),
            "source": f"clinician feedback {r.review_id}" if r.review_id else "clinician feedback",
            "match_rate_in_queue": r.match_rate}


__all__ = ["UserRule", "load_user_rules", "write_user_rules", "findings_for", "enqueue", "next_record", "submit",
           "history", "flagged_keys", "agreement_stats", "cohen_kappa", "fleiss_kappa", "promote_rule", "remaining"]
