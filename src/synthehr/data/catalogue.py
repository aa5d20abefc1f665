"""The ICU feature catalogue: a versioned data file, loaded and validated into typed records."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from synthehr.errors import DataError, ValidationErrors

FEATURES_FILE = "icu_features.csv"
SOURCES_FILE = "icu_feature_sources.csv"
_FEATURE_COLUMNS = ["name", "label", "unit", "group", "kind", "aggregation", "plausible_min", "plausible_max",
                    "salient", "derived_from", "source"]
_SOURCE_COLUMNS = ["feature", "dataset", "code", "source_unit", "multiplier", "offset", "note"]
STATIC_GROUP = "static"


@dataclass(frozen=True)
class Feature:
    name: str
    label: str
    unit: str
    group: str
    kind: str  # continuous | binary
    aggregation: str  # median | max | first
    plausible_min: float
    plausible_max: float
    salient: bool
    derived_from: str

    @property
    def is_static(self) -> bool:
        return self.group == STATIC_GROUP


@dataclass
class FeatureCatalogue:
    features: list[Feature]
    sources: pd.DataFrame  # feature, dataset, code, multiplier, offset, ...
    origin: str = "package"

    @classmethod
    def load(cls, features_path: str | Path | None = None, sources_path: str | Path | None = None) -> "FeatureCatalogue":
        pkg = resources.files("synthehr.catalogues")
        fpath = Path(features_path) if features_path else pkg / FEATURES_FILE
        spath = Path(sources_path) if sources_path else pkg / SOURCES_FILE
        feats = _read_csv(fpath, _FEATURE_COLUMNS)
        srcs = _read_csv(spath, _SOURCE_COLUMNS, dtype={"code": str})
        problems = []
        if feats["name"].duplicated().any():
            problems.append(f"{fpath}: duplicate feature name(s) {feats.loc[feats['name'].duplicated(), 'name'].tolist()}")
        for i, r in feats.iterrows():
            if r["kind"] not in ("continuous", "binary"):
                problems.append(f"{fpath} row {i + 2}: column 'kind' has value {r['kind']!r} (continuous|binary)")
            if r["aggregation"] not in ("median", "max", "first"):
                problems.append(f"{fpath} row {i + 2}: column 'aggregation' has value {r['aggregation']!r}")
            if not float(r["plausible_min"]) < float(r["plausible_max"]):
                problems.append(f"{fpath} row {i + 2}: plausible_min must be below plausible_max for {r['name']!r}")
        unknown = sorted(set(srcs["feature"]) - set(feats["name"]))
        if unknown:
            problems.append(f"{spath}: column 'feature' names unknown feature(s) {unknown}")
        dup = srcs.duplicated(["dataset", "code"])
        if dup.any():
            problems.append(f"{spath}: code(s) mapped twice: {srcs.loc[dup, ['dataset', 'code']].values.tolist()[:5]}")
        if problems:
            raise ValidationErrors(problems)
        features = [
            Feature(
                name=r["name"], label=r["label"], unit=str(r["unit"]) if pd.notna(r["unit"]) else "",
                group=r["group"], kind=r["kind"], aggregation=r["aggregation"],
                plausible_min=float(r["plausible_min"]), plausible_max=float(r["plausible_max"]),
                salient=bool(int(r["salient"])), derived_from=str(r["derived_from"]) if pd.notna(r["derived_from"]) else "",
            )
            for _, r in feats.iterrows()
        ]
        srcs["multiplier"] = srcs["multiplier"].astype(float)
        srcs["offset"] = srcs["offset"].astype(float)
        return cls(features, srcs, origin=str(fpath))

    def __getitem__(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def grid_features(self) -> list[Feature]:
        return [f for f in self.features if not f.is_static]

    @property
    def static_features(self) -> list[Feature]:
        return [f for f in self.features if f.is_static]

    @property
    def salient(self) -> list[str]:
        return [f.name for f in self.features if f.salient]

    def mapping(self, dataset: str) -> pd.DataFrame:
        """Source code → feature rows for one dataset, with the feature's range and aggregation."""
        m = self.sources[self.sources["dataset"] == dataset]
        if m.empty:
            raise DataError(f"the feature catalogue has no source codes for dataset {dataset!r}; "
                            f"known: {sorted(self.sources['dataset'].unique())}")
        info = pd.DataFrame(
            [(f.name, f.aggregation, f.plausible_min, f.plausible_max) for f in self.features],
            columns=["feature", "aggregation", "lo", "hi"],
        )
        return m.merge(info, on="feature")[["code", "feature", "multiplier", "offset", "aggregation", "lo", "hi"]]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([f.__dict__ for f in self.features])


def _read_csv(path: Path, required: list[str], dtype=None) -> pd.DataFrame:
    try:
        with open(path, newline="") as fh:  # resources paths support open()
            df = pd.read_csv(fh, dtype=dtype)
    except FileNotFoundError:
        raise DataError("catalogue file not found", file=str(path)) from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"missing column(s) {missing}", file=str(path))
    return df
