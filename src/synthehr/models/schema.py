"""Typed description of a table a generator models: column kinds, categories and plausible ranges.

A generator never sees a bare array whose column order lives in someone's head: it sees a
DataFrame plus this schema, and saves the schema beside its weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd

from synthehr.errors import ValidationErrors

ColumnKind = Literal["continuous", "binary", "categorical"]
_KINDS = ("continuous", "binary", "categorical")


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    kind: ColumnKind = "continuous"
    categories: tuple = ()
    lower: float | None = None  # plausible range: samples are clipped into it
    upper: float | None = None
    unit: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["categories"] = list(self.categories)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "ColumnSpec":
        return cls(
            name=str(d["name"]),
            kind=d.get("kind", "continuous"),
            categories=tuple(d.get("categories", ())),
            lower=d.get("lower"),
            upper=d.get("upper"),
            unit=d.get("unit", ""),
        )


@dataclass
class TableSchema:
    columns: list[ColumnSpec] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    def __getitem__(self, name: str) -> ColumnSpec:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(c.name == name for c in self.columns)

    def of_kind(self, kind: ColumnKind) -> list[str]:
        return [c.name for c in self.columns if c.kind == kind]

    @classmethod
    def infer(cls, df: pd.DataFrame, *, max_categories: int = 20, ranges: dict | None = None) -> "TableSchema":
        """Guess kinds: bool or {0,1} → binary; object/category or few integer levels → categorical."""
        ranges = ranges or {}
        cols = []
        for name in df.columns:
            s = df[name]
            values = s.dropna()
            lo, hi = ranges.get(name, (None, None))
            if s.dtype == bool or (len(values) and set(pd.unique(values)).issubset({0, 1, True, False})
                                   and pd.api.types.is_numeric_dtype(s) and values.nunique() <= 2):
                cols.append(ColumnSpec(name, "binary"))
            elif not pd.api.types.is_numeric_dtype(s):
                cats = tuple(sorted(map(str, pd.unique(values))))
                cols.append(ColumnSpec(name, "categorical", categories=cats))
            elif pd.api.types.is_integer_dtype(s) and values.nunique() <= max_categories and values.nunique() > 2:
                cats = tuple(int(v) for v in sorted(pd.unique(values)))
                cols.append(ColumnSpec(name, "categorical", categories=cats))
            else:
                cols.append(ColumnSpec(name, "continuous", lower=lo, upper=hi))
        return cls(cols)

    def validate(self, df: pd.DataFrame, *, where: str = "table", allow_missing_values: bool = True) -> None:
        """Raise ValidationErrors listing every column problem at once."""
        problems: list[str] = []
        missing = [n for n in self.names if n not in df.columns]
        if missing:
            problems.append(f"{where}: missing column(s) {missing}")
        extra = [c for c in df.columns if c not in self]
        if extra:
            problems.append(f"{where}: unknown column(s) {extra}; expected {self.names}")
        # Fast path for the common case, continuous columns already float: only infinities (and, if not
        # allowed, NaN) can be wrong, checked for all of them in one array operation.
        dtypes = df.dtypes.to_dict()
        fast = [c.name for c in self.columns if c.kind == "continuous" and c.name in dtypes
                and pd.api.types.is_float_dtype(dtypes[c.name])]
        if fast:
            block = df[fast].to_numpy(dtype=np.float64)
            for name, inf, nan in zip(fast, np.isinf(block).any(axis=0), np.isnan(block).sum(axis=0)):
                if not allow_missing_values and nan:
                    problems.append(f"{where}: column {name!r} has {int(nan)} missing value(s)")
                if inf:
                    problems.append(f"{where}: column {name!r} has an infinite value")
        fast_set = set(fast)
        for spec in self.columns:
            if spec.name not in df.columns or spec.name in fast_set:
                continue
            s = df[spec.name]
            if not allow_missing_values and s.isna().any():
                problems.append(f"{where}: column {spec.name!r} has {int(s.isna().sum())} missing value(s)")
            if spec.kind in ("continuous", "binary"):
                coerced = pd.to_numeric(s, errors="coerce")
                bad = s[coerced.isna() & s.notna()]
                if len(bad):
                    problems.append(f"{where}: column {spec.name!r} has non-numeric value {bad.iloc[0]!r}")
                elif spec.kind == "binary":
                    vals = set(pd.unique(coerced.dropna()))
                    if not vals.issubset({0, 1}):
                        problems.append(f"{where}: binary column {spec.name!r} has value(s) {sorted(vals - {0, 1})[:3]}")
                elif np.isinf(coerced.to_numpy(dtype=float)).any():
                    problems.append(f"{where}: column {spec.name!r} has an infinite value")
            else:
                known = set(map(str, spec.categories))
                unknown = set(map(str, s.dropna().unique())) - known
                if unknown:
                    problems.append(f"{where}: column {spec.name!r} has unknown categor(y/ies) {sorted(unknown)[:3]}")
        if problems:
            raise ValidationErrors(problems)

    def to_json(self) -> dict:
        return {"columns": [c.to_json() for c in self.columns]}

    @classmethod
    def from_json(cls, d: dict) -> "TableSchema":
        return cls([ColumnSpec.from_json(c) for c in d["columns"]])
