"""Train a registered generator on a prepared dataset's ICU grid and save it.

The grid's rows (stay × 4-hour bin) are the records, as in InterGenEHR; the in-hospital mortality
label is modelled as one more binary column so label-aware generation and TSTR work.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from synthehr.models.base import Generator, registered_models
from synthehr.models.schema import ColumnSpec, TableSchema

ALIASES = {"independent": "independent_marginals", "marginals": "independent_marginals", "mvn": "gaussian"}


def schema_for(prepared, with_label: bool = True) -> TableSchema:
    """Column specs from a PreparedData: binary flags, plausible ranges and units from the catalogue."""
    info = prepared.info
    binary = set(info.get("binary_features", []))
    cols = []
    for f in prepared.features:
        lo, hi = info.get("plausible_ranges", {}).get(f, (None, None))
        if f in binary:
            cols.append(ColumnSpec(f, "binary", unit=info.get("units", {}).get(f, "")))
        else:
            cols.append(ColumnSpec(f, "continuous", lower=lo, upper=hi, unit=info.get("units", {}).get(f, "")))
    if with_label:
        cols.append(ColumnSpec(prepared.label, "binary"))
    return TableSchema(cols)


def make_generator(model: str, **hyperparameters: Any) -> Generator:
    name = ALIASES.get(model, model)
    from synthehr.models.base import _import_model_modules

    _import_model_modules()
    known = registered_models()
    if name not in known:
        from synthehr.errors import ConditioningError

        raise ConditioningError(f"unknown model {model!r}; choose one of {sorted(known) + sorted(ALIASES)}")
    return known[name](**hyperparameters)


def train_model(model: str, data, out: str | Path | None = None, *, split: str = "train", with_label: bool = True,
                **hyperparameters: Any) -> Generator:
    """Fit `model` on the `split` rows of a prepared dataset (a PreparedData or its folder); save to `out`."""
    from synthehr.data import load_prepared

    prepared = load_prepared(data) if isinstance(data, (str, Path)) else data
    gen = make_generator(model, **hyperparameters)
    if hasattr(type(gen), "training_table"):
        # Models over whole stays (e.g. flexgen) build their own table from the prepared views.
        table, schema = type(gen).training_table(prepared, split)
    else:
        schema = schema_for(prepared, with_label=with_label)
        table = prepared.feature_table(split, with_label=with_label)
    t0 = time.perf_counter()
    gen.fit(table, schema)
    fit_seconds = time.perf_counter() - t0
    if out is not None:
        gen.save(out)
        (Path(out) / "training.json").write_text(json.dumps({
            "data": str(prepared.root.name), "source": prepared.info.get("source"), "split": split,
            "rows": len(table), "fit_seconds": round(fit_seconds, 3)}, indent=2))
    return gen
