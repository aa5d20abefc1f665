"""Evaluation of synthetic EHR data: fidelity, utility, privacy, imputation, consistency, events, report."""

from synthehr.evaluation._common import Standardizer, flatten_metrics
from synthehr.evaluation.consistency import cohens_d, per_record_rate_comparison, per_record_rates
from synthehr.evaluation.evaluate import evaluate_tables, write_metrics_json
from synthehr.evaluation.events import (
    code_probabilities,
    event_probability_bias_r2,
    event_summary,
    inter_event_seconds,
    inter_event_time_comparison,
    sequence_length_comparison,
    sequence_lengths,
)
from synthehr.evaluation.fidelity import (
    correlation_difference,
    dimension_wise_r2,
    fidelity_summary,
    gaussian_kernel_mmd,
    intergenehr_mean_mmd,
    ks_statistics,
    mape,
    mean_differences,
    per_feature_fidelity,
    rmspe,
    wasserstein_distances,
)
from synthehr.evaluation.imputation import gaussian_nll, imputation_mse, interval_coverage, random_mask
from synthehr.evaluation.privacy import (
    attribute_inference,
    closest_record_distances,
    dcr_summary,
    membership_inference,
    nearest_distances,
    nndr_summary,
)
from synthehr.evaluation.report import render_report, write_report
from synthehr.evaluation.utility import TSTRResult, last_bins_layout, make_classifier, run_tstr, tstr

__all__ = [
    "Standardizer",
    "TSTRResult",
    "attribute_inference",
    "closest_record_distances",
    "code_probabilities",
    "cohens_d",
    "correlation_difference",
    "dcr_summary",
    "dimension_wise_r2",
    "evaluate_tables",
    "event_probability_bias_r2",
    "event_summary",
    "fidelity_summary",
    "flatten_metrics",
    "gaussian_kernel_mmd",
    "gaussian_nll",
    "imputation_mse",
    "inter_event_seconds",
    "inter_event_time_comparison",
    "intergenehr_mean_mmd",
    "interval_coverage",
    "ks_statistics",
    "last_bins_layout",
    "make_classifier",
    "mape",
    "mean_differences",
    "membership_inference",
    "nearest_distances",
    "nndr_summary",
    "per_feature_fidelity",
    "per_record_rate_comparison",
    "per_record_rates",
    "random_mask",
    "render_report",
    "rmspe",
    "run_tstr",
    "sequence_length_comparison",
    "sequence_lengths",
    "tstr",
    "wasserstein_distances",
    "write_metrics_json",
    "write_report",
]
