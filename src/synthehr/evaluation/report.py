"""Self-contained HTML evaluation report: inline CSS, figures embedded as base64 PNG, no external URL.

Figures are drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, no global
backend change), so the report renders on headless machines and inside threads.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from synthehr.evaluation._common import Standardizer, TableLike, align, flatten_metrics
from synthehr.evaluation.utility import TSTRResult

REAL_COLOR, SYNTH_COLOR, HOLDOUT_COLOR = "#1f77b4", "#d62728", "#7f7f7f"
MAX_CORR_FEATURES = 40

CSS = """
body { font-family: -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; font-size: .85em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: .5em 0; }
p.note { color: #555; font-size: .9em; }
"""


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _img(fig: Figure, alt: str) -> str:
    """The figure as an <img> with a base64 PNG data URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _section(title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<h2>{html.escape(title)}</h2>\n{note_html}\n{body}\n"


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """HTML table of the flattened metrics (per-feature detail left out: it is in metrics.json)."""
    rows = [r for r in flatten_metrics(metrics) if "per_feature" not in r["metric"]]
    body = "".join(
        f"<tr><td>{html.escape(r['metric'])}</td><td>{html.escape(r['split'])}</td>"
        f"<td class=\"num\">{html.escape(_format(r['value']))}</td></tr>"
        for r in rows
    )
    return f"<table><tr><th>metric</th><th>split</th><th>value</th></tr>{body}</table>"


def marginal_histograms(real: pd.DataFrame, synthetic: pd.DataFrame, max_features: int) -> str:
    """Overlaid density histograms of the first `max_features` features, shared bins per feature."""
    cols = list(real.columns[:max_features])
    ncols = min(4, len(cols))
    nrows = int(np.ceil(len(cols) / ncols))
    fig, axes = _figure(3.2 * ncols, 2.4 * nrows, nrows, ncols)
    for ax, c in zip(axes.ravel(), cols):
        a, b = real[c].dropna().to_numpy(), synthetic[c].dropna().to_numpy()
        pooled = np.concatenate([a, b])
        if pooled.size:
            edges = np.histogram_bin_edges(pooled, bins=30)
            ax.hist(a, bins=edges, density=True, alpha=0.5, color=REAL_COLOR, label="real")
            ax.hist(b, bins=edges, density=True, alpha=0.5, color=SYNTH_COLOR, label="synthetic")
        ax.set_title(str(c), fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(cols):]:
        ax.set_visible(False)
    axes.ravel()[0].legend(fontsize=7)
    return _img(fig, "marginal histograms")


def correlation_heatmaps(real: pd.DataFrame, synthetic: pd.DataFrame) -> str:
    """Pearson correlation matrices: real, synthetic and synthetic - real."""
    cols = list(real.columns[:MAX_CORR_FEATURES])
    mats = [np.nan_to_num(real[cols].corr().to_numpy()), np.nan_to_num(synthetic[cols].corr().to_numpy())]
    mats.append(mats[1] - mats[0])
    fig, axes = _figure(15, 5, 1, 3)
    labels = cols if len(cols) <= 25 else []
    for ax, m, title in zip(axes[0], mats, ("real", "synthetic", "synthetic - real")):
        im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_title(title)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8)
    return _img(fig, "correlation heatmaps")


def mean_bias_chart(real: pd.DataFrame, synthetic: pd.DataFrame, reference: pd.DataFrame, max_features: int) -> str:
    """Horizontal bars of (mu_syn - mu_real) / std_ref for the features with the largest |bias|."""
    bias = (synthetic.mean() - real.mean()) / Standardizer.fit(reference).std
    bias = bias.dropna()
    bias = bias.reindex(bias.abs().sort_values(ascending=False).index[:max_features])[::-1]
    fig, axes = _figure(7, 0.25 * len(bias) + 1.2)
    ax = axes[0, 0]
    ax.barh([str(c) for c in bias.index], bias.to_numpy(), color=np.where(bias.to_numpy() > 0, SYNTH_COLOR, REAL_COLOR))
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("standardized mean bias (synthetic - real) / sd_train")
    ax.tick_params(labelsize=7)
    return _img(fig, "mean bias")


def roc_curves(result: TSTRResult) -> str:
    """ROC curves on the real test set, one panel per model: TSTR vs TRTR."""
    models = list(result.scores)
    fig, axes = _figure(4.5 * len(models), 4, 1, len(models))
    target = (result.y_test == result.positive_label).astype(int)
    for ax, model in zip(axes[0], models):
        for split, color in (("tstr", SYNTH_COLOR), ("trtr", REAL_COLOR)):
            scores = result.scores[model].get(split)
            if scores is not None and 0 < target.sum() < len(target):
                fpr, tpr, _ = roc_curve(target, scores)
                auc = result.metrics[model][split]["auroc"]
                ax.plot(fpr, tpr, color=color, label=f"{split.upper()} (AUROC {auc:.3f})")
        ax.plot([0, 1], [0, 1], ls="--", color=HOLDOUT_COLOR, lw=0.8)
        ax.set(title=model, xlabel="false positive rate", ylabel="true positive rate")
        ax.legend(fontsize=8, loc="lower right")
    return _img(fig, "ROC curves")


def dcr_histograms(distances: Mapping[str, np.ndarray]) -> str:
    """Distance-to-closest-training-record histograms: synthetic -> train vs holdout -> train."""
    fig, axes = _figure(7, 3.5)
    ax = axes[0, 0]
    firsts = {name: d[:, 0] for name, d in distances.items()}
    edges = np.histogram_bin_edges(np.concatenate(list(firsts.values())), bins=40)
    colors = {"synthetic": SYNTH_COLOR, "holdout": HOLDOUT_COLOR}
    for name, d in firsts.items():
        ax.hist(d, bins=edges, density=True, alpha=0.5, color=colors.get(name), label=f"{name} -> train")
    ax.set_xlabel("distance to closest training record (standardized units)")
    ax.legend(fontsize=8)
    return _img(fig, "DCR histograms")


def render_report(
    metrics: Mapping[str, Any],
    real: TableLike | None = None,
    synthetic: TableLike | None = None,
    reference: TableLike | None = None,
    tstr: TSTRResult | None = None,
    distances: Mapping[str, np.ndarray] | None = None,
    max_features: int = 12,
    title: str = "synthehr evaluation report",
) -> str:
    """The whole report as one HTML string; each figure appears only when its inputs are given."""
    split_note = "split: which data a value describes (train / real_test / holdout rows are references)."
    parts = [_section("Metrics", metrics_table(metrics), split_note)]
    if real is not None and synthetic is not None:
        r, s, ref = align(real, synthetic, real if reference is None else reference)
        parts.append(_section("Marginal distributions", marginal_histograms(r, s, max_features),
                              f"First {min(max_features, r.shape[1])} features; blue = real, red = synthetic."))
        parts.append(_section("Correlations", correlation_heatmaps(r, s), f"At most {MAX_CORR_FEATURES} features."))
        parts.append(_section("Mean bias", mean_bias_chart(r, s, ref, max(max_features, 30)),
                              "Per-feature mean difference in training standard deviations, largest first."))
    if tstr is not None and tstr.scores:
        parts.append(_section("Utility: train on synthetic vs train on real", roc_curves(tstr)))
    if distances:
        parts.append(_section("Privacy: distance to closest record", dcr_histograms(distances),
                              "Synthetic records much closer to training rows than held-out real rows "
                              "suggest memorisation."))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n" + "".join(parts) + "</body></html>\n"
    )


def write_report(path: str | Path, metrics: Mapping[str, Any], **kwargs: Any) -> Path:
    """Write `render_report(metrics, **kwargs)` to `path` (parents created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(metrics, **kwargs), encoding="utf-8")
    return path
