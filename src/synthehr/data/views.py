"""The three canonical views and how they live on disk.

A prepared folder holds:
  icu_grid.parquet      stay × 4-hour bin × features (+ observed__ masks, label, split)
  static.parquet        one row per stay
  events/               a MEDS dataset: data/<split>/*.parquet + metadata/{codes,subject_splits}.parquet, dataset.json
  feature_catalogue.csv the catalogue the grid was built with
  dataset.json          what the folder is: source, features, fill values, label, bin size, synthehr version
  preparation_report.json  rows read and rows dropped, by reason
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from synthehr.data.icu_grid import KEY_COLUMNS, LABEL, MASK_PREFIX
from synthehr.errors import DataError

GRID_FILE = "icu_grid.parquet"
STATIC_FILE = "static.parquet"
EVENTS_DIR = "events"
DATASET_FILE = "dataset.json"
REPORT_FILE = "preparation_report.json"
CATALOGUE_FILE = "feature_catalogue.csv"


@dataclass
class PreparedData:
    """A prepared dataset in memory: grid and static as DataFrames, events by path (they can be huge)."""

    root: Path
    icu_grid: pd.DataFrame
    static: pd.DataFrame
    info: dict = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return list(self.info["features"])

    @property
    def label(self) -> str:
        return self.info.get("label", LABEL)

    @property
    def events_dir(self) -> Path:
        return self.root / EVENTS_DIR

    def split(self, name: str) -> pd.DataFrame:
        """Grid rows of one split ('train', 'tuning', 'held_out')."""
        return self.icu_grid[self.icu_grid["split"] == name].reset_index(drop=True)

    def feature_table(self, split: str | None = None, with_label: bool = False) -> pd.DataFrame:
        """The grid's feature columns only (what a tabular generator models)."""
        g = self.icu_grid if split is None else self.split(split)
        cols = self.features + ([self.label] if with_label else [])
        return g[cols].reset_index(drop=True)

    def observed_mask(self, split: str | None = None) -> pd.DataFrame:
        g = self.icu_grid if split is None else self.split(split)
        m = g[[MASK_PREFIX + f for f in self.features]]
        m.columns = self.features
        return m.reset_index(drop=True)


def load_prepared(path: str | Path) -> PreparedData:
    """Open a folder written by `synthehr.prepare`; fails clearly when a piece is missing."""
    root = Path(path)
    if not root.is_dir():
        raise DataError("prepared-data folder not found", file=str(root))
    for name in (DATASET_FILE, GRID_FILE, STATIC_FILE):
        if not (root / name).is_file():
            raise DataError(f"not a prepared synthehr folder: {name} is missing (run `synthehr prepare` first)",
                            file=str(root))
    info = json.loads((root / DATASET_FILE).read_text())
    grid = pd.read_parquet(root / GRID_FILE)
    static = pd.read_parquet(root / STATIC_FILE)
    missing = [c for c in KEY_COLUMNS + info.get("features", []) if c not in grid.columns]
    if missing:
        raise DataError(f"grid lacks column(s) {missing}", file=str(root / GRID_FILE))
    return PreparedData(root=root, icu_grid=grid, static=static, info=info)
