"""Data preparation: raw EHR sources → ICU grid, static table and MEDS event stream."""

from synthehr.data.catalogue import Feature, FeatureCatalogue
from synthehr.data.prepare import prepare
from synthehr.data.report import PreparationReport
from synthehr.data.splits import assign_splits
from synthehr.data.views import PreparedData, load_prepared

__all__ = ["Feature", "FeatureCatalogue", "PreparationReport", "PreparedData", "assign_splits", "load_prepared",
           "prepare"]
