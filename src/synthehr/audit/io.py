"""`audit_meds`: audit a MEDS folder and write the audited MEDS dataset plus the findings table.

Output layout (``out`` is itself a MEDS dataset):

    out/data/<same shard paths as the input>.parquet   audited events (repaired and/or filtered)
    out/metadata/                                     input metadata; subject_splits keeps kept subjects
    out/audit/findings.parquet                        one row per finding, evidence as lists
    out/audit/findings.csv                            the same, flat (evidence joined with " | ")
    out/audit/summary.json                            rates per family before/after, counts per rule,
                                                      records in/kept, timing, options, LLM agreement
    out/audit/rules.csv                               the rules that were applied
    out/audit/report.html                             rates per family (figure) and the top findings
    out/audit/llm_reviews.jsonl                       only when an LLM reviewer was configured
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import polars as pl

from synthehr.audit.engine import AuditResult, audit, evidence_table, read_meds, to_events
from synthehr.errors import DataError


def findings_for_output(result: AuditResult, events: pl.DataFrame) -> pl.DataFrame:
    f = evidence_table(result.findings, events)
    return f.select("subject_id", "rule_id", "family", "severity", "time", "detail", "evidence",
                    "n_evidence_events", "rows", "context_rows")


def write_findings(findings: pl.DataFrame, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    findings.write_parquet(folder / "findings.parquet")
    findings.with_columns(evidence=pl.col("evidence").list.join(" | "),
                          rows=pl.col("rows").cast(pl.List(pl.Utf8)).list.join(" "),
                          context_rows=pl.col("context_rows").cast(pl.List(pl.Utf8)).list.join(" ")) \
            .write_csv(folder / "findings.csv")


def audit_meds(input_dir: str | Path, out_dir: str | Path, *, filter_severity: str | None = None,
               repair: bool = False, rules: Any = None, llm: Any = None, llm_max_records: int | None = 50,
               seed: int = 0) -> AuditResult:
    """Audit the MEDS dataset at `input_dir`; write the audited dataset and findings to `out_dir`.

    filter_severity: drop records with a finding at or above it (after repair); repair: apply the
    rules' repairs.  llm: an ``LLMConfig`` (or None: no reviewer, nothing sent anywhere); at most
    `llm_max_records` records (a seeded random sample) are sent to it.
    """
    src, out = Path(input_dir).resolve(), Path(out_dir).resolve()
    if out == src or src in out.parents:
        raise DataError("the output folder must not be the input MEDS folder or inside it", file=str(out))
    raw = read_meds(src)
    ev = to_events(raw)
    result = audit(ev, rules, repair=repair, filter_severity=filter_severity)
    audited = result.events if result.events is not None else ev.drop("_row")

    # the audited MEDS dataset, shard by shard, original columns and order
    if (out / "data").exists():
        shutil.rmtree(out / "data")
    for shard in raw["_shard"].unique().sort().to_list():
        part = audited.filter(pl.col("_shard") == shard).drop("_shard")
        path = out / "data" / shard
        path.parent.mkdir(parents=True, exist_ok=True)
        part.write_parquet(path)
    meta_in, meta_out = src / "metadata", out / "metadata"
    if meta_in.is_dir():
        meta_out.mkdir(parents=True, exist_ok=True)
        kept = audited["subject_id"].unique()
        for f in meta_in.iterdir():
            if f.name == "subject_splits.parquet":
                pl.read_parquet(f).filter(pl.col("subject_id").is_in(kept.implode())).write_parquet(meta_out / f.name)
            elif f.is_file():
                shutil.copy2(f, meta_out / f.name)

    adir = out / "audit"
    findings = findings_for_output(result, ev)
    write_findings(findings, adir)
    result.rule_table.to_csv(adir / "rules.csv", index=False)
    per_rule = (result.findings.group_by("rule_id", "family", "severity")
                .agg(findings=pl.len(), records=pl.col("subject_id").n_unique()).sort("rule_id"))
    summary = {
        "input": str(src), "records": result.n_records, "events": result.n_events,
        "seconds": round(result.seconds, 4), "records_per_second": result.records_per_second,
        "options": {"filter_severity": filter_severity, "repair": repair},
        "rates": result.rates, "rates_after": result.rates_after,
        "records_kept": result.meta.get("records_kept", result.n_records), "repairs": result.repairs,
        "per_rule": per_rule.to_dicts(),
    }
    if llm is not None and getattr(llm, "enabled", False):
        from synthehr.audit.llm import LLMReviewer, agreement, summarise_records

        subjects = ev["subject_id"].unique().sort()
        if llm_max_records is not None and subjects.len() > llm_max_records:
            subjects = subjects.sample(llm_max_records, seed=seed).sort()
        codes_meta = pl.read_parquet(meta_in / "codes.parquet") if (meta_in / "codes.parquet").is_file() else None
        summaries = summarise_records(ev, subjects.to_list(), rules=rules, codes_meta=codes_meta)
        reviews = LLMReviewer(llm).review(summaries)
        with open(adir / "llm_reviews.jsonl", "w") as fh:
            for r in reviews:
                fh.write(json.dumps(r.to_dict()) + "\n")
        summary["llm"] = {"base_url": llm.base_url, "model": llm.model,
                          "agreement": agreement(result.findings, reviews)}
    (adir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    from synthehr.audit.report import write_audit_report

    write_audit_report(adir / "report.html", result, findings)
    return result
