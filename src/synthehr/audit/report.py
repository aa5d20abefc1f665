"""Audit figures and HTML: inconsistency rate per rule family by dataset, Cohen's d before/after audit.

Uses the evaluation report's helpers (Agg canvas, base64 PNG, same CSS) so an audit section can be
embedded in the evaluation report (``audit_section_html``) or written alone (``write_audit_report``).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Mapping

import numpy as np
import polars as pl

from synthehr.evaluation.report import CSS, _figure, _img, _section

SPLIT_COLORS = {"real": "#1f77b4", "real_all": "#7fb2dc", "synthetic_before": "#d62728",
                "synthetic_after": "#2ca02c"}


def rates_figure(rates: Mapping[str, Mapping[str, float]], families: list[str], title: str = ""):
    """Grouped bars: one group per family, one bar per dataset split (share of records flagged)."""
    fig, ax = _figure(max(6.0, 0.9 * len(families) + 2), 3.2)
    ax = ax[0, 0]
    splits = list(rates)
    w = 0.8 / max(1, len(splits))
    x = np.arange(len(families))
    for i, s in enumerate(splits):
        vals = [rates[s].get(f, np.nan) for f in families]
        ax.bar(x + (i - (len(splits) - 1) / 2) * w, vals, w, label=s, color=SPLIT_COLORS.get(s))
    ax.set_xticks(x, families, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("records with ≥1 finding")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncols=min(4, len(splits)))
    if title:
        ax.set_title(title, fontsize=9)
    return fig


def cohens_d_figure(d_before: Mapping[str, float], d_after: Mapping[str, float], families: list[str],
                    threshold: float = 0.1):
    """Cohen's d (synthetic minus real) per family before and after the audit, with the ±threshold band."""
    fig, ax = _figure(max(6.0, 0.9 * len(families) + 2), 3.0)
    ax = ax[0, 0]
    x = np.arange(len(families))
    for off, d, label, color in ((-0.2, d_before, "before audit", "#d62728"), (0.2, d_after, "after audit",
                                                                                 "#2ca02c")):
        ax.bar(x + off, [d.get(f, np.nan) for f in families], 0.4, label=label, color=color)
    ax.axhspan(-threshold, threshold, color="#999999", alpha=0.25, lw=0)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x, families, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("Cohen's d (synthetic − real)")
    ax.legend(fontsize=7)
    return fig


def benchmark_figure(rates: Mapping[str, Mapping[str, float]], d_before: Mapping[str, float],
                     d_after: Mapping[str, float], families: list[str], records_per_second: float | None,
                     events_per_record: float | None = None):
    """The suite's figure: rates per family by split (top), Cohen's d before/after (bottom)."""
    fig, axes = _figure(max(7.0, 0.9 * len(families) + 2.5), 6.0, nrows=2)
    ax = axes[0, 0]
    splits = list(rates)
    w = 0.8 / max(1, len(splits))
    x = np.arange(len(families))
    for i, s in enumerate(splits):
        ax.bar(x + (i - (len(splits) - 1) / 2) * w, [rates[s].get(f, np.nan) for f in families], w, label=s,
               color=SPLIT_COLORS.get(s))
    ax.set_xticks(x, families, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("share of records flagged")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, ncols=min(4, len(splits)))
    t = "Inconsistency rate per rule family"
    if records_per_second:
        t += f" — rule audit {records_per_second:,.0f} records/s"
        if events_per_record:
            t += f" ({events_per_record:,.0f} events/record)"
    ax.set_title(t, fontsize=9)
    ax = axes[1, 0]
    for off, d, label, color in ((-0.2, d_before, "before audit", "#d62728"),
                                 (0.2, d_after, "after audit", "#2ca02c")):
        ax.bar(x + off, [d.get(f, np.nan) if d.get(f) is not None else np.nan for f in families], 0.4,
               label=label, color=color)
    ax.axhspan(-0.1, 0.1, color="#999999", alpha=0.25, lw=0)
    ax.axhline(0, color="black", lw=0.6)
    ax.set_xticks(x, families, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("Cohen's d (synthetic − real held-out)")
    ax.legend(fontsize=7)
    return fig


def _table(rows: list[list], header: list[str]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def audit_section_html(rates: Mapping[str, Mapping[str, float]], families: list[str],
                       d_before: Mapping[str, float] | None = None, d_after: Mapping[str, float] | None = None,
                       records_per_second: float | None = None) -> str:
    """An HTML fragment (figures + table) for the evaluation report's clinical-consistency section."""
    parts = [_img(rates_figure(rates, families), "inconsistency rate per rule family")]
    if d_before is not None and d_after is not None:
        parts.append(_img(cohens_d_figure(d_before, d_after, families), "Cohen's d before and after audit"))
    rows = [[f] + [f"{rates[s].get(f, float('nan')):.3f}" for s in rates] for f in families]
    parts.append(_table(rows, ["family", *rates]))
    note = f"Rule audit throughput: {records_per_second:,.0f} records/s." if records_per_second else ""
    return _section("Clinical consistency audit", "\n".join(parts), note)


def write_audit_report(path: str | Path, result, findings: pl.DataFrame | None = None, top: int = 50) -> Path:
    """A self-contained HTML report of one audit: rates per family, counts per rule, first findings."""
    fams = [c for c in result.records.columns if c not in ("subject_id", "max_level")]
    rates = {"input": result.rates}
    if result.rates_after is not None:
        rates["after audit"] = result.rates_after
    body = [audit_section_html(rates, fams, records_per_second=result.records_per_second)]
    per_rule = result.findings.group_by("rule_id", "family", "severity").agg(
        findings=pl.len(), records=pl.col("subject_id").n_unique()).sort("rule_id")
    rt = result.rule_table.set_index("rule_id")
    rows = [[r["rule_id"], r["family"], r["severity"], r["findings"], r["records"],
             rt.loc[r["rule_id"], "rationale"] if r["rule_id"] in rt.index else ""] for r in per_rule.to_dicts()]
    body.append(_section("Findings per rule", _table(rows, ["rule", "family", "severity", "findings", "records",
                                                            "rationale"])))
    if findings is not None and findings.height:
        fr = [[r["subject_id"], r["rule_id"], r["severity"], r["time"], r["detail"],
               " | ".join((r.get("evidence") or [])[:5])] for r in findings.head(top).to_dicts()]
        body.append(_section(f"First {min(top, findings.height)} findings",
                             _table(fr, ["subject", "rule", "severity", "time", "detail", "evidence"])))
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>synthehr audit</title><style>{CSS}</style>"
           f"</head><body><h1>Clinical consistency audit</h1><p>{result.n_records:,} records, "
           f"{result.n_events:,} events, {result.seconds:.2f} s.</p>{''.join(body)}</body></html>")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(doc)
    return p
